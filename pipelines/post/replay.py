"""Dead-letter replay: re-post chosen dead letters to their sink with the same ids, and record the replay.

Once the cause of a rejection is fixed, the user picks letters (``pipelines/post/letters.py``) and posts
them again from this process: dead letters are few, so no Spark. Elasticsearch gets each letter's stored
``record_id`` as ``_id``, so a replay overwrites and never duplicates. Each replayed letter's outcome is
appended to ``dead_letter_replays``.
"""

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import dagster as dg
import orjson
import pyarrow as pa
from deltalake import CommitProperties, write_deltalake

from pipelines.delta_once import writer_properties
from pipelines.post.destination import replay_destination
from pipelines.post.letters import ACCEPTED, REJECTED, REPLAY_SCHEMA, REPLAY_TABLE
from resources.lake import LakeResource
from resources.sinks.errors import SinkNeedsFixError
from resources.sinks.outcome import PostOutcome
from resources.sinks.resource import RestSinkResource
from resources.sinks.writer import SinkWriter


# -- posting ----------------------------------------------------------------------------------------
def event_time(doc: bytes | str, time_field: str | None) -> float | None:
    """Epoch seconds of the document's ``time_field`` (an ISO string, as the post job encodes it), or None.

    None lets HEC stamp the event with its arrival time, as the post job does for records without one.
    """
    if not time_field:
        return None
    try:
        value = orjson.loads(doc).get(time_field)
    except (orjson.JSONDecodeError, AttributeError):
        return None
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return None
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
    return None


@dataclass
class ReplayOutcome:
    posted: int = 0  # documents sent (Elasticsearch: one per record id)
    accepted: list[int] = field(default_factory=list)  # row numbers of letters the sink accepted
    rejected: dict[int, Any] = field(default_factory=dict)  # row number -> Rejection
    pending: int = 0  # documents neither accepted nor rejected when the writer's deadline passed
    pending_reason: str = ""
    unaccounted: int = 0  # documents the writer's totals do not explain (should stay 0)
    without_id: list[int] = field(default_factory=list)  # Elasticsearch letters with no record id: not posted


def post_letters(sink: RestSinkResource, letters: pa.Table) -> ReplayOutcome:
    """Post ``letters`` through the sink's writer and say, per letter row, what the sink answered."""
    settings = sink.settings()
    rows = letters.select(["record_id", "record", "letter_id", "source_table"]).to_pylist()
    by_id = settings.kind == "elasticsearch"
    # Elasticsearch: one document per record id (the newest letter's), with that id, so a record
    # dead-lettered twice is written once. Sinks without ids get the letter id, which they do not
    # send, so each rejection still names the letter it belongs to.
    units: dict[str, list[int]] = {}
    docs: dict[str, bytes] = {}
    feeds: dict[str, str] = {}  # the feed a templated destination names: its table's name
    without_id = []
    for n, row in enumerate(rows):
        key = row["record_id"] if by_id else row["letter_id"]
        if not key:
            # An empty _id fails the whole _bulk request, and a new id would duplicate the record.
            without_id.append(n)
            continue
        units.setdefault(key, []).append(n)
        docs[key] = (row["record"] or "").encode()  # oldest first: the last one wins
        feeds[key] = row["source_table"] or ""
    ids = list(units)
    time_field = None if by_id else getattr(sink, "time_field", None)
    # A templated destination is evaluated on each letter's document, as the post job did in Spark.
    settings, destination = replay_destination(settings, [feeds[k] for k in ids], [docs[k] for k in ids])
    writer = SinkWriter(settings)
    try:
        with writer:
            writer.add_arrow(
                pa.array(ids, pa.string()),
                pa.array([docs[key] for key in ids], pa.binary()),
                pa.array([event_time(docs[key], time_field) for key in ids], pa.float64()),
                destination or None,
            )
            outcome: PostOutcome = writer.close()
    except SinkNeedsFixError as exc:  # "fix the configuration", not "this record": nothing is recorded
        raise dg.Failure(description=f"{exc} Nothing was recorded as replayed.") from None
    result = ReplayOutcome(posted=len(ids), without_id=without_id)
    rejected_keys = set()
    for rejection in outcome.rejected:
        key = rejection.record.id
        rejected_keys.add(key)
        for n in units.get(key, []):
            result.rejected[n] = rejection
    # The writer names rejected records only; while some are pending, which of the rest were accepted
    # is unknown, so none is recorded as accepted (they stay eligible; a re-post reuses their ids).
    result.pending = outcome.pending
    result.pending_reason = outcome.pending_reason
    result.unaccounted = len(ids) - outcome.accepted - len(rejected_keys) - result.pending
    if result.pending == 0 and result.unaccounted == 0:
        result.accepted = [n for key in ids if key not in rejected_keys for n in units[key]]
    return result


def replay_rows(replay_id: str, letters: pa.Table, outcome: ReplayOutcome, replayed_at: datetime) -> pa.Table:
    """One row per letter whose outcome is known: accepted, or rejected again with the sink's answer."""
    numbers = sorted([*outcome.accepted, *outcome.rejected])
    chosen = letters.take(pa.array(numbers, pa.int64()))
    rejections = [outcome.rejected.get(n) for n in numbers]
    n = len(numbers)
    return pa.table(
        {
            "replay_id": pa.repeat(pa.scalar(replay_id), n),
            "sink": chosen["sink"],
            "source_table": chosen["source_table"],
            "record_id": chosen["record_id"],
            "batch_to": chosen["batch_to"],
            "dead_lettered_at": chosen["dead_lettered_at"],
            "replayed_at": pa.repeat(pa.scalar(replayed_at, pa.timestamp("us", tz="UTC")), n),
            "outcome": pa.array([REJECTED if r else ACCEPTED for r in rejections], pa.string()),
            "status": pa.array([r.status if r else None for r in rejections], pa.int32()),
            "error_type": pa.array([r.error_type if r else None for r in rejections], pa.string()),
            "reason": pa.array([r.reason[:2000] if r else None for r in rejections], pa.string()),
            "letter_id": chosen["letter_id"],
        },
        schema=REPLAY_SCHEMA,
    )


def record_replay(lake: LakeResource, rows: pa.Table, replay_id: str) -> None:
    """One commit per replay. A plain append: the replay id is unique, and a re-run skips what it accepted."""
    write_deltalake(
        lake.table_uri(REPLAY_TABLE),
        rows,
        mode="append",
        storage_options=lake.storage_options(),
        writer_properties=writer_properties(),
        commit_properties=CommitProperties(custom_metadata={"lakerelay.replay_id": replay_id}),
    )


def new_replay_id(run_id: str) -> str:
    """``<UTC time>-<run id prefix>``: sorts by time and names the Dagster run that made it."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%S%f}Z-{run_id[:8]}"
