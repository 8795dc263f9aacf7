"""When Delta refuses a batch: finding the files whose rows it refuses on their own, and taking them
out of the batch so that the rest lands (one poison file never blocks a feed)."""

import tempfile

import pyarrow as pa
from deltalake import write_deltalake

from pipelines.delta_once import refused_by_delta
from pipelines.ingest.reader import RESERVED_COLUMNS, Quarantined, ReadResult
from resources.arrow import pc


def unwritable_files(result: ReadResult, table_schema: pa.Schema | None) -> list[Quarantined]:
    """The files whose rows a Delta write refuses on their own, each tried in a scratch table that
    starts with the real table's schema (so schema merging is tried too). Empty when the scratch
    writes themselves do not work: then the failure says nothing about the files."""
    refused = []
    with tempfile.TemporaryDirectory(prefix="lakerelay-trial-") as scratch:
        try:
            write_deltalake(f"{scratch}/probe", pa.table({"probe": [1]}))
        except Exception:  # a boundary: whatever fails here, the caller raises Delta's refusal of the batch
            return []
        for number, path in enumerate(result.rows_per_file):
            # Without the new columns this file has no value in: a column another file brought (in a
            # first batch, every file has every inferred column) must not be blamed on this one.
            rows = without_empty_new_columns(
                result.table.filter(pc.field("_source_file") == path), table_schema
            )
            uri = f"{scratch}/{number}"
            try:
                if table_schema is not None:
                    write_deltalake(uri, table_schema.empty_table())
                write_deltalake(uri, rows, mode="append", schema_mode="merge")
            except Exception as exc:
                if not refused_by_delta(exc):
                    raise  # not Delta refusing the rows: a bug, not this file
                refused.append(Quarantined(path, f"Delta refused its rows ({type(exc).__name__}: {exc})"))
    if len(refused) > 1 and len(refused) == len(result.rows_per_file):
        return []  # every file of several: the table (or Delta) is the problem, not the files
    return refused


def without_empty_new_columns(table: pa.Table, table_schema: pa.Schema | None) -> pa.Table:
    """``table`` without the data columns it would add to the Delta table that hold only nulls."""
    existing = {*(table_schema.names if table_schema is not None else ()), *RESERVED_COLUMNS}
    empty = [
        name
        for name in table.column_names
        if name not in existing and table.column(name).null_count == table.num_rows
    ]
    return table.drop_columns(empty)


def drop_files(result: ReadResult, files: list[Quarantined], table_schema: pa.Schema | None) -> None:
    """Take ``files``' rows out of the batch, and the new columns left without a value (the ones
    that made Delta refuse the batch, when only those files had them)."""
    paths = {q.path for q in files}
    kept = result.table.filter(pc.invert(pc.is_in(result.table["_source_file"], pa.array(sorted(paths)))))
    result.table = without_empty_new_columns(kept, table_schema)
    dropped = set(kept.column_names) - set(result.table.column_names)
    result.new_columns = {name: f for name, f in result.new_columns.items() if name not in dropped}
    if result.schema is not None:
        result.schema = pa.schema([f for f in result.schema if f.name not in dropped])
    for path in paths:
        result.rows_per_file.pop(path, None)
    result.quarantined.extend(files)
