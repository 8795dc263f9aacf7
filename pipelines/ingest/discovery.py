"""Listing the landing zone: full or incremental (only names after a cursor), locally and on S3.

Incremental listing costs what the *new* files cost: on S3 ``list_objects_v2(StartAfter=cursor)``
returns only later keys; locally, directories that sort wholly before the cursor are not entered and
only files after it are stat'ed. Names that arrive out of lexical order are found by the periodic
full listing (``backfill_interval``).
"""

import fnmatch
import os
from dataclasses import dataclass

import pyarrow.fs as pafs

from resources.lake import LakeResource


@dataclass(frozen=True, order=True)
class LandingFile:
    """A file in the landing zone; (path, size, mtime) is its identity for exactly-once ingestion."""

    path: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class ListingFilter:
    recursive: bool = True
    path_glob: str = ""
    modified_after_ns: int = 0

    def keeps(self, relative: str, mtime_ns: int) -> bool:
        if any(part.startswith((".", "_")) for part in relative.split("/")):
            return False
        if not self.recursive and "/" in relative:
            return False
        if self.path_glob and not fnmatch.fnmatchcase(relative, self.path_glob):
            return False
        return mtime_ns > self.modified_after_ns


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
    found.sort()
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
            stat = entry.stat()
            if keep.keeps(relative, stat.st_mtime_ns):
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
