"""Which listed landing files a run ingests, and how they are cut into batches (one Delta commit each).

A file is new when the ledger has no entry for its path; one whose size or mtime changed is skipped
(and fails the asset check ``UNCHANGED_CHECK`` with its path), or ingested again with the feed's
``allow_overwrites``. A new file whose mtime is younger than the feed's ``settle_time`` waits: it may
still be being written.
"""

from dataclasses import dataclass

from pipelines.ingest.context import UNCHANGED_CHECK, IngestContext
from pipelines.ingest.discovery import (
    LandingFile,
    changed_since,
    is_settled,
    list_feed,
    settle_time_s,
    split_at_cursor,
)
from pipelines.ingest.ledger import FileLedger
from pipelines.ingest.transport import with_retries


@dataclass
class Discovery:
    full: bool  # a full listing, every listed file looked up in the ledger
    listed: list[LandingFile]  # what the listing returned, sorted by path
    new_files: list[LandingFile]  # to ingest now
    pending: list[LandingFile]  # new but not taken yet: may still be being written (settle_time)
    held_back: list[LandingFile]  # listed, not new, not to be counted as accounted for (changed files)


def discover_new_files(
    ctx: IngestContext, ledger: FileLedger, cursor: dict, full_listing: bool | None, now: float
) -> tuple[bool, list[LandingFile], list[LandingFile]]:
    """(full listing?, files listed, files to ingest now): ``discover`` in the shape callers outside
    the runner (bench.ingest) use."""
    found = discover(ctx, ledger, cursor, full_listing, now)
    return found.full, found.listed, found.new_files


def discover(
    ctx: IngestContext, ledger: FileLedger, cursor: dict, full_listing: bool | None, now: float
) -> Discovery:
    """What to ingest: a listing after the cursor, of the whole zone when a full listing is forced,
    configured or due by ``backfill_interval``, or when ``find_late_names`` looks for late names (then
    only the files after the cursor are looked up in the ledger, unless the ones before it changed)."""
    feed = ctx.feed
    start_after = cursor.get("start_after") or ""
    full = full_listing
    if full is None:
        due = (
            not feed.find_late_names
            and now - cursor.get("last_full_listing_at", 0) >= feed.backfill_interval_s()
        )
        full = feed.listing == "full" or not start_after or due
    late_names = not full and feed.find_late_names and full_listing is not False
    ctx.report.full_listing = full
    listed = with_retries(
        lambda: list_feed(ctx.lake, feed, start_after=None if full or late_names else start_after),
        f"listing the landing zone of feed {feed.name}",
        feed.read_deadline_s(),
    )
    ctx.report.listed_files = len(listed)
    candidates = listed
    if late_names:
        before, after = split_at_cursor(listed, start_after)
        candidates = sorted([*changed_since(before, cursor.get("known_digests")), *after])
    new_files = _new_files(ctx, candidates, ledger.lookup([f.path for f in candidates]))
    ctx.report.late_files = [f.path for f in new_files if f.path <= start_after] if start_after else []
    if ctx.report.late_files:
        ctx.log.info(
            "%d late files (names sorting before the listing cursor): %s",
            len(ctx.report.late_files),
            ctx.report.late_files[:5],
        )
    settle_s = settle_time_s(ctx.landing_fs, feed)
    pending = [f for f in new_files if not is_settled(f, now, settle_s)]
    ctx.report.unsettled_files = [f.path for f in pending]
    if pending:
        ctx.log.info(
            "%d files changed less than %s ago, maybe still being written; the next run takes them: %s",
            len(pending),
            feed.settle_time,
            ctx.report.unsettled_files[:5],
        )
    changed = set(ctx.report.overwritten_skipped)
    return Discovery(
        full,
        listed,
        [f for f in new_files if is_settled(f, now, settle_s)],
        pending,
        [f for f in listed if f.path in changed],
    )


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
        ctx.log.error(
            "%d landing files changed after they were ingested; their new content is NOT ingested (the "
            "asset check %s fails until they are resolved: write changed content under a new name, or set "
            "allow_overwrites): %s",
            len(ctx.report.overwritten_skipped),
            UNCHANGED_CHECK,
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
