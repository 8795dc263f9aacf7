"""Posting inside Spark tasks: each task streams its records through one SinkWriter."""

from collections.abc import Callable, Iterator

import pyarrow as pa

from resources.sinks.protocols import Record
from resources.sinks.settings import SinkSettings
from resources.sinks.writer import PostOutcome, SinkWriter

RESULT_SCHEMA = pa.schema(
    [
        ("kind", pa.string()),  # "stats" (one per task) or "dead_letter" (one per rejected record)
        ("record_id", pa.string()),
        ("record", pa.binary()),
        ("status", pa.int32()),
        ("error_type", pa.string()),
        ("reason", pa.string()),
        ("records_in", pa.int64()),
        ("accepted", pa.int64()),
        ("retried", pa.int64()),
        ("requests", pa.int64()),
        ("bytes", pa.int64()),
        ("latencies_ms", pa.list_(pa.float64())),
    ]
)
RESULT_DDL = (
    "kind string, record_id string, record binary, status int, error_type string, reason string, "
    "records_in bigint, accepted bigint, retried bigint, requests bigint, bytes bigint, latencies_ms array<double>"
)


def make_poster(settings: SinkSettings) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    def post(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        records_in = 0
        with SinkWriter(settings) as writer:
            for batch in batches:
                ids = batch.column("_id").to_pylist()
                docs = batch.column("_doc").to_pylist()
                times = batch.column("_time").to_pylist()
                for record_id, doc, when in zip(ids, docs, times, strict=True):
                    writer.add(Record(record_id or "", doc, when))
                records_in += batch.num_rows
            outcome = writer.close()
        yield from _result_batches(outcome, records_in)

    return post


def _result_batches(outcome: PostOutcome, records_in: int) -> Iterator[pa.RecordBatch]:
    stats = {name: [None] for name in RESULT_SCHEMA.names}
    stats.update(
        kind=["stats"],
        records_in=[records_in],
        accepted=[outcome.accepted],
        retried=[outcome.retried],
        requests=[outcome.requests],
        bytes=[outcome.bytes_sent],
        latencies_ms=[outcome.latencies_ms],
    )
    yield pa.RecordBatch.from_pydict(stats, schema=RESULT_SCHEMA)
    for start in range(0, len(outcome.rejected), 10_000):
        chunk = outcome.rejected[start : start + 10_000]
        rows = {name: [None] * len(chunk) for name in RESULT_SCHEMA.names}
        rows.update(
            kind=["dead_letter"] * len(chunk),
            record_id=[r.record.id for r in chunk],
            record=[r.record.doc for r in chunk],
            status=[r.status for r in chunk],
            error_type=[r.error_type for r in chunk],
            reason=[r.reason for r in chunk],
        )
        yield pa.RecordBatch.from_pydict(rows, schema=RESULT_SCHEMA)
