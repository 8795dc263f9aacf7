"""Listing the landing zone: full or incremental (only names after a cursor), locally and on S3.

Incremental listing costs what the *new* files cost: on S3 ``list_objects_v2(StartAfter=cursor)``
returns only later keys; locally, directories that sort wholly before the cursor are not entered and
only files after it are stat'ed. Names that arrive out of lexical order are found by the periodic
full listing (``backfill_interval``) — or, with the feed's ``find_late_names`` (the default), on every
run: the whole zone is listed, and the (path, size, mtime) of the files before the cursor are compared,
in 64 buckets of paths (``digests``), with what the last run accounted for; only the files of a bucket
that differs are looked up in the ledger. The listing is O(files in the zone); the ledger lookups
stay O(new files + a bucket per late or changed file).

The ingest's listing cursor (``start_after``: the greatest path planned; ``last_full_listing_at``;
``known_digests``: the fingerprints of what the last run accounted for before the cursor) lives here
too, and ``files_waiting`` is what the landing sensor asks: the files the next ingest would take (after
the cursor, and late ones), through the same filter and settle time.
"""

import bisect
import fnmatch
import hashlib
import os
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from operator import attrgetter

import pyarrow.fs as pafs

from pipelines.feeds import FeedSpec
from pipelines.ingest.landing_file import LandingFile
from resources.lake import LakeResource

# Buckets of the fingerprints of the files before the cursor (a few hundred bytes of state).
DIGEST_BUCKETS = 64


@dataclass(frozen=True)
class ListingFilter:
    recursive: bool = True
    path_glob: str = ""
    modified_after_ns: int = 0

    def keeps(self, relative: str, mtime_ns: int, hidden_checked: bool = False) -> bool:
        """``hidden_checked``: the caller skipped names starting with ``.`` or ``_`` at every level
        already (the local walk does, and it is a third of a listing's time to check them again)."""
        if not hidden_checked and any(part.startswith((".", "_")) for part in relative.split("/")):
            return False
        if not self.recursive and "/" in relative:
            return False
        if self.path_glob and not fnmatch.fnmatchcase(relative, self.path_glob):
            return False
        return mtime_ns > self.modified_after_ns


@dataclass(frozen=True)
class FilesWaiting:
    """A feed's files the next ingest run would take, and whether a full listing is due."""

    files: list[LandingFile]  # new (after the listing cursor) and late ones, settled, sorted by path
    start_after: str  # the ingest's listing cursor ("" before its first run)
    root: str  # where they were listed
    full_listing_due: bool  # backfill_interval has passed since the ingest's last full listing
    backfill_interval_s: float
    late: int = 0  # of ``files``, names sorting before the cursor that the ingest has not taken
    unsettled: int = 0  # files left out because they may still be being written (settle_time)

    @property
    def count(self) -> int:
        return len(self.files)

    @property
    def last_path(self) -> str:
        return self.files[-1].path if self.files else ""


def files_waiting(lake: LakeResource, feed: FeedSpec, now: float | None = None) -> FilesWaiting:
    """What waits in ``feed``'s landing zone, through the ingest's own filter: the files after its
    cursor and, with ``find_late_names``, the names before it that the ledger does not know (looked up
    only when the listing before the cursor differs from what the last run accounted for). Files that
    may still be being written are left out until they settle, so the sensor asks again then."""
    from pipelines.ingest.ledger import FileLedger  # the ledger builds on this module

    cursor = read_listing_cursor(lake, feed)
    start_after = cursor.get("start_after") or ""
    fs, root = lake.resolve(feed.landing_uri(lake.landing_uri))
    last_full = cursor.get("last_full_listing_at")
    now = time.time() if now is None else now
    late_names = feed.find_late_names and bool(start_after)
    listed = list_landing_files(
        fs, root, start_after=None if late_names else start_after or None, keep=feed_filter(feed), lake=lake
    )
    before, after = split_at_cursor(listed, start_after)
    late: list[LandingFile] = []
    suspects = changed_since(before, cursor.get("known_digests")) if late_names else []
    if suspects:
        known = FileLedger.for_feed(feed, lake).lookup([f.path for f in suspects])
        late = [f for f in suspects if f.path not in known]
    candidates = sorted([*late, *after])
    settle_s = settle_time_s(fs, feed)
    waiting = [f for f in candidates if is_settled(f, now, settle_s)]
    return FilesWaiting(
        files=waiting,
        start_after=start_after,
        root=root,
        # Before the first run there is no cursor: that run lists everything anyway. With
        # find_late_names every run sees late names, so no backfill is needed for them.
        full_listing_due=not feed.find_late_names
        and last_full is not None
        and now - last_full >= feed.backfill_interval_s(),
        backfill_interval_s=feed.backfill_interval_s(),
        late=sum(1 for f in late if f in waiting),
        unsettled=len(candidates) - len(waiting),
    )


def split_at_cursor(
    listed: list[LandingFile], start_after: str
) -> tuple[list[LandingFile], list[LandingFile]]:
    """(files at or before the cursor, files after it) of a listing sorted by path."""
    cut = bisect.bisect_right([f.path for f in listed], start_after) if start_after else 0
    return listed[:cut], listed[cut:]


def digests(files: Iterable[LandingFile]) -> list[str]:
    """Fingerprints of (path, size, mtime) of ``files``, one per bucket of paths (by a hash of the
    path): equal fingerprints mean no name arrived late and no file changed in that bucket since the
    last run accounted for them all, so a late file costs the ledger lookups of its bucket only."""
    buckets: list[list[str]] = [[] for _ in range(DIGEST_BUCKETS)]
    for f in files:
        path = f.path.encode()
        buckets[zlib.crc32(path) % DIGEST_BUCKETS].append(f"{f.path}\t{f.size}\t{f.mtime_ns}")
    return [hashlib.sha256("\n".join(b).encode()).hexdigest()[:16] for b in buckets]


def changed_since(files: list[LandingFile], known: list[str] | None) -> list[LandingFile]:
    """The ``files`` in buckets whose fingerprint differs from ``known`` (all without ``known``)."""
    if not files:
        return []
    if not known or len(known) != DIGEST_BUCKETS:
        return files
    current = digests(files)
    stale = {bucket for bucket in range(DIGEST_BUCKETS) if current[bucket] != known[bucket]}
    return [f for f in files if zlib.crc32(f.path.encode()) % DIGEST_BUCKETS in stale] if stale else []


def settle_time_s(fs: pafs.FileSystem, feed: FeedSpec) -> float:
    """How old a file's mtime must be before it is taken: S3 objects appear whole (an upload is
    atomic), folders and other file systems show a file while it is being written."""
    return 0.0 if isinstance(fs, pafs.S3FileSystem) else feed.settle_time_s()


def is_settled(landing_file: LandingFile, now: float, settle_s: float) -> bool:
    return settle_s <= 0 or now - landing_file.mtime_ns / 1e9 >= settle_s


def read_listing_cursor(lake: LakeResource, feed: FeedSpec) -> dict:
    """The ingest's listing cursor of ``feed`` (``start_after``, ``last_full_listing_at`` in epoch
    seconds); empty before the first run."""
    return lake.read_state("listing", f"{feed.name}.json") or {}


def move_listing_cursor(lake: LakeResource, feed: FeedSpec, cursor: dict, previous: dict) -> None:
    """Store ``cursor`` as ``feed``'s listing cursor (no write when it equals ``previous``)."""
    if cursor != previous:
        lake.write_state(cursor, "listing", f"{feed.name}.json")


def feed_filter(feed: FeedSpec) -> ListingFilter:
    """Which landing files belong to ``feed``: one filter for the ingest and the landing sensor."""
    return ListingFilter(feed.recursive, feed.path_glob, feed.modified_after_ns())


def list_feed(lake: LakeResource, feed: FeedSpec, start_after: str | None = None) -> list[LandingFile]:
    """``feed``'s landing files (only paths after ``start_after`` when given), sorted by path."""
    fs, root = lake.resolve(feed.landing_uri(lake.landing_uri))
    return list_landing_files(fs, root, start_after=start_after, keep=feed_filter(feed), lake=lake)


def list_landing_files(
    fs: pafs.FileSystem,
    root: str,
    *,
    start_after: str | None = None,
    keep: ListingFilter = ListingFilter(),
    lake: LakeResource | None = None,
) -> list[LandingFile]:
    """Visible files below ``root`` sorted by path; only paths after ``start_after`` when given.

    Names starting with ``.`` or ``_`` are skipped, as Spark's file source does, so writers can stage
    files under a temporary name and rename them into place atomically.
    """
    if isinstance(fs, pafs.LocalFileSystem):
        found = _list_local(root, start_after, keep)
    elif isinstance(fs, pafs.S3FileSystem) and lake is not None:
        found = _list_s3(lake, root, start_after, keep)
    else:
        found = _list_generic(fs, root, start_after, keep)
    found.sort(key=attrgetter("path"))  # paths are unique; comparing dataclasses costs 5x more
    return found


def _list_local(root: str, start_after: str | None, keep: ListingFilter) -> list[LandingFile]:
    cursor = start_after[len(root) :].lstrip("/") if start_after and start_after.startswith(root) else None
    found: list[LandingFile] = []

    def walk(directory: str, prefix: str) -> None:
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except FileNotFoundError:
            return
        for entry in entries:
            relative = prefix + entry.name
            if entry.name.startswith((".", "_")):
                continue
            if entry.is_dir(follow_symlinks=False):
                inside = relative + "/"
                # Every key in this directory starts with ``inside``: skip it when all sort before the cursor.
                if cursor and inside < cursor and not cursor.startswith(inside):
                    continue
                if keep.recursive:
                    walk(entry.path, inside)
                continue
            if cursor and relative <= cursor:
                continue
            try:
                stat = entry.stat()
            except FileNotFoundError:
                continue  # deleted between the directory read and the stat
            if keep.keeps(relative, stat.st_mtime_ns, hidden_checked=True):
                found.append(LandingFile(entry.path, stat.st_size, stat.st_mtime_ns))

    walk(root, "")
    return found


def _list_s3(
    lake: LakeResource, root: str, start_after: str | None, keep: ListingFilter
) -> list[LandingFile]:
    bucket, _, prefix = root.partition("/")
    prefix = f"{prefix.rstrip('/')}/" if prefix else ""
    arguments = {"Bucket": bucket, "Prefix": prefix}
    if start_after and start_after.startswith(f"{bucket}/"):
        arguments["StartAfter"] = start_after[len(bucket) + 1 :]
    found = []
    for page in lake.s3_client().get_paginator("list_objects_v2").paginate(**arguments):
        for obj in page.get("Contents", []):
            relative = obj["Key"][len(prefix) :]
            mtime_ns = int(obj["LastModified"].timestamp() * 1e9)
            if relative and not relative.endswith("/") and keep.keeps(relative, mtime_ns):
                found.append(LandingFile(f"{bucket}/{obj['Key']}", obj["Size"], mtime_ns))
    return found


def _list_generic(
    fs: pafs.FileSystem, root: str, start_after: str | None, keep: ListingFilter
) -> list[LandingFile]:
    selector = pafs.FileSelector(root, recursive=keep.recursive, allow_not_found=True)
    found = []
    for info in fs.get_file_info(selector):
        if info.type != pafs.FileType.File or (start_after and info.path <= start_after):
            continue
        relative = info.path[len(root) :].lstrip("/")
        if keep.keeps(relative, info.mtime_ns or 0):
            found.append(LandingFile(info.path, info.size or 0, info.mtime_ns or 0))
    return found
