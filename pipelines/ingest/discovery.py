"""Listing the landing zone."""

from dataclasses import dataclass

import pyarrow.fs as pafs


@dataclass(frozen=True, order=True)
class LandingFile:
    """A file in the landing zone; (path, size, mtime) is its identity for exactly-once ingestion."""

    path: str
    size: int
    mtime_ns: int


def list_landing_files(fs: pafs.FileSystem, root: str) -> list[LandingFile]:
    """Every visible file below ``root``, sorted by path.

    Names starting with ``.`` or ``_`` are skipped, as Spark's file source does, so writers can stage
    files under a temporary name and rename them into place atomically.
    """
    selector = pafs.FileSelector(root, recursive=True, allow_not_found=True)
    found = []
    for info in fs.get_file_info(selector):
        if info.type != pafs.FileType.File:
            continue
        relative = info.path[len(root) :].lstrip("/")
        if any(part.startswith((".", "_")) for part in relative.split("/")):
            continue
        found.append(LandingFile(info.path, info.size or 0, info.mtime_ns or 0))
    found.sort()
    return found
