"""Posting inside Spark tasks: each task streams its records through one SinkWriter.

A task answers in rows of ``RESULT_SCHEMA``: one ``stats`` row, one ``dead_letter`` row per rejected
record, or, when the sink's configuration refused it (credentials, TLS, URL: ``SinkNeedsFixError``), one
``failure`` row carrying that error's kind and one-line message. The driver reads the kind from the
rows (``task_failure``), not from the text Spark makes of an exception raised in a task.
"""

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import pyarrow as pa
from pyspark.sql.pandas.types import from_arrow_schema
from pyspark.sql.types import StructType

from resources.arrow import pc
from resources.lease import LeaseGuard
from resources.sinks.errors import SinkNeedsFixError
from resources.sinks.outcome import PostOutcome
from resources.sinks.protocols import Rejection
from resources.sinks.settings import SinkSettings
from resources.sinks.writer import SinkWriter
from resources.worker_heap import freeze_imported_heap

# The values of the result rows' ``kind`` column.
STATS, DEAD_LETTER, FAILURE = "stats", "dead_letter", "failure"

RESULT_SCHEMA = pa.schema(
    [
        ("kind", pa.string()),  # STATS (one per task), DEAD_LETTER (one per rejected record) or FAILURE
        ("record_id", pa.string()),
        ("record", pa.binary()),
        ("status", pa.int32()),
        ("error_type", pa.string()),  # DEAD_LETTER: the sink's error type; FAILURE: the error's kind
        ("reason", pa.string()),  # DEAD_LETTER: the sink's reason; FAILURE: the one-line message
        ("records_in", pa.int64()),
        ("accepted", pa.int64()),
        ("retried", pa.int64()),
        ("requests", pa.int64()),
        ("attempts", pa.int64()),
        ("records_sent", pa.int64()),
        ("ack_timeouts", pa.int64()),
        ("pending", pa.int64()),
        ("bytes", pa.int64()),
        ("elapsed_s", pa.float64()),
        ("startup_s", pa.float64()),  # of elapsed_s: the wait for the task's first batch (Spark's scan)
        ("concurrency_peak", pa.int64()),
        ("concurrency_decreases", pa.int64()),
        ("latencies_ms", pa.list_(pa.float64())),
    ]
)
# The same schema as Spark's ``mapInArrow`` declares it: derived, so the two cannot drift apart.
RESULT_SPARK_SCHEMA: StructType = from_arrow_schema(RESULT_SCHEMA)


@dataclass(frozen=True)
class TaskFailure:
    """What a task reported instead of its stats: the kind of sink error (``SinkNeedsFixError.kind``), its line."""

    kind: str
    message: str


def task_failure(results: pa.Table) -> TaskFailure | None:
    """The first failure a task of ``results`` (the post stage's rows) reported, or None."""
    failures = results.filter(pc.equal(results["kind"], FAILURE))
    if not failures.num_rows:
        return None
    return TaskFailure(failures["error_type"][0].as_py() or "", failures["reason"][0].as_py() or "")


# Every other column of the post stage's input is a per-record destination column (``_index``, ...).
_RECORD_COLUMNS = frozenset({"_id", "_doc", "_time"})


def per_task_settings(settings: SinkSettings, tasks: int) -> SinkSettings:
    """Rate limits are configured for the whole run; each of ``tasks`` writers gets its share."""
    share = max(1, tasks)
    return replace(
        settings,
        rate_limit_requests_per_s=settings.rate_limit_requests_per_s / share
        if settings.rate_limit_requests_per_s
        else None,
        rate_limit_records_per_s=settings.rate_limit_records_per_s / share
        if settings.rate_limit_records_per_s
        else None,
    )


def make_poster(
    settings: SinkSettings, lease: LeaseGuard | None = None
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The ``mapInArrow`` function of the post stage.

    With ``lease`` (the run's lease on the sink's progress), each task stops posting once that lease
    is lost: taken by another run, released, or expired because the driver stopped renewing it (it
    died). The writer then gives up as it does at its delivery deadline: requests not yet sent and
    retries are not made, and their records are reported pending, so nothing is settled for them.
    """

    def post(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        freeze_imported_heap()
        started = time.perf_counter()
        try:
            outcome, records_in, startup_s = _post_batches(settings, lease, batches, started)
        except SinkNeedsFixError as exc:
            # Reported as data: the driver reads the kind from this row, not from Spark's error text.
            yield _failure_batch(exc)
            return
        elapsed_s = time.perf_counter() - started
        yield from _result_batches(
            outcome, records_in, elapsed_s, elapsed_s if startup_s is None else startup_s
        )

    return post


def _post_batches(
    settings: SinkSettings, lease: LeaseGuard | None, batches: Iterator[pa.RecordBatch], started: float
) -> tuple[PostOutcome, int, float | None]:
    """Post the task's records: the writer's outcome, the records in, and the wait for the first batch."""
    records_in = 0
    startup_s = None  # until the first batch: fixed per task, so the capacity plan leaves it out
    writer = SinkWriter(settings)
    # The watch encloses the writer's exit, so the requests still queued when a task ends early
    # (its input broke because the driver died) are fenced as well.
    watch = lease.watching(writer.give_up) if lease is not None else contextlib.nullcontext()
    with watch, writer:
        skipped = 0
        for batch in batches:
            if startup_s is None:
                startup_s = time.perf_counter() - started
            records_in += batch.num_rows
            if writer.gave_up:
                # Out of delivery time, or the lease is lost: the rest stays pending for the next run.
                skipped += batch.num_rows
                continue
            writer.add_arrow(
                batch.column("_id"),
                batch.column("_doc"),
                batch.column("_time"),
                {n: batch.column(n) for n in batch.schema.names if n not in _RECORD_COLUMNS} or None,
            )
        outcome = writer.close()
        outcome.pending += skipped
    return outcome, records_in, startup_s


def _failure_batch(exc: SinkNeedsFixError) -> pa.RecordBatch:
    row: dict[str, list[Any]] = {name: [None] for name in RESULT_SCHEMA.names}
    lines = str(exc).splitlines()
    row.update(kind=[FAILURE], error_type=[exc.kind], reason=[lines[0] if lines else type(exc).__name__])
    return pa.RecordBatch.from_pydict(row, schema=RESULT_SCHEMA)


def _result_batches(
    outcome: PostOutcome, records_in: int, elapsed_s: float, startup_s: float
) -> Iterator[pa.RecordBatch]:
    stats: dict[str, list[Any]] = {name: [None] for name in RESULT_SCHEMA.names}
    stats.update(
        kind=[STATS],
        records_in=[records_in],
        accepted=[outcome.accepted],
        retried=[outcome.retried],
        requests=[outcome.requests],
        attempts=[outcome.attempts],
        records_sent=[outcome.records_sent],
        ack_timeouts=[outcome.ack_timeouts],
        pending=[outcome.pending],
        reason=[outcome.pending_reason or None],
        elapsed_s=[elapsed_s],
        startup_s=[startup_s],
        concurrency_peak=[outcome.concurrency_peak],
        concurrency_decreases=[outcome.concurrency_decreases],
        bytes=[outcome.bytes_sent],
        latencies_ms=[outcome.latencies_ms],
    )
    yield pa.RecordBatch.from_pydict(stats, schema=RESULT_SCHEMA)
    for start in range(0, len(outcome.rejected), 10_000):
        chunk = outcome.rejected[start : start + 10_000]
        rows: dict[str, list[Any]] = {name: [None] * len(chunk) for name in RESULT_SCHEMA.names}
        rows.update(
            kind=[DEAD_LETTER] * len(chunk),
            record_id=[r.record.id for r in chunk],
            record=[r.record.doc for r in chunk],
            status=[r.status for r in chunk],
            error_type=[r.error_type for r in chunk],
            reason=[_with_destination(r) for r in chunk],
        )
        yield pa.RecordBatch.from_pydict(rows, schema=RESULT_SCHEMA)


def _with_destination(rejection: Rejection) -> str:
    """The sink's reason, and where a templated destination meant the record to go (for the dead letter)."""
    destination = rejection.record.destination
    if not destination or rejection.error_type == "destination_unresolved":
        return rejection.reason
    meant = ", ".join(
        f"{name.lstrip('_')}={value}" for name, value in destination.items() if value is not None
    )
    return f"{rejection.reason} (destination: {meant})"
