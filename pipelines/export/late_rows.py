"""Refuse an incremental export that would miss rows: rows written after its cursor with keys at or below it.

A ``since`` cursor names a Delta version and the last key exported; the next export takes keys above
it. That is complete only if every row committed after the cursor's version has a greater key. The
commits after that version say which files brought rows: their adds with ``dataChange: true``.
Compaction (``optimize.compact``), Z-ordering and other rewrites commit adds with
``dataChange: false`` (the same rows under new file names), so they are not late writes; nor is a
DELETE, whose adds hold rows copied from the files it removes. Comparing
the file lists of two snapshots cannot tell them apart: every cursor older than a compaction looked
stale, and the daily maintenance stopped every incremental export.
"""

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
from deltalake import DeltaTable

from resources.filesystem import FileSystemSettings

LOG_DIR = "_delta_log"
ROW_REMOVING_OPERATIONS = frozenset({"DELETE"})
# Commits fetched at once: one small GET each on S3, where they are latency bound.
READ_THREADS = 8


def commit_reader(table: DeltaTable, filesystem: FileSystemSettings) -> Callable[[int], bytes]:
    """A function returning the bytes of commit ``version`` of ``table`` (FileNotFoundError if gone)."""
    fs, root = filesystem.resolve(table.table_uri)

    def read(version: int) -> bytes:
        with fs.open_input_stream(f"{root}/{LOG_DIR}/{version:020d}.json") as stream:
            return stream.read()

    return read


def data_adds(commit: bytes) -> Iterator[dict[str, Any]]:
    """The add actions of one commit that brought rows (``dataChange`` true, Delta's default).

    A DELETE brings no row either: it rewrites the files it touches without the deleted rows
    (Spark and delta-rs name it in ``commitInfo``). An add carrying a deletion vector re-adds a file
    that already existed with some rows marked deleted. Rows an UPDATE or MERGE writes come in plain
    adds of new files, which are checked: their keys may be old.
    """
    actions = [orjson.loads(line) for line in commit.splitlines() if line.strip()]
    operations = {a["commitInfo"].get("operation") for a in actions if "commitInfo" in a}
    if operations & ROW_REMOVING_OPERATIONS:
        return  # the files it writes hold rows copied from the files it removes
    for action in actions:
        add = action.get("add")
        if add is not None and add.get("dataChange", True) and not add.get("deletionVector"):
            yield add


def lowest_key(add: dict[str, Any], column: str) -> int | None:
    """The least value of integer column ``column`` (its physical name) in the file, if recorded."""
    partition = (add.get("partitionValues") or {}).get(column)
    if partition is not None:
        return int(partition)
    stats = add.get("stats")
    if not stats:
        return None  # the writer kept no statistics: nothing to check against
    value = orjson.loads(stats).get("minValues", {}).get(column)
    return value if isinstance(value, int) else None


def physical_name(table: DeltaTable, column: str) -> str:
    """The name the log's statistics use for ``column`` (differs under column mapping)."""
    for field in table.schema().fields:
        if field.name == column:
            return str(field.metadata.get("delta.columnMapping.physicalName", column))
    return column


def check_append_only_since(
    table: DeltaTable,
    read_commit: Callable[[int], bytes],
    key: str,
    cursor_version: int,
    since_key: int | str,
) -> None:
    """Raise ValueError if a commit after ``cursor_version`` up to ``table``'s version added rows with
    ``key`` <= ``since_key``. ``read_commit(v)`` returns commit ``v``'s bytes (``commit_reader``)."""
    if not isinstance(since_key, int):
        return  # string statistics may be truncated: no reliable check
    column = physical_name(table, key)
    for version, commit in _commits(read_commit, cursor_version + 1, table.version()):
        if commit is None:
            raise ValueError(
                f"the Delta log after the cursor's version {cursor_version} is gone (version {version} "
                "was cleaned up): run a full export"
            )
        for add in data_adds(commit):
            low = lowest_key(add, column)
            if low is not None and low <= since_key:
                raise ValueError(
                    f"rows with {key} <= {since_key} (e.g. {low}) were written after the cursor's version "
                    f"{cursor_version} (version {version}, file {add['path']}); an incremental export "
                    "would miss them. Keys must only grow: run a full export instead"
                )


def _commits(
    read_commit: Callable[[int], bytes], first: int, last: int
) -> Iterator[tuple[int, bytes | None]]:
    """(version, bytes or None if gone) for ``first``..``last``, a few fetched at once, in order."""
    with ThreadPoolExecutor(READ_THREADS, thread_name_prefix="export-log") as pool:
        for start in range(first, last + 1, READ_THREADS):
            versions = range(start, min(start + READ_THREADS, last + 1))
            yield from zip(versions, pool.map(_read_or_none(read_commit), versions), strict=True)


def _read_or_none(read_commit: Callable[[int], bytes]) -> Callable[[int], bytes | None]:
    def read(version: int) -> bytes | None:
        try:
            return read_commit(version)
        except FileNotFoundError:
            return None

    return read
