"""Which data files hold the records a sink has not settled yet.

Every ingested row carries ``_batch_id``, and each Delta commit of the ingest records the batch number
as an application transaction. A sink's progress is a batch number, so the new records are exactly
``progress < _batch_id <= batch at the pinned version``: a filter that file statistics prune, and that
stays right after compaction rewrites files (a diff of file lists would post compacted rows twice).
"""

from dataclasses import dataclass

import pyarrow as pa

from resources.arrow import pc


@dataclass(frozen=True)
class PostPlan:
    table_uri: str
    delta_version: int
    batch_from: int  # exclusive
    batch_to: int  # inclusive
    files: tuple[str, ...]
    schema: pa.Schema
    file_rows: tuple[int | None, ...] = ()  # rows per file from the Delta log (None = unknown)

    @property
    def empty(self) -> bool:
        return self.batch_to <= self.batch_from or not self.files


@dataclass(frozen=True)
class ReadUnit:
    """A slice of one data file, ``[row_start, row_stop)``; one Spark task reads one or more units."""

    file_index: int
    row_start: int
    row_stop: int | None  # None = to the end of the file


def split_units(
    file_rows: tuple[int | None, ...], max_tasks: int, min_rows_per_unit: int = 5_000
) -> list[ReadUnit]:
    """Cut files into row ranges so up to ``max_tasks`` tasks share the work, without a shuffle.

    An ingest batch is usually one file: reading it as a whole would post from a single task. Each
    unit holds about ``total / max_tasks`` rows (never fewer than ``min_rows_per_unit``, where the
    per-task start-up would cost more than it saves).
    """
    known = [n for n in file_rows if n is not None]
    total = sum(known)
    unit_rows = max(min_rows_per_unit, -(-total // max(1, max_tasks))) if total else 0
    return cut_files(file_rows, unit_rows)


def cut_files(file_rows: tuple[int | None, ...], unit_rows: int) -> list[ReadUnit]:
    """Each file cut into equal row ranges of at most ``unit_rows`` (0: whole files), in file order.

    Deterministic: the same files and ``unit_rows`` give the same units, which is what lets a run
    resume another's settled groups. A file of unknown size is one unit.
    """
    units = []
    for index, rows in enumerate(file_rows):
        if rows is None or unit_rows <= 0 or rows <= unit_rows:
            units.append(ReadUnit(index, 0, None))
            continue
        pieces = -(-rows // unit_rows)
        step = -(-rows // pieces)
        units.extend(
            ReadUnit(index, start, None if start + step >= rows else start + step)
            for start in range(0, rows, step)
        )
    return units


def cut_groups(file_rows: tuple[int | None, ...], group_rows: int) -> list[tuple[ReadUnit, ...]]:
    """The plan's settled groups: row ranges of at most ``group_rows``, small files packed together.

    Files are cut as ``cut_files`` does, then consecutive pieces are packed while their rows add up
    to at most ``group_rows`` (many small files from frequent ingests make few groups, not one Spark
    job each). A file of unknown size is a group of its own. Deterministic, like ``cut_files``.
    """
    groups: list[tuple[ReadUnit, ...]] = []
    current: list[ReadUnit] = []
    rows_in_current = 0
    for unit in cut_files(file_rows, group_rows):
        total = file_rows[unit.file_index]
        if total is None:
            rows = group_rows
        else:
            stop = total if unit.row_stop is None else unit.row_stop
            rows = stop - unit.row_start
        if current and rows_in_current + rows > group_rows:
            groups.append(tuple(current))
            current, rows_in_current = [], 0
        current.append(unit)
        rows_in_current += rows
    if current:
        groups.append(tuple(current))
    return groups


def group_rows_for(plan: "PostPlan", slots: int, max_group_records: int, min_rows: int = 5_000) -> int:
    """Rows per settled group: at most ``max_group_records``, and small enough that ``slots`` share a small plan.

    Groups are the unit of progress (a crash re-sends at most the groups in flight) and of Spark
    work (one task each), so a plan smaller than ``slots`` full groups is cut into ``slots`` groups
    of at least ``min_rows`` (or ``max_group_records`` when that is smaller).
    """
    total = sum(n for n in plan.file_rows if n is not None)
    spread = max(min_rows, -(-total // max(1, slots)))
    return max(1, min(max_group_records, spread))


def plan_post(
    table_uri: str,
    storage_options: dict[str, str],
    app_id: str,
    settled_batch: int,
    version: int | None = None,
    batch_to: int | None = None,
) -> PostPlan:
    """The files holding batches ``(settled_batch, last]`` at the table's latest version.

    With ``version`` and ``batch_to``: the plan as it was at that version, up to that batch (a run
    resuming another's partly settled plan reads exactly the files and row ranges it cut into groups).
    Files are in path order, so the same version always gives the same plan.
    """
    # Imported here: executors import this module for ReadUnit and have no deltalake.
    from deltalake import DeltaTable

    table = DeltaTable(table_uri, storage_options=storage_options, version=version)
    version = table.version()
    last_batch = (table.transaction_version(app_id) or 0) if batch_to is None else batch_to
    schema = pa.schema(table.schema().to_arrow())
    if last_batch <= settled_batch:
        return PostPlan(table_uri, version, settled_batch, last_batch, (), schema)
    actions = pa.table(table.get_add_actions(flatten=True))
    keep = pc.scalar(True)
    if "min._batch_id" in actions.column_names:
        # Files without statistics (null) are kept: reading them costs time, skipping them loses data.
        low = pc.fill_null(pc.less_equal(actions["min._batch_id"], last_batch), True)
        high = pc.fill_null(pc.greater(actions["max._batch_id"], settled_batch), True)
        keep = pc.and_(low, high)
    kept = actions.filter(keep) if actions.num_rows else actions
    if kept.num_rows:
        kept = kept.sort_by("path")
    paths = kept["path"].to_pylist() if kept.num_rows else []
    rows = kept["num_records"].to_pylist() if kept.num_rows and "num_records" in kept.column_names else []
    files = tuple(p if "://" in p or p.startswith("/") else f"{table_uri.rstrip('/')}/{p}" for p in paths)
    file_rows = tuple(rows) if len(rows) == len(files) else (None,) * len(files)
    return PostPlan(table_uri, version, settled_batch, last_batch, files, schema, file_rows)
