"""Read one pinned Delta version as a stream of record batches, in key order when asked, in bounded memory.

Without an ordering key: one DataFusion stream over the snapshot (flat memory, storage order).

With an integer ordering key the read is keyset pagination over the table's own file statistics:
files are grouped into disjoint key ranges (files whose [min, max] overlap share a group) and each
range is one ``WHERE key BETWEEN lo AND hi ORDER BY key`` query. Ranges come in key order, so the
output is globally sorted while only one range is ever sorted in memory (about one ingest commit for
an append-only table). String keys have unreliable (truncated) statistics, so they fall back to one
sorted query whose memory grows with the table; prefer an integer key.
"""

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq
from deltalake import DeltaTable, QueryBuilder
from deltalake.exceptions import DeltaError

from pipelines.export.spec import ExportSpec
from resources.arrow import conform
from resources.filesystem import FileSystemSettings

log = logging.getLogger(__name__)

# One DataFusion partition: each partition holds a whole row group's column chunks while it decodes
# it (~25 MB for a 500k-row group here), and the export is paced by encoding and deflate, not by the
# scan (8M rows/s on one partition). Two partitions cost ~50 MB of peak RSS for no speed.
READ_PARTITIONS = 1
READ_BUFFER_BYTES = 1 << 20  # pyarrow's read size for files read directly (ReadPlan.files)


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def sql_literal(value: int | str) -> str:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"ordering keys must be integers or strings, not {type(value).__name__}")
    return str(value) if isinstance(value, int) else "'" + value.replace("'", "''") + "'"


@dataclass(frozen=True)
class ReadPlan:
    """The SQL queries that together stream the export, in output order.

    ``files``: set when the export is a plain scan (no order, no filter) of a table whose data files
    hold exactly its rows (no deletion vectors, no column mapping, no partition columns). They are
    then read one by one with pyarrow, page by page, instead of through DataFusion, which holds a
    whole row group's column chunks while it decodes one (12M rows in 500k-row groups: +151 MB over
    the imports for DataFusion on one partition, +79 MB for pyarrow). pyarrow's 5-6M rows/s on one
    thread is ten times what encoding and deflate take, so the export is no slower.
    """

    queries: list[str]
    schema: pa.Schema
    files: tuple[str, ...] | None = None


def _output_schema(table: DeltaTable, spec: ExportSpec) -> pa.Schema:
    schema = pa.schema(table.schema().to_arrow())
    missing = [
        c for c in (*spec.columns, *([spec.order_by] if spec.order_by else [])) if c not in schema.names
    ]
    if missing:
        raise ValueError(
            f"export {spec.dataset!r}: column(s) {', '.join(missing)} not in table {spec.table!r} "
            f"(columns: {', '.join(schema.names)})"
        )
    if spec.columns:
        schema = pa.schema([schema.field(c) for c in spec.columns])
    if spec.order_by:
        key_type = schema.field(spec.order_by).type
        if not (
            pa.types.is_integer(key_type)
            or pa.types.is_string(key_type)
            or pa.types.is_large_string(key_type)
        ):
            raise ValueError(f"order_by {spec.order_by!r} is {key_type}; use an integer or string column")
    return schema


def _key_ranges(table: DeltaTable, key: str) -> list[tuple[int, int]] | None:
    """Disjoint [lo, hi] key ranges covering every file, in order; None when statistics are missing."""
    actions = pa.table(table.get_add_actions(flatten=True))
    needed = [f"min.{key}", f"max.{key}", f"null_count.{key}"]
    if actions.num_rows == 0:
        return []
    if any(name not in actions.column_names for name in needed):
        return None
    files = [
        (f[needed[0]], f[needed[1]], f[needed[2]], f["num_records"])
        for f in actions.select([*needed, "num_records"]).to_pylist()
    ]
    if any(lo is None or hi is None for lo, hi, _, rows in files if rows):
        return None
    nulls = sum(n or 0 for *_, n, _ in files)
    if nulls:
        raise ValueError(
            f"ordering key {key!r} has {nulls} null value(s): rows without a key cannot be ordered or "
            "resumed; choose a non-null key or export without order_by"
        )
    ranges: list[list[int]] = []
    for lo, hi, _, _ in sorted((f for f in files if f[3]), key=lambda f: f[0]):
        if ranges and lo <= ranges[-1][1]:
            ranges[-1][1] = max(ranges[-1][1], hi)
        else:
            ranges.append([lo, hi])
    return [(lo, hi) for lo, hi in ranges]


def plan_read(table: DeltaTable, spec: ExportSpec, since_key: int | str | None = None) -> ReadPlan:
    """Queries over table ``t`` for ``spec``, keeping only keys greater than ``since_key`` if given."""
    schema = _output_schema(table, spec)
    select = "SELECT " + ", ".join(quote_ident(n) for n in schema.names) + " FROM t"
    filters = [f"({spec.where})"] if spec.where.strip() else []
    if not spec.order_by:
        files = tuple(table.file_uris()) if not filters and _rows_are_the_files(table) else None
        return ReadPlan([select + (" WHERE " + " AND ".join(filters) if filters else "")], schema, files)
    key = quote_ident(spec.order_by)
    if since_key is not None:
        filters.append(f"{key} > {sql_literal(since_key)}")
    order = f" ORDER BY {key}"
    ranges = (
        _key_ranges(table, spec.order_by) if pa.types.is_integer(schema.field(spec.order_by).type) else None
    )
    if ranges is None:
        log.warning(
            "export %s: no usable statistics for %s; sorting the whole table at once", spec.dataset, key
        )
        where = " WHERE " + " AND ".join(filters) if filters else ""
        return ReadPlan([select + where + order], schema)
    queries = []
    for lo, hi in ranges:
        if since_key is not None and hi <= int(since_key):  # an integer key has integer cursors
            continue  # every key of this range was exported before
        bounds = [*filters, f"{key} >= {lo}", f"{key} <= {hi}"]
        queries.append(select + " WHERE " + " AND ".join(bounds) + order)
    return ReadPlan(queries, schema)


def _views_kept(schema: pa.Schema, read: pa.Schema) -> pa.Schema:
    """``schema`` where DataFusion hands over string/binary views of its string/binary columns."""
    fields = []
    for want, got in zip(schema, read, strict=True):
        same_kind = (
            pa.types.is_string_view(got.type)
            and (pa.types.is_string(want.type) or pa.types.is_large_string(want.type))
        ) or (
            pa.types.is_binary_view(got.type)
            and (pa.types.is_binary(want.type) or pa.types.is_large_binary(want.type))
        )
        fields.append(want.with_type(got.type) if same_kind and want.name == got.name else want)
    return pa.schema(fields, metadata=schema.metadata)


def _rows_are_the_files(table: DeltaTable) -> bool:
    """True when reading the snapshot's data files as they are gives exactly its rows and columns."""
    metadata = table.metadata()
    features = set(table.protocol().reader_features or ())
    return (
        not metadata.partition_columns  # partition values live in the log, not in the files
        and "deletionVectors" not in features  # deleted rows are still in the files
        and "columnMapping" not in features  # files name columns by id or physical name
        and metadata.configuration.get("delta.columnMapping.mode", "none") == "none"
    )


def read_batches(
    table: DeltaTable,
    plan: ReadPlan,
    batch_rows: int,
    keep_views: bool = False,
    filesystem: FileSystemSettings | None = None,
) -> Iterator[pa.RecordBatch]:
    """Stream every query of ``plan`` against the pinned snapshot (DataFusion honours deletion vectors).

    ``keep_views``: leave string and binary views as DataFusion gives them instead of casting them to
    the plan's plain types. Encoders that hand batches to polars (which stores strings as views)
    want that: the cast was a copy of every string, ~8 MB of peak RSS and CPU for nothing.
    ``filesystem`` reaches the data files of a plan with ``files`` (default: local or the AWS
    environment).
    """
    if plan.files is not None:
        yield from _read_files(plan.files, plan.schema, batch_rows, filesystem or FileSystemSettings())
        return
    builder = QueryBuilder(
        {
            "datafusion.execution.batch_size": str(batch_rows),
            "datafusion.execution.target_partitions": str(READ_PARTITIONS),
        }
    ).register("t", table)
    for sql in plan.queries:
        try:
            stream = builder.execute(sql)
        # DataFusion's refusals (a spec's columns or where that do not fit the table) and storage
        # errors, with the query that met them; any other error is lakerelay's and stays as it is.
        except (DeltaError, OSError) as exc:
            raise ValueError(f"export query failed: {exc}\n  query: {sql}") from exc
        reader = pa.RecordBatchReader.from_stream(stream)
        target = _views_kept(plan.schema, reader.schema) if keep_views else plan.schema
        for batch in reader:
            if batch.num_rows:
                yield batch.cast(target) if batch.schema != target else batch


def _read_files(
    files: tuple[str, ...], schema: pa.Schema, batch_rows: int, filesystem: FileSystemSettings
) -> Iterator[pa.RecordBatch]:
    """Each data file in turn, ``batch_rows`` at a time, read in 1 MiB pieces rather than whole chunks."""
    for uri in files:
        fs, path = filesystem.resolve(uri)
        with fs.open_input_file(path) as source:
            parquet = pq.ParquetFile(source, pre_buffer=False, buffer_size=READ_BUFFER_BYTES)
            present = [name for name in schema.names if name in parquet.schema_arrow.names]
            for batch in parquet.iter_batches(batch_size=batch_rows, columns=present, use_threads=False):
                if batch.num_rows:
                    yield conform(batch, schema)
