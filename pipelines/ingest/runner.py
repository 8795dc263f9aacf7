"""One ingestion pass over a feed ("available now"): replay an unfinished batch, then plan and commit new ones.

Per batch, in this order: (1) plan — the file list goes to the ledger under batch number N;
(2) quarantine entries of N are appended once; (3) the data is appended with application transaction
(feed.app_id, N); (4) the listing cursor moves past the batch. A crash after any step is repaired by
the next run: a planned batch that is not in the table is replayed with the same files.
(tests/crash_at.py kills a real ingest process right after each step to prove it.)
"""

import logging
import time
from collections.abc import Callable

import pyarrow as pa
from deltalake.exceptions import TableNotFoundError

from pipelines.delta_once import append_once, refused_by_delta, transaction_version
from pipelines.feeds import FeedSpec
from pipelines.ingest.context import IngestContext, IngestReport
from pipelines.ingest.discovery import (
    LandingFile,
    digests,
    move_listing_cursor,
    read_listing_cursor,
    split_at_cursor,
)
from pipelines.ingest.ledger import FileLedger
from pipelines.ingest.planning import Discovery, discover, plan_batches
from pipelines.ingest.quarantine import record_quarantine
from pipelines.ingest.reader import METADATA_SCHEMA, ReadResult, data_schema, read_batch
from pipelines.ingest.refusals import drop_files, unwritable_files
from pipelines.ingest.schema_history import record_schema
from resources.lake import LakeResource


def ingest_feed(
    feed: FeedSpec,
    lake: LakeResource,
    *,
    max_files_per_batch: int | None = None,
    max_bytes_per_batch: int | None = None,
    max_batches: int = 100,
    full_listing: bool | None = None,
    log: logging.Logger | logging.LoggerAdapter | None = None,
    clock: Callable[[], float] = time.time,
) -> IngestReport:
    """Drain the feed's backlog in at most ``max_batches`` commits, exactly once.

    Batch limits default to the feed's own; ``full_listing`` forces (True) or forbids (False) a full
    listing instead of the incremental one (False also skips the late-name check), else the feed's
    ``listing``/``find_late_names``/``backfill_interval`` decide. ``clock`` (epoch seconds) says which
    files have settled.
    """
    ctx = _context(feed, lake, log)
    ledger = FileLedger.for_feed(feed, lake)
    next_batch = _replay_unfinished(ctx, ledger)

    cursor = read_listing_cursor(lake, feed)
    now = clock()
    found = discover(ctx, ledger, cursor, full_listing, now)

    planned, drained = _plan_batches(
        ctx, ledger, found, next_batch, max_files_per_batch, max_bytes_per_batch, max_batches
    )
    taken = {f.path for f in planned}
    ctx.report.late_files = [path for path in ctx.report.late_files if path in taken]
    state = _next_cursor(feed, cursor, found, planned, drained, now, full_listing)
    move_listing_cursor(lake, feed, state, cursor)
    return _finish(ctx)


def _plan_batches(
    ctx: IngestContext,
    ledger: FileLedger,
    found: Discovery,
    last_batch: int,
    max_files_per_batch: int | None,
    max_bytes_per_batch: int | None,
    max_batches: int,
) -> tuple[list[LandingFile], bool]:
    """Plan and commit the new files batch by batch after ``last_batch``: the files planned, and
    whether all of them were (False: ``max_batches`` reached, or another run planned first)."""
    feed = ctx.feed
    planned: list[LandingFile] = []
    next_batch = last_batch
    for chunk in plan_batches(
        found.new_files,
        max_files_per_batch or feed.max_files_per_batch,
        feed.max_bytes_per_batch if max_bytes_per_batch is None else max_bytes_per_batch,
    ):
        if len(ctx.report.batches) >= max_batches:
            ctx.log.info("stopping after %d batches; the rest waits for the next run", max_batches)
            return planned, False
        next_batch += 1
        if not _plan_and_commit(ctx, ledger, chunk, next_batch):
            return planned, False
        planned.extend(chunk)
    return planned, True


def _next_cursor(
    feed: FeedSpec,
    cursor: dict,
    found: Discovery,
    planned: list[LandingFile],
    drained: bool,
    now: float,
    full_listing: bool | None,
) -> dict:
    """The listing cursor after this run."""
    taken = {f.path for f in planned}
    # The cursor passes what is planned — everything listed when all of it is planned or known — but
    # never a file still settling: an incremental listing would not see it again.
    limit = min((f.path for f in found.pending), default=None)
    passed = found.listed if drained else planned
    planned_up_to = max(
        [cursor.get("start_after") or "", *(f.path for f in passed if limit is None or f.path < limit)]
    )
    state = {
        "start_after": planned_up_to,
        # A full listing whose finds are not all planned yet (max_batches) does not count as done:
        # out-of-order names among the rest would otherwise wait for the next backfill.
        "last_full_listing_at": now if found.full and drained else cursor.get("last_full_listing_at", 0),
    }
    if found.full or (feed.find_late_names and full_listing is not False):
        # What this run accounted for before the new cursor: the next run looks up the files there
        # only when their listing differs (a late name, a change, a file not taken yet).
        not_taken = {f.path for f in (*found.new_files, *found.pending, *found.held_back)} - taken
        before = split_at_cursor(found.listed, planned_up_to)[0]
        state["known_digests"] = digests(f for f in before if f.path not in not_taken)
    return state


def ingest_files(
    feed: FeedSpec,
    lake: LakeResource,
    files: list[LandingFile],
    log: logging.Logger | logging.LoggerAdapter | None = None,
) -> IngestReport:
    """Ingest exactly ``files`` as one new batch (after replaying any unfinished one), whatever the
    ledger says of them: the re-admission of files quarantined wrongly (``readmit``). The listing
    cursor does not move."""
    ctx = _context(feed, lake, log)
    ledger = FileLedger.for_feed(feed, lake)
    next_batch = _replay_unfinished(ctx, ledger)
    if files:
        _plan_and_commit(ctx, ledger, sorted(files), next_batch + 1)
    return _finish(ctx)


def _context(
    feed: FeedSpec, lake: LakeResource, log: logging.Logger | logging.LoggerAdapter | None
) -> IngestContext:
    options = lake.storage_options()
    return IngestContext(
        feed,
        lake,
        options,
        lake.table_uri(feed.table_name),
        lake.resolve(feed.landing_uri(lake.landing_uri))[0],
        IngestReport(),
        log or logging.getLogger(__name__),
    )


def _replay_unfinished(ctx: IngestContext, ledger: FileLedger) -> int:
    """Commit the batches an earlier run planned but did not commit; the last batch number in use."""
    # Read the last planned number before looking anything up, so that a concurrent run that plans
    # in between makes our plan of the same number fail instead of planning its files twice.
    last_planned = ledger.last_batch()
    done = transaction_version(ctx.table_uri, ctx.options, ctx.feed.app_id)
    for batch_id in range(done + 1, last_planned + 1):
        ctx.log.warning(
            "replaying batch %s of feed %s, planned by an earlier run that did not commit",
            batch_id,
            ctx.feed.name,
        )
        _commit_batch(ctx, ledger.files_of_batch(batch_id), batch_id)
        ctx.report.replayed_batches += 1
    return max(last_planned, done)


def _plan_and_commit(ctx: IngestContext, ledger: FileLedger, files: list[LandingFile], batch_id: int) -> bool:
    """Plan ``files`` as ``batch_id`` in the ledger, then commit them; False when another run planned
    that number first."""
    if not ledger.plan(batch_id, files):
        ctx.log.warning(
            "another run planned batch %s of feed %s first; stopping, its files are in its hands",
            batch_id,
            ctx.feed.name,
        )
        return False
    _commit_batch(ctx, files, batch_id)
    return True


def _finish(ctx: IngestContext) -> IngestReport:
    """The report with the table's version, schema and row count after the run."""
    try:
        table = ctx.lake.table(ctx.table_uri)
    except TableNotFoundError:
        return ctx.report  # nothing landed yet: no version, schema or row count
    ctx.report.delta_version = table.version()
    ctx.report.table_schema = pa.schema(table.schema().to_arrow())
    ctx.report.table_rows = table.count()
    return ctx.report


def _table_schema(ctx: IngestContext) -> pa.Schema | None:
    try:
        return pa.schema(ctx.lake.table(ctx.table_uri).schema().to_arrow())
    except TableNotFoundError:
        return None


def _append_batch(ctx: IngestContext, result: ReadResult, batch_id: int, files: int) -> bool:
    return append_once(
        ctx.table_uri,
        ctx.options,
        result.table,
        ctx.feed.app_id,
        batch_id,
        custom_metadata={"lakerelay.batch_id": str(batch_id), "lakerelay.files": str(files)},
        schema_mode="merge",
    )


def _commit_batch(ctx: IngestContext, files: list[LandingFile], batch_id: int) -> None:
    feed, log = ctx.feed, ctx.log
    if transaction_version(ctx.table_uri, ctx.options, feed.app_id) >= batch_id:
        log.info("batch %s of feed %s is already in the table; not appending it again", batch_id, feed.name)
        return
    table_schema = _table_schema(ctx)
    result = read_batch(ctx.landing_fs, feed, files, batch_id, data_schema(table_schema))
    for bad in result.quarantined:
        log.error("quarantined %s (left in the landing zone, not ingested): %s", bad.path, bad.error)
    if result.bad_record_count:
        log.warning(
            "batch %s of feed %s: %d bad records recorded in the quarantine table (file, line, raw text)",
            batch_id,
            feed.name,
            result.bad_record_count,
        )
    record_quarantine(ctx.lake.state_uri("quarantine", feed.name), ctx.options, feed.name, result, batch_id)
    try:
        appended = _append_batch(ctx, result, batch_id, len(files))
    except Exception as exc:
        if not refused_by_delta(exc):
            raise  # a bug of lakerelay's, or storage: never a reason to quarantine a file
        appended = _append_without_refused_files(ctx, result, batch_id, len(files), table_schema, exc)
    if not appended:
        log.warning("batch %s of feed %s was committed by a concurrent run", batch_id, feed.name)
        return
    _report_batch(ctx, files, result, batch_id)


def _append_without_refused_files(
    ctx: IngestContext,
    result: ReadResult,
    batch_id: int,
    files: int,
    table_schema: pa.Schema | None,
    refusal: Exception,
) -> bool:
    """Delta refused the batch (``refusal``). If some files' rows are refused on their own, they are
    quarantined and the rest lands; otherwise (storage down, a lost race) the refusal is the run's."""
    feed = ctx.feed
    unwritable = unwritable_files(result, table_schema)
    if not unwritable:
        raise refusal
    for bad in unwritable:
        ctx.log.error("quarantined %s (Delta refused its rows, not ingested): %s", bad.path, bad.error)
    drop_files(result, unwritable, table_schema)
    # A second quarantine transaction of this batch: a replay reaches the same verdict and finds
    # these entries recorded already.
    record_quarantine(
        ctx.lake.state_uri("quarantine", feed.name),
        ctx.options,
        feed.name,
        ReadResult(METADATA_SCHEMA.empty_table(), quarantined=unwritable),
        batch_id,
        app_id=f"lakerelay-quarantine-write:{feed.name}",
    )
    return _append_batch(ctx, result, batch_id, files)


def _report_batch(ctx: IngestContext, files: list[LandingFile], result: ReadResult, batch_id: int) -> None:
    """Record the committed batch's schema version, and add it to the run's report."""
    feed, report = ctx.feed, ctx.report
    if result.schema is not None:
        version = record_schema(ctx.lake, feed.name, result.schema, batch_id, result.new_columns)
        if version is not None:
            report.schema_versions.append(version)
    report.batches.append(batch_id)
    report.quarantined.extend(result.quarantined)
    report.bad_records += result.bad_record_count
    report.rescued_rows += result.rescued_rows
    report.new_columns.extend(c for c in result.new_columns if c not in report.new_columns)
    report.ignored_columns.extend(c for c in result.ignored_columns if c not in report.ignored_columns)
    report.files += len(result.rows_per_file)
    report.bytes += sum(f.size for f in files if f.path in result.rows_per_file)
    report.rows += result.table.num_rows
    ctx.log.info(
        "committed batch %s of feed %s: %d files, %d rows",
        batch_id,
        feed.name,
        len(files),
        result.table.num_rows,
    )
