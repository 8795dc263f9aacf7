"""A sink's progress through a table: the Delta version and ingest batch it has fully settled.

Progress is the state of a fenced lease per (sink, table) (``resources/lease.py``): the records
``_lakerelay/sinks/<sink>/<table>/<seq:012d>.json``, the highest seq being the truth. A post run takes
the lease, plans from the progress in it, and settles through the fence, so progress never moves
backwards and two runs never post the same batch. The single file ``<table>.json`` of earlier versions
is read until the sequence exists; the first lease record starts from its content.
"""

from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from resources.lake import LakeResource
from resources.lease import Lease, LeaseLog, LeaseRecord, acquire, put_state


@dataclass(frozen=True)
class SinkProgress:
    delta_version: int = -1
    batch_id: int = 0
    updated_at: str = ""


def progress_log(lake: LakeResource, sink_name: str, table_name: str) -> LeaseLog:
    """The lease record sequence of (sink, table)."""
    return LeaseLog(lake.state_uri("sinks", sink_name, table_name), lake.filesystem_settings())


def lease_label(sink_name: str, table_name: str) -> str:
    return f"sink {sink_name} for table {table_name}"


def _legacy_state(lake: LakeResource, sink_name: str, table_name: str) -> dict | None:
    """The progress file written before the fence (``<table>.json``), if any."""
    return lake.read_state("sinks", sink_name, f"{table_name}.json")


def progress_of(state: dict | None) -> SinkProgress:
    if not state:
        return SinkProgress()
    return SinkProgress(int(state["delta_version"]), int(state["batch_id"]), state.get("updated_at", ""))


def read_progress(lake: LakeResource, sink_name: str, table_name: str) -> SinkProgress:
    """The settled progress: a listing of the sequence and one GET (the old file until it exists)."""
    record = progress_log(lake, sink_name, table_name).latest()
    if record is not None:
        return progress_of(record.state)
    return progress_of(_legacy_state(lake, sink_name, table_name))


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
        seed=lambda: _legacy_state(lake, sink_name, table_name),
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
    """
    progress = asdict(SinkProgress(delta_version, batch_id, datetime.now(UTC).isoformat()))
    if lease is None:
        put_state(progress_log(lake, sink_name, table_name), progress, lease_label(sink_name, table_name))
        return
    settled = progress_of(lease.state)
    if batch_id < settled.batch_id:
        raise ValueError(
            f"{lease_label(sink_name, table_name)}: progress would move backwards "
            f"(batch {settled.batch_id} -> {batch_id}); not written"
        )
    lease.settle(progress)
