"""The seed's core-count estimate, fed with what a post run measured instead of guesses.

The seed's table: A target records/s; B records per call; C = A / B calls/s needed; D latency per
call; E = 1 / D calls/s one task makes calling one at a time; F = C / E tasks; G the share of a core's
time spent calling the API (a rule of thumb, 0.75 by default; tune it from observation); H = F / G cores.

Our tasks keep several calls in flight, so the plan also gives the estimate from the measured
records/s per task (task wall time, reading and encoding included), which is the one to size from.
"""

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class CapacityPlan:
    target_records_per_s: float
    records_per_call: float
    calls_per_s_needed: float
    latency_per_call_s: float
    calls_per_s_per_task_serial: float
    tasks_serial: int
    api_time_fraction: float
    cores_serial: int
    measured_records_per_s_per_task: float
    tasks_measured: int
    cores_measured: int

    def metadata(self) -> dict[str, float | int]:
        return {f"capacity_{k}": round(v, 3) if isinstance(v, float) else v for k, v in self.__dict__.items()}

    def markdown(self) -> str:
        rows = [
            ("A", "target records/s", self.target_records_per_s),
            ("B", "records per call (measured)", self.records_per_call),
            ("C", "calls/s needed = A / B", self.calls_per_s_needed),
            ("D", "latency per call, s (measured mean)", self.latency_per_call_s),
            ("E", "calls/s per task, one call at a time = 1 / D", self.calls_per_s_per_task_serial),
            ("F", "tasks = C / E", self.tasks_serial),
            ("G", "share of core time spent calling the API", self.api_time_fraction),
            ("H", "cores = F / G (seed's estimate)", self.cores_serial),
            ("M", "records/s per task (measured, calls in flight)", self.measured_records_per_s_per_task),
            ("N", "tasks = A / M", self.tasks_measured),
            ("O", "cores = N / G (lakerelay estimate)", self.cores_measured),
        ]
        lines = ["| line | quantity | value |", "|---|---|---|"]
        lines += [
            f"| {key} | {name} | {round(value, 3) if isinstance(value, float) else value} |"
            for key, name, value in rows
        ]
        return "\n".join(lines)


def plan_capacity(
    target_records_per_s: float,
    requests: int,
    records_sent: int,
    mean_latency_s: float,
    records_in: int,
    task_seconds: float,
    api_time_fraction: float,
) -> CapacityPlan | None:
    """None when the run made no calls (nothing measured to plan from)."""
    if requests <= 0 or mean_latency_s <= 0 or task_seconds <= 0:
        return None
    per_call = records_sent / requests
    calls_needed = target_records_per_s / per_call
    serial_rate = 1.0 / mean_latency_s
    tasks_serial = math.ceil(calls_needed / serial_rate)
    per_task = records_in / task_seconds
    tasks_measured = math.ceil(target_records_per_s / per_task) if per_task > 0 else 0
    return CapacityPlan(
        target_records_per_s=float(target_records_per_s),
        records_per_call=per_call,
        calls_per_s_needed=calls_needed,
        latency_per_call_s=mean_latency_s,
        calls_per_s_per_task_serial=serial_rate,
        tasks_serial=tasks_serial,
        api_time_fraction=api_time_fraction,
        cores_serial=math.ceil(tasks_serial / api_time_fraction),
        measured_records_per_s_per_task=per_task,
        tasks_measured=tasks_measured,
        cores_measured=math.ceil(tasks_measured / api_time_fraction),
    )
