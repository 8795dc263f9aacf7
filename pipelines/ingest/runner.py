"""One ingestion pass over a feed: replay an unfinished batch, then plan and commit new ones."""

import logging
from dataclasses import dataclass, field

import pyarrow.fs as pafs
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from pipelines.delta_once import append_once, transaction_version
from pipelines.feeds import FeedSpec
from pipelines.ingest.discovery import LandingFile, list_landing_files
from pipelines.ingest.ledger import FileLedger
from pipelines.ingest.reader import Quarantined, read_batch
from resources.lake import LakeResource


@dataclass
class IngestReport:
    batches: list[int] = field(default_factory=list)
    files: int = 0
    rows: int = 0
    bytes: int = 0
    overwritten_skipped: list[str] = field(default_factory=list)
    quarantined: list[Quarantined] = field(default_factory=list)
    replayed_batches: int = 0
    delta_version: int | None = None


def ingest_feed(
    feed: FeedSpec,
    lake: LakeResource,
    *,
    max_files_per_batch: int = 1000,
    max_batches: int = 100,
    log: logging.Logger | None = None,
) -> IngestReport:
    """Drain the feed's backlog in at most ``max_batches`` commits ("available now"), exactly once."""
    log = log or logging.getLogger(__name__)
    options = lake.storage_options()
    table_uri = lake.table_uri(feed.table_name)
    ledger = FileLedger(lake.state_uri("ledger", feed.name), options, feed.name)
    landing_fs, landing_root = lake.resolve(feed.landing_uri(lake.landing_uri))
    report = IngestReport()

    state = ledger.load()
    done = transaction_version(table_uri, options, feed.app_id)
    # A batch planned but not committed (the last run died in between): same files, same number.
    for batch_id in range(done + 1, state.last_batch + 1):
        log.warning(
            "replaying batch %s of feed %s, planned by an earlier run that did not commit",
            batch_id,
            feed.name,
        )
        _commit_batch(
            feed, table_uri, options, landing_fs, state.files_of_batch(batch_id), batch_id, report, log
        )
        report.replayed_batches += 1

    new_files = []
    for landing_file in list_landing_files(landing_fs, landing_root):
        known = state.files.get(landing_file.path)
        if known is None:
            new_files.append(landing_file)
        elif known != landing_file:
            report.overwritten_skipped.append(landing_file.path)
    if report.overwritten_skipped:
        log.warning(
            "%d landing files changed after they were ingested and were skipped (ingest immutable files, "
            "or give changed content a new name): %s",
            len(report.overwritten_skipped),
            report.overwritten_skipped[:5],
        )

    next_batch = max(state.last_batch, done)
    for start in range(0, len(new_files), max_files_per_batch):
        if len(report.batches) >= max_batches:
            log.info(
                "stopping after %d batches; %d files wait for the next run",
                max_batches,
                len(new_files) - start,
            )
            break
        next_batch += 1
        chunk = new_files[start : start + max_files_per_batch]
        if not ledger.plan(next_batch, chunk):
            log.warning(
                "another run planned batch %s of feed %s first; stopping, its files are in its hands",
                next_batch,
                feed.name,
            )
            break
        _commit_batch(feed, table_uri, options, landing_fs, chunk, next_batch, report, log)

    try:
        report.delta_version = DeltaTable(table_uri, storage_options=options).version()
    except TableNotFoundError:
        report.delta_version = None
    return report


def _commit_batch(
    feed: FeedSpec,
    table_uri: str,
    options: dict[str, str],
    landing_fs: pafs.FileSystem,
    files: list[LandingFile],
    batch_id: int,
    report: IngestReport,
    log: logging.Logger,
) -> None:
    if transaction_version(table_uri, options, feed.app_id) >= batch_id:
        log.info("batch %s of feed %s is already in the table; not appending it again", batch_id, feed.name)
        return
    result = read_batch(landing_fs, feed, files, batch_id)
    for bad in result.quarantined:
        log.error("quarantined %s (left in the landing zone, not ingested): %s", bad.path, bad.error)
    appended = append_once(
        table_uri,
        options,
        result.table,
        feed.app_id,
        batch_id,
        custom_metadata={"lakerelay.batch_id": str(batch_id), "lakerelay.files": str(len(files))},
        schema_mode="merge",
        configuration={"delta.enableChangeDataFeed": "true"},
    )
    if not appended:
        log.warning("batch %s of feed %s was committed by a concurrent run", batch_id, feed.name)
        return
    report.batches.append(batch_id)
    report.quarantined.extend(result.quarantined)
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
