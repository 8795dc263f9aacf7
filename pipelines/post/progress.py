"""A sink's progress through a table: the Delta version and ingest batch it has fully settled.

Progress is the state of a fenced lease per (sink, table) (``resources/lease.py``): the records
``_lakerelay/sinks/<sink>/<table>/<seq:012d>.json``, the highest seq being the truth. A post run takes
the lease, plans from the progress in it, and settles through the fence, so progress never moves
backwards and two runs never post the same batch. The single file ``<table>.json`` of earlier versions
is read until the sequence exists; the first lease record starts from its content.

Inside a run, progress moves group by group: a plan (the files holding batches ``(batch_id,
batch_to]`` at one Delta version) is cut into groups of at most ``group_rows`` rows, and each group
is settled through the fence as soon as every record of it is accepted or dead-lettered. Until the
whole plan is, the state carries it as ``partial`` (version, batch_to, group_rows, how many groups,
which are settled); the next holder resumes that very plan and skips the settled groups, so a crash,
a kill or a takeover re-sends at most the groups that were in flight.
"""

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime

from resources.lake import LakeResource
from resources.lease import Lease, LeaseLog, LeaseRecord, acquire, put_state


@dataclass(frozen=True)
class PartialProgress:
    """A plan being settled group by group: which of its ``groups`` are settled (ranges ``[a, b)``)."""

    delta_version: int
    batch_to: int
    group_rows: int
    groups: int
    settled: tuple[tuple[int, int], ...] = ()

    def settled_groups(self) -> set[int]:
        return {g for start, stop in self.settled for g in range(start, stop)}

    def with_group(self, group: int) -> "PartialProgress":
        return replace(self, settled=_ranges(self.settled_groups() | {group}))

    @property
    def complete(self) -> bool:
        return len(self.settled_groups()) >= self.groups

    def as_state(self) -> dict:
        state = asdict(self)
        state["settled"] = [list(r) for r in self.settled]
        return state

    @classmethod
    def of(cls, state: dict) -> "PartialProgress":
        return cls(
            int(state["delta_version"]),
            int(state["batch_to"]),
            int(state["group_rows"]),
            int(state["groups"]),
            tuple((int(a), int(b)) for a, b in state.get("settled", ())),
        )


def _ranges(groups: set[int]) -> tuple[tuple[int, int], ...]:
    """Sorted group numbers as ``[start, stop)`` ranges: settled groups are mostly contiguous."""
    ranges: list[list[int]] = []
    for g in sorted(groups):
        if ranges and ranges[-1][1] == g:
            ranges[-1][1] = g + 1
        else:
            ranges.append([g, g + 1])
    return tuple((a, b) for a, b in ranges)


@dataclass(frozen=True)
class SinkProgress:
    delta_version: int = -1
    batch_id: int = 0
    updated_at: str = ""
    partial: PartialProgress | None = None  # a plan after batch_id, settled in part

    def as_state(self) -> dict:
        state = {
            "delta_version": self.delta_version,
            "batch_id": self.batch_id,
            "updated_at": self.updated_at,
        }
        if self.partial is not None:
            state["partial"] = self.partial.as_state()
        return state


def progress_log(lake: LakeResource, sink_name: str, table_name: str) -> LeaseLog:
    """The lease record sequence of (sink, table)."""
    return LeaseLog(lake.state_uri("sinks", sink_name, table_name), lake.filesystem_settings())


def lease_label(sink_name: str, table_name: str) -> str:
    return f"sink {sink_name} for table {table_name}"


def progress_of(state: dict | None) -> SinkProgress:
    if not state:
        return SinkProgress()
    partial = state.get("partial")
    return SinkProgress(
        int(state["delta_version"]),
        int(state["batch_id"]),
        state.get("updated_at", ""),
        PartialProgress.of(partial) if partial else None,
    )


def read_progress(lake: LakeResource, sink_name: str, table_name: str) -> SinkProgress:
    """The settled progress: a listing of the sequence and one GET."""
    record = progress_log(lake, sink_name, table_name).latest()
    return progress_of(record.state if record is not None else None)


def acquire_progress(
    lake: LakeResource,
    sink_name: str,
    table_name: str,
    owner: str,
    ttl_s: float,
    wait_s: float,
    on_wait: Callable[[LeaseRecord], None] | None = None,
) -> Lease:
    """Take (sink, table)'s lease for run ``owner``; ``progress_of(lease.state)`` is what to plan from.

    Raises ``LeaseHeld`` when another run still holds it after ``wait_s``.
    """
    return acquire(
        progress_log(lake, sink_name, table_name),
        owner,
        ttl_s,
        wait_s,
        label=lease_label(sink_name, table_name),
        on_wait=on_wait,
    )


def write_progress(
    lake: LakeResource,
    sink_name: str,
    table_name: str,
    delta_version: int,
    batch_id: int,
    lease: Lease | None = None,
) -> None:
    """Advance the sink; call only once every record up to ``batch_id`` is accepted or dead-lettered.

    With ``lease``: through the fence (``LeaseLost`` when this run was fenced out), never backwards.
    Without: an operator's write (e.g. a reset), refused with ``LeaseHeld`` while a run holds the lease.
    Either way a partly settled plan is closed: ``batch_id`` is the whole truth.
    """
    progress = SinkProgress(delta_version, batch_id, _now()).as_state()
    if lease is None:
        put_state(progress_log(lake, sink_name, table_name), progress, lease_label(sink_name, table_name))
        return
    settled = progress_of(lease.state)
    if batch_id < settled.batch_id or (
        settled.partial is not None and batch_id == settled.batch_id and settled.partial.settled
    ):
        raise ValueError(
            f"{lease_label(sink_name, table_name)}: progress would move backwards "
            f"(batch {settled.batch_id} -> {batch_id}); not written"
        )
    lease.settle(progress)


def settle_group(lease: Lease, sink_name: str, table_name: str, partial: PartialProgress, group: int) -> None:
    """Record ``group`` of the plan ``partial`` describes as settled, through the fence.

    The plan must be the one the lease's progress is on (or start from it); when this was its last
    group, the progress moves to the plan's ``batch_to`` and version. Never backwards: the groups
    already settled stay settled.
    """
    label = lease_label(sink_name, table_name)
    settled = progress_of(lease.state)
    current = settled.partial
    plan_key = (partial.delta_version, partial.batch_to, partial.group_rows, partial.groups)
    if current is not None:
        if (current.delta_version, current.batch_to, current.group_rows, current.groups) != plan_key:
            raise ValueError(
                f"{label}: group {group} is of another plan than the one being settled; not written"
            )
        partial = replace(partial, settled=current.settled)
    elif partial.batch_to <= settled.batch_id:
        raise ValueError(f"{label}: batch {partial.batch_to} is settled already; not written")
    partial = partial.with_group(group)
    if partial.complete:
        state = SinkProgress(partial.delta_version, partial.batch_to, _now())
    else:
        state = SinkProgress(settled.delta_version, settled.batch_id, _now(), partial)
    lease.settle(state.as_state())


def _now() -> str:
    return datetime.now(UTC).isoformat()


def abandon_partial(lease: Lease, sink_name: str, table_name: str) -> None:
    """Drop a partly settled plan that cannot be resumed: its batches are posted again from ``batch_id``.

    The one write that forgets settled groups (they are re-sent, as before progress moved by group).
    """
    settled = progress_of(lease.state)
    lease.settle(SinkProgress(settled.delta_version, settled.batch_id, _now()).as_state())
