"""Which listed landing files a run ingests, and how they are cut into batches (one Delta commit each).

A file is new when the ledger has no entry for its path; one whose size or mtime changed is skipped
(warned about), or ingested again with the feed's ``allow_overwrites``.
"""

from pipelines.ingest.context import IngestContext
from pipelines.ingest.discovery import LandingFile, list_feed
from pipelines.ingest.ledger import FileLedger
from pipelines.ingest.transport import with_retries


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
    listed = with_retries(
        lambda: list_feed(ctx.lake, feed, start_after=None if full else cursor.get("start_after")),
        f"listing the landing zone of feed {feed.name}",
        feed.read_deadline_s(),
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
