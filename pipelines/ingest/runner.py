"""One ingestion pass over a feed ("available now"): replay an unfinished batch, then plan and commit new ones.

Per batch, in this order: (1) plan — the file list goes to the ledger under batch number N;
(2) quarantine entries of N are appended once; (3) the data is appended with application transaction
(feed.app_id, N); (4) the listing cursor moves past the batch. A crash after any step is repaired by
the next run: a planned batch that is not in the table is replayed with the same files.
"""

import logging
import os
import signal
import tempfile
import time
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import TableNotFoundError

from pipelines.delta_once import append_once, transaction_version
from pipelines.feeds import FeedSpec
from pipelines.ingest.discovery import LandingFile, ListingFilter, list_landing_files
from pipelines.ingest.ledger import FileLedger
from pipelines.ingest.quarantine import record_quarantine
from pipelines.ingest.reader import (
    METADATA_SCHEMA,
    RESERVED_COLUMNS,
    Quarantined,
    ReadResult,
    data_schema,
    read_batch,
)
from pipelines.ingest.schema_history import record_schema
from resources.lake import LakeResource

# Test hook: kill this process with SIGKILL right after the named phase (planned, quarantined,
# committed, cursor). Unset — the default — it does nothing.
CRASH_AFTER_ENV = "LAKERELAY_TEST_CRASH_AFTER_PHASE"


def _phase_done(phase: str) -> None:
    if os.environ.get(CRASH_AFTER_ENV) == phase:
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class IngestReport:
    batches: list[int] = field(default_factory=list)
    files: int = 0
    rows: int = 0
    bytes: int = 0
    listed_files: int = 0
    full_listing: bool = False
    overwritten_skipped: list[str] = field(default_factory=list)
    overwritten_reingested: list[str] = field(default_factory=list)
    quarantined: list[Quarantined] = field(default_factory=list)
    bad_records: int = 0
    rescued_rows: int = 0
    new_columns: list[str] = field(default_factory=list)
    ignored_columns: list[str] = field(default_factory=list)
    schema_versions: list[int] = field(default_factory=list)
    replayed_batches: int = 0
    delta_version: int | None = None

    @property
    def quarantine_rate(self) -> float:
        """Bad records and unreadable files over everything read."""
        bad = self.bad_records + len(self.quarantined)
        return bad / max(1, self.rows + bad)


@dataclass
class IngestContext:
    feed: FeedSpec
    lake: LakeResource
    options: dict[str, str]
    table_uri: str
    landing_fs: pafs.FileSystem
    report: IngestReport
    log: logging.Logger


def ingest_feed(
    feed: FeedSpec,
    lake: LakeResource,
    *,
    max_files_per_batch: int | None = None,
    max_bytes_per_batch: int | None = None,
    max_batches: int = 100,
    full_listing: bool | None = None,
    log: logging.Logger | logging.LoggerAdapter | None = None,
) -> IngestReport:
    """Drain the feed's backlog in at most ``max_batches`` commits, exactly once.

    Batch limits default to the feed's own; ``full_listing`` forces (True) or forbids (False) a full
    listing instead of the incremental one, else the feed's ``listing``/``backfill_interval`` decide.
    """
    options = lake.storage_options()
    landing_fs = lake.resolve(feed.landing_uri(lake.landing_uri))[0]
    ctx = IngestContext(
        feed,
        lake,
        options,
        lake.table_uri(feed.table_name),
        landing_fs,
        IngestReport(),
        log or logging.getLogger(__name__),
    )
    ledger = FileLedger.for_feed(feed, lake)

    # Read the last planned number before looking anything up, so that a concurrent run that plans
    # in between makes our plan of the same number fail instead of planning its files twice.
    last_planned = ledger.last_batch()
    done = transaction_version(ctx.table_uri, options, feed.app_id)
    for batch_id in range(done + 1, last_planned + 1):
        ctx.log.warning(
            "replaying batch %s of feed %s, planned by an earlier run that did not commit",
            batch_id,
            feed.name,
        )
        _commit_batch(ctx, ledger.files_of_batch(batch_id), batch_id)
        ctx.report.replayed_batches += 1

    cursor = lake.read_state("listing", f"{feed.name}.json") or {}
    now = time.time()
    full, listed, new_files = discover_new_files(ctx, ledger, cursor, full_listing, now)

    next_batch = max(last_planned, done)
    planned_up_to = cursor.get("start_after") or ""
    drained = False
    for chunk in plan_batches(
        new_files,
        max_files_per_batch or feed.max_files_per_batch,
        feed.max_bytes_per_batch if max_bytes_per_batch is None else max_bytes_per_batch,
    ):
        if len(ctx.report.batches) >= max_batches:
            ctx.log.info("stopping after %d batches; the rest waits for the next run", max_batches)
            break
        next_batch += 1
        if not ledger.plan(next_batch, chunk):
            ctx.log.warning(
                "another run planned batch %s of feed %s first; stopping, its files are in its hands",
                next_batch,
                feed.name,
            )
            break
        _phase_done("planned")
        _commit_batch(ctx, chunk, next_batch)
        planned_up_to = max(planned_up_to, chunk[-1].path)
    else:
        # Everything listed is planned (or known): the cursor may pass all of it.
        planned_up_to = max([planned_up_to, *(f.path for f in listed)])
        drained = True
    state = {
        "start_after": planned_up_to,
        # A full listing whose finds are not all planned yet (max_batches) does not count as done:
        # out-of-order names among the rest would otherwise wait for the next backfill.
        "last_full_listing_at": now if full and drained else cursor.get("last_full_listing_at", 0),
    }
    if state != cursor:
        lake.write_state(state, "listing", f"{feed.name}.json")
    _phase_done("cursor")

    try:
        ctx.report.delta_version = DeltaTable(ctx.table_uri, storage_options=options).version()
    except TableNotFoundError:
        ctx.report.delta_version = None
    return ctx.report


def discover_new_files(
    ctx: IngestContext, ledger: FileLedger, cursor: dict, full_listing: bool | None, now: float
) -> tuple[bool, list[LandingFile], list[LandingFile]]:
    """(full listing?, files listed, files to ingest): incremental after the cursor unless a full
    listing is forced, configured, or due by ``backfill_interval``."""
    feed = ctx.feed
    full = full_listing
    if full is None:
        due = now - cursor.get("last_full_listing_at", 0) >= feed.backfill_interval_s()
        full = feed.listing == "full" or not cursor.get("start_after") or due
    ctx.report.full_listing = full
    root = ctx.lake.resolve(feed.landing_uri(ctx.lake.landing_uri))[1]
    listed = list_landing_files(
        ctx.landing_fs,
        root,
        start_after=None if full else cursor.get("start_after"),
        keep=ListingFilter(feed.recursive, feed.path_glob, feed.modified_after_ns()),
        lake=ctx.lake,
    )
    ctx.report.listed_files = len(listed)
    return full, listed, _new_files(ctx, listed, ledger.lookup([f.path for f in listed]))


def _new_files(
    ctx: IngestContext, listed: list[LandingFile], known: dict[str, LandingFile]
) -> list[LandingFile]:
    new_files = []
    for landing_file in listed:
        previous = known.get(landing_file.path)
        if previous is None:
            new_files.append(landing_file)
        elif previous != landing_file:
            if ctx.feed.allow_overwrites:
                ctx.report.overwritten_reingested.append(landing_file.path)
                new_files.append(landing_file)
            else:
                ctx.report.overwritten_skipped.append(landing_file.path)
    if ctx.report.overwritten_skipped:
        ctx.log.warning(
            "%d landing files changed after they were ingested and were skipped (ingest immutable files, "
            "give changed content a new name, or set allow_overwrites): %s",
            len(ctx.report.overwritten_skipped),
            ctx.report.overwritten_skipped[:5],
        )
    return new_files


def plan_batches(files: list[LandingFile], max_files: int, max_bytes: int) -> list[list[LandingFile]]:
    """Consecutive chunks within both limits (a single file larger than max_bytes is its own batch)."""
    chunks: list[list[LandingFile]] = []
    current: list[LandingFile] = []
    size = 0
    for landing_file in files:
        if current and (len(current) >= max_files or (max_bytes and size + landing_file.size > max_bytes)):
            chunks.append(current)
            current, size = [], 0
        current.append(landing_file)
        size += landing_file.size
    if current:
        chunks.append(current)
    return chunks


def _table_schema(ctx: IngestContext) -> pa.Schema | None:
    try:
        return pa.schema(DeltaTable(ctx.table_uri, storage_options=ctx.options).schema().to_arrow())
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
        configuration={"delta.enableChangeDataFeed": "true"},
    )


def _unwritable_files(result: ReadResult, table_schema: pa.Schema | None) -> list[Quarantined]:
    """The files whose rows a Delta write refuses on their own, each tried in a scratch table that
    starts with the real table's schema (so schema merging is tried too). Empty when the scratch
    writes themselves do not work: then the failure says nothing about the files."""
    refused = []
    with tempfile.TemporaryDirectory(prefix="lakerelay-trial-") as scratch:
        try:
            write_deltalake(f"{scratch}/probe", pa.table({"probe": [1]}))
        except Exception:  # the scratch space, not a file, is the problem
            return []
        for number, path in enumerate(result.rows_per_file):
            # Without the new columns this file has no value in: a column another file brought (in a
            # first batch, every file has every inferred column) must not be blamed on this one.
            rows = _without_empty_new_columns(
                result.table.filter(pc.field("_source_file") == path), table_schema
            )
            uri = f"{scratch}/{number}"
            try:
                if table_schema is not None:
                    write_deltalake(uri, table_schema.empty_table())
                write_deltalake(uri, rows, mode="append", schema_mode="merge")
            except Exception as exc:  # whatever Delta says is the reason recorded
                refused.append(Quarantined(path, f"Delta refused its rows ({type(exc).__name__}: {exc})"))
    if len(refused) > 1 and len(refused) == len(result.rows_per_file):
        return []  # every file of several: the table (or Delta) is the problem, not the files
    return refused


def _without_empty_new_columns(table: pa.Table, table_schema: pa.Schema | None) -> pa.Table:
    """``table`` without the data columns it would add to the Delta table that hold only nulls."""
    existing = {*(table_schema.names if table_schema is not None else ()), *RESERVED_COLUMNS}
    empty = [
        name
        for name in table.column_names
        if name not in existing and table.column(name).null_count == table.num_rows
    ]
    return table.drop_columns(empty)


def _drop_files(result: ReadResult, files: list[Quarantined], table_schema: pa.Schema | None) -> None:
    """Take ``files``' rows out of the batch, and the new columns left without a value (the ones
    that made Delta refuse the batch, when only those files had them)."""
    paths = {q.path for q in files}
    kept = result.table.filter(pc.invert(pc.is_in(result.table["_source_file"], pa.array(sorted(paths)))))
    result.table = _without_empty_new_columns(kept, table_schema)
    dropped = set(kept.column_names) - set(result.table.column_names)
    result.new_columns = {name: f for name, f in result.new_columns.items() if name not in dropped}
    if result.schema is not None:
        result.schema = pa.schema([f for f in result.schema if f.name not in dropped])
    for path in paths:
        result.rows_per_file.pop(path, None)
    result.quarantined.extend(files)


def _commit_batch(ctx: IngestContext, files: list[LandingFile], batch_id: int) -> None:
    feed, report, log = ctx.feed, ctx.report, ctx.log
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
    _phase_done("quarantined")
    try:
        appended = _append_batch(ctx, result, batch_id, len(files))
    except Exception:
        # Delta refused the batch. If some files' rows are refused on their own, they are quarantined
        # and the rest lands; otherwise (storage down, a lost race) the error is the run's.
        unwritable = _unwritable_files(result, table_schema)
        if not unwritable:
            raise
        for bad in unwritable:
            log.error("quarantined %s (Delta refused its rows, not ingested): %s", bad.path, bad.error)
        _drop_files(result, unwritable, table_schema)
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
        appended = _append_batch(ctx, result, batch_id, len(files))
    _phase_done("committed")
    if not appended:
        log.warning("batch %s of feed %s was committed by a concurrent run", batch_id, feed.name)
        return
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
    log.info(
        "committed batch %s of feed %s: %d files, %d rows",
        batch_id,
        feed.name,
        len(files),
        result.table.num_rows,
    )
