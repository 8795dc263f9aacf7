"""A sink's progress through a table: the Delta version and ingest batch it has fully settled."""

from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from resources.lake import LakeResource


@dataclass(frozen=True)
class SinkProgress:
    delta_version: int = -1
    batch_id: int = 0
    updated_at: str = ""


def read_progress(lake: LakeResource, sink_name: str, table_name: str) -> SinkProgress:
    document = lake.read_state("sinks", sink_name, f"{table_name}.json")
    if document is None:
        return SinkProgress()
    return SinkProgress(
        int(document["delta_version"]), int(document["batch_id"]), document.get("updated_at", "")
    )


def write_progress(
    lake: LakeResource, sink_name: str, table_name: str, delta_version: int, batch_id: int
) -> None:
    """Advance the sink; call only once every record up to ``batch_id`` is accepted or dead-lettered."""
    progress = SinkProgress(delta_version, batch_id, datetime.now(UTC).isoformat())
    lake.write_state(asdict(progress), "sinks", sink_name, f"{table_name}.json")
