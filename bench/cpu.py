"""CPU seconds spent by this process and everything it started, grouped by role.

Wall time alone cannot tell whether a run on 2 cores waited or worked; CPU seconds per role (the
benchmark's own driver, Spark's JVM, Spark's Python workers, the local sink) show where the work went
and how far any contender could go on the same cores.
"""

from collections import defaultdict

import psutil

ROLES = ("driver", "spark_jvm", "spark_python_workers", "sink")


def _role(process: psutil.Process) -> str:
    command = " ".join(process.cmdline())
    if "java" in process.name():
        return "spark_jvm"
    if "pyspark.daemon" in command or "pyspark.worker" in command:
        return "spark_python_workers"
    if "-m lakerelay.localsink" in command:
        return "sink"
    return "driver"


def cpu_seconds_by_role() -> dict[str, float]:
    """user + system seconds of this process tree now, including children that already exited."""
    totals: dict[str, float] = defaultdict(float)
    me = psutil.Process()
    for process in [me, *me.children(recursive=True)]:
        try:
            times = process.cpu_times()
            role = _role(process)
        except psutil.Error:  # exited between the listing and the reading
            continue
        totals[role] += times.user + times.system + times.children_user + times.children_system
    return {role: totals.get(role, 0.0) for role in ROLES}


class CpuMeter:
    """``with CpuMeter() as meter: ...`` then ``meter.used`` holds CPU seconds per role for the block."""

    def __enter__(self) -> "CpuMeter":
        self._start = cpu_seconds_by_role()
        self.used: dict[str, float] = {}
        return self

    def __exit__(self, *exc: object) -> None:
        end = cpu_seconds_by_role()
        self.used = {role: max(0.0, end[role] - self._start[role]) for role in ROLES}

    @property
    def total(self) -> float:
        return sum(self.used.values())

    def summary(self) -> str:
        parts = ", ".join(f"{role} {seconds:.2f}" for role, seconds in self.used.items())
        return f"{self.total:.2f} CPU-s ({parts})"
