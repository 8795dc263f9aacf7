"""Schemas: inference with real types, hints, evolution modes, and conforming a file to the table.

A file's raw Arrow table is *conformed* to the feed's target schema: known columns are cast (values
that do not fit go to ``_rescued_data``, see ``values``), columns differing only in case are rescued,
and new columns are merged, rescued, refused or ignored according to the evolution mode.
"""

import re
from collections.abc import Collection
from dataclasses import dataclass, field

import pyarrow as pa

from pipelines.ingest.values import cast_rescuing, json_text, rescue

TIMESTAMP_UTC = pa.timestamp("us", tz="UTC")
RESCUED_COLUMN = "_rescued_data"
_ISO_START = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")


class SchemaChangeError(ValueError):
    """New columns arrived while the feed's schema_evolution_mode is fail_on_new_columns."""


@dataclass
class Conformed:
    table: pa.Table
    new_columns: list[str] = field(default_factory=list)
    ignored_columns: list[str] = field(default_factory=list)
    rescued_rows: int = 0


def normalise_type(arrow_type: pa.DataType) -> pa.DataType:
    """The type a column of ``arrow_type`` gets in Delta: one Delta can store and Spark reads back.

    Timestamps in µs UTC; no untyped (all-null) values at any depth; no unsigned, half-float, time or
    duration types (delta-rs refuses them, some only once rows are written); nested fields nullable.
    A struct Delta cannot represent at all (no fields, or fields differing only in case) is kept as
    JSON text rather than blocking the feed.
    """
    t = pa.types
    if t.is_timestamp(arrow_type):
        return TIMESTAMP_UTC
    if t.is_dictionary(arrow_type):
        return normalise_type(arrow_type.value_type)
    if (
        t.is_null(arrow_type)
        or t.is_large_string(arrow_type)
        or t.is_string_view(arrow_type)
        or t.is_time(arrow_type)
        or t.is_duration(arrow_type)
        or t.is_interval(arrow_type)
        or t.is_decimal256(arrow_type)
    ):
        return pa.string()
    if t.is_unsigned_integer(arrow_type):
        return pa.int64()  # uint64 values beyond int64 are rescued by cast_rescuing
    if t.is_float16(arrow_type):
        return pa.float32()
    if t.is_date64(arrow_type):
        return pa.date32()
    if t.is_large_binary(arrow_type) or t.is_fixed_size_binary(arrow_type) or t.is_binary_view(arrow_type):
        return pa.binary()
    if t.is_struct(arrow_type):
        lowered = [f.name.lower() for f in arrow_type]
        if not lowered or len(set(lowered)) < len(lowered):
            return pa.string()
        return pa.struct([pa.field(f.name, normalise_type(f.type)) for f in arrow_type])
    if t.is_list(arrow_type) or t.is_large_list(arrow_type) or t.is_fixed_size_list(arrow_type):
        # The element field keeps its name: Delta's lists say "element", Arrow's readers "item".
        element = arrow_type.value_field
        return pa.list_(pa.field(element.name, normalise_type(element.type)))
    if t.is_map(arrow_type):
        return pa.map_(normalise_type(arrow_type.key_type), normalise_type(arrow_type.item_type))
    return arrow_type


def has_floating(arrow_type: pa.DataType | pa.Schema) -> bool:
    """Whether a floating-point type occurs anywhere in ``arrow_type`` (where a reader may round)."""
    if isinstance(arrow_type, pa.Schema):
        return any(has_floating(f.type) for f in arrow_type)
    if pa.types.is_floating(arrow_type):
        return True
    return any(has_floating(arrow_type.field(i).type) for i in range(arrow_type.num_fields))


def _looks_like_timestamps(column: pa.ChunkedArray) -> bool:
    """Whether a string column holds ISO 8601 timestamps, judged on its first values (a bounded sample)."""
    values = column.drop_null().slice(0, 64)
    if len(values) == 0 or not _ISO_START.match(values[0].as_py()):
        return False
    try:
        values.cast(TIMESTAMP_UTC)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return False
    return True


def infer_schema(samples: list[pa.Table], hints: pa.Schema, reserved: Collection[str] = ()) -> pa.Schema:
    """One schema for a sample of raw tables: widest numeric type wins, ISO strings become timestamps,
    conflicting types become strings, and hints override the type of every hinted column that occurs.

    Delta refuses names differing only in case, so the first spelling seen is the column and later
    spellings are left out (``conform`` rescues their values); so are names of ``reserved`` columns.
    Hinted columns no sample has are not added: a hint types a column, it does not create one.
    """
    types: dict[str, list[pa.DataType]] = {}
    timestamp_like: dict[str, bool] = {}
    spelling: dict[str, str] = {name.lower(): "" for name in reserved}
    for table in samples:
        for i, column_field in enumerate(table.schema):
            if spelling.setdefault(column_field.name.lower(), column_field.name) != column_field.name:
                continue
            column_type = column_field.type
            if pa.types.is_string(column_type) and timestamp_like.get(column_field.name, True):
                looks = _looks_like_timestamps(table.column(i))
                timestamp_like[column_field.name] = timestamp_like.get(column_field.name, True) and looks
            types.setdefault(column_field.name, []).append(column_type)
    result = []
    for name, seen in types.items():
        chosen = _widest([normalise_type(t) for t in seen if not pa.types.is_null(t)] or [pa.string()])
        if (
            chosen == pa.string()
            and timestamp_like.get(name)
            and all(pa.types.is_string(t) or pa.types.is_timestamp(t) or pa.types.is_null(t) for t in seen)
        ):
            chosen = TIMESTAMP_UTC
        result.append(pa.field(name, chosen))
    schema = pa.schema(result)
    for hint in hints:
        index = schema.get_field_index(hint.name)
        if index >= 0:
            schema = schema.set(index, hint)
    return schema


def _widest(seen: list[pa.DataType]) -> pa.DataType:
    distinct = list(dict.fromkeys(seen))
    if len(distinct) == 1:
        return distinct[0]
    if all(pa.types.is_integer(t) for t in distinct):
        return pa.int64()
    if all(pa.types.is_integer(t) or pa.types.is_floating(t) for t in distinct):
        return pa.float64()
    return pa.string()


def conform(
    raw: pa.Table,
    target: pa.Schema,
    mode: str,
    source_file: str,
    rescued: list[dict | None] | None = None,
    hints: pa.Schema | None = None,
    reserved: Collection[str] = (),
) -> Conformed:
    """``raw`` shaped as ``target`` (+ new columns in add_new_columns mode) with ``_rescued_data``.

    A hinted column ``target`` does not have yet is added with its hinted type when it occurs, in
    every mode: the hint declared it. ``reserved`` names (lakerelay's own columns) are rescued like
    case variants.
    """
    rescued = rescued if rescued is not None else [None] * raw.num_rows
    result = Conformed(raw)
    by_lower = {name.lower(): name for name in (*target.names, *reserved)}
    hinted = {h.name: h.type for h in hints} if hints is not None else {}
    columns: dict[str, pa.Array | pa.ChunkedArray] = {}
    new_fields: list[pa.Field] = []
    for index, raw_field in enumerate(raw.schema):
        name, column = raw_field.name, raw.column(index)
        if name in target.names and name not in columns:
            columns[name] = cast_rescuing(column, target.field(name).type, rescued, name)
        elif name.lower() in by_lower or (mode == "rescue" and name not in hinted):
            # A case mismatch ("User" for "user", also against a column added by this very file, and
            # a repeated Parquet column) is never merged silently: Delta would refuse it; it is rescued.
            for row, value in enumerate(column.to_pylist()):
                if value is not None:
                    rescue(rescued, row, name, value)
        elif name in hinted or mode == "add_new_columns":
            column_type = hinted[name] if name in hinted else normalise_type(column.type)
            columns[name] = cast_rescuing(column, column_type, rescued, name)
            new_fields.append(pa.field(name, column_type))
            by_lower[name.lower()] = name
        elif mode == "fail_on_new_columns":
            if column.null_count < len(column):
                result.new_columns.append(name)
        else:  # none: ignored, but counted so that it is not silent
            result.ignored_columns.append(name)
    if result.new_columns:
        raise SchemaChangeError(
            f"{source_file}: new column(s) {sorted(result.new_columns)} are not in the table's schema and "
            "schema_evolution_mode is fail_on_new_columns; add them to schema_hints, or set "
            "schema_evolution_mode to add_new_columns or rescue, then run again"
        )
    result.rescued_rows = sum(1 for r in rescued if r is not None)
    result.table = _conformed_table([*target, *new_fields], columns, rescued, source_file)
    result.new_columns = [f.name for f in new_fields]
    return result


def _conformed_table(
    fields: list[pa.Field],
    columns: dict[str, pa.Array | pa.ChunkedArray],
    rescued: list[dict | None],
    source_file: str,
) -> pa.Table:
    """``fields`` in order (a column the file lacks is all nulls), then ``_rescued_data`` as JSON text."""
    rows = len(rescued)
    arrays, out_fields = [], []
    for target_field in fields:
        arrays.append(columns.get(target_field.name, pa.nulls(rows, target_field.type)))
        out_fields.append(pa.field(target_field.name, target_field.type))
    if any(r is not None for r in rescued):
        rescued_json = [None if r is None else json_text({**r, "_file_path": source_file}) for r in rescued]
        arrays.append(pa.array(rescued_json, pa.string()))
    else:
        arrays.append(pa.nulls(rows, pa.string()))
    out_fields.append(pa.field(RESCUED_COLUMN, pa.string()))
    return pa.Table.from_arrays(arrays, schema=pa.schema(out_fields))


def schema_to_json(schema: pa.Schema) -> list[dict[str, str]]:
    return [{"name": f.name, "type": str(f.type)} for f in schema]
