"""How many Spark tasks and cores a target throughput needs, from what a post run measured.

Two estimates. One call at a time per task (the classic worksheet): A target records/s; B records per
call; C = A / B calls/s needed; D latency per call; E = 1 / D calls/s per task; F = C / E tasks; G the
share of a core's time spent calling the API (a rule of thumb, 0.75 by default); H = F / G cores.
lakerelay's tasks keep several calls in flight, so the estimate to size from is the second: M the
records/s one task posted, N = A / M tasks, O = N / G cores.

M leaves out each task's fixed start-up (the time until its first records arrived: Spark's scan
set-up, not posting). A small run still cannot say much: when its tasks made only a few calls, the
first connection and the last calls draining outweigh steady posting, so the plan then gives what
it measured and says the batch was too small to size from, instead of a core count.
"""

import math
from dataclasses import dataclass

import dagster as dg

# Calls per task below which a run's rates reflect start-up and drain more than steady posting.
MIN_CALLS_PER_TASK = 10


@dataclass(frozen=True)
class CapacityPlan:
    target_records_per_s: float
    records_per_call: float
    calls_per_s_needed: float
    latency_per_call_s: float
    calls_per_task: float
    startup_s_per_task: float
    records_per_s_per_task: float
    api_time_fraction: float
    # Sizes; None when the run was too small to size from (too_small_reason says why).
    tasks_one_call_at_a_time: int | None
    cores_one_call_at_a_time: int | None
    tasks: int | None
    cores: int | None
    too_small_reason: str = ""

    def metadata(self) -> dict[str, dg.MetadataValue]:
        """The plan's measured numbers as ``capacity_*`` keys (sizes only when the run could size); the
        target is a setting, shown in the plan's table, not plotted."""
        values: dict[str, float | int | None] = {
            "capacity_cores": self.cores,
            "capacity_tasks": self.tasks,
            "capacity_cores_one_call_at_a_time": self.cores_one_call_at_a_time,
            "capacity_records_per_s_per_task": round(self.records_per_s_per_task, 1),
            "capacity_startup_s_per_task": round(self.startup_s_per_task, 3),
        }
        metadata: dict[str, dg.MetadataValue] = {
            key: dg.MetadataValue.int(value) if isinstance(value, int) else dg.MetadataValue.float(value)
            for key, value in values.items()
            if value is not None
        }
        metadata["capacity_plan"] = dg.MetadataValue.md(self.markdown())
        return metadata

    def markdown(self) -> str:
        def size(value: int | None) -> float | int | str:
            return "not sized (see below)" if value is None else value

        rows = [
            ("A", "target records/s", self.target_records_per_s),
            ("B", "records per call (measured)", self.records_per_call),
            ("C", "calls/s needed = A / B", self.calls_per_s_needed),
            ("D", "latency per call, s (measured mean)", self.latency_per_call_s),
            ("E", "calls/s of a task making one call at a time = 1 / D", 1.0 / self.latency_per_call_s),
            ("F", "tasks if each makes one call at a time = C / E", size(self.tasks_one_call_at_a_time)),
            ("G", "share of a core's time spent calling the API (api_time_fraction)", self.api_time_fraction),
            ("H", "cores if each task makes one call at a time = F / G", size(self.cores_one_call_at_a_time)),
            (
                "S",
                "start-up per task, s (until its first records arrived; left out of M)",
                self.startup_s_per_task,
            ),
            (
                "M",
                "records/s per task while posting (measured, calls in flight)",
                self.records_per_s_per_task,
            ),
            ("N", "tasks = A / M", size(self.tasks)),
            ("O", "cores = N / G: size from this one", size(self.cores)),
        ]
        lines = ["| line | quantity | value |", "|---|---|---|"]
        lines += [
            f"| {key} | {name} | {round(value, 3) if isinstance(value, float) else value} |"
            for key, name, value in rows
        ]
        if self.too_small_reason:
            lines += ["", self.too_small_reason]
        return "\n".join(lines)


def plan_capacity(
    target_records_per_s: float,
    requests: int,
    records_sent: int,
    mean_latency_s: float,
    records_in: int,
    task_seconds: float,
    api_time_fraction: float,
    tasks: int = 1,
    startup_seconds: float = 0.0,
) -> CapacityPlan | None:
    """None when the run made no calls (nothing measured to plan from).

    ``task_seconds`` and ``startup_seconds`` are summed over the run's ``tasks``; the start-up part
    (each task's wait for its first records) is left out of the rate per task.
    """
    if requests <= 0 or mean_latency_s <= 0 or task_seconds <= 0:
        return None
    tasks = max(1, tasks)
    per_call = records_sent / requests
    calls_needed = target_records_per_s / per_call
    posting_seconds = task_seconds - min(startup_seconds, task_seconds)
    per_task = records_in / posting_seconds if posting_seconds > 0 else 0.0
    calls_per_task = requests / tasks
    reason = ""
    if calls_per_task < MIN_CALLS_PER_TASK or per_task <= 0:
        reason = (
            f"This run was too small to size from: its {tasks} task(s) made {calls_per_task:.1f} calls each "
            f"(at least {MIN_CALLS_PER_TASK} are needed), so the first connection and the last calls "
            f"outweigh steady posting in M. Size from a run that posts a larger batch."
        )
    tasks_serial = None if reason else math.ceil(calls_needed / (1.0 / mean_latency_s))
    tasks_measured = None if reason else math.ceil(target_records_per_s / per_task)
    return CapacityPlan(
        target_records_per_s=float(target_records_per_s),
        records_per_call=per_call,
        calls_per_s_needed=calls_needed,
        latency_per_call_s=mean_latency_s,
        calls_per_task=calls_per_task,
        startup_s_per_task=startup_seconds / tasks,
        records_per_s_per_task=per_task,
        api_time_fraction=api_time_fraction,
        tasks_one_call_at_a_time=tasks_serial,
        cores_one_call_at_a_time=None
        if tasks_serial is None
        else math.ceil(tasks_serial / api_time_fraction),
        tasks=tasks_measured,
        cores=None if tasks_measured is None else math.ceil(tasks_measured / api_time_fraction),
        too_small_reason=reason,
    )
