"""Schemas: inference with real types, hints, evolution modes, and rescuing what does not fit.

A file's raw Arrow table is *conformed* to the feed's target schema: known columns are cast (values
that do not fit go to ``_rescued_data``), columns differing only in case are rescued, and new columns
are merged, rescued, refused or ignored according to the evolution mode.
"""

import datetime as dt
import re
from dataclasses import dataclass, field

import orjson
import pyarrow as pa
import pyarrow.compute as pc

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
    """Types Delta stores well: timestamps in µs UTC, no untyped (all-null) columns."""
    if pa.types.is_timestamp(arrow_type):
        return TIMESTAMP_UTC
    if pa.types.is_null(arrow_type):
        return pa.string()
    if pa.types.is_large_string(arrow_type) or pa.types.is_string_view(arrow_type):
        return pa.string()
    return arrow_type


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


def infer_schema(samples: list[pa.Table], hints: pa.Schema) -> pa.Schema:
    """One schema for a sample of raw tables: widest numeric type wins, ISO strings become timestamps,
    conflicting types become strings, and hints override everything."""
    types: dict[str, list[pa.DataType]] = {}
    timestamp_like: dict[str, bool] = {}
    for table in samples:
        for i, column_field in enumerate(table.schema):
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
        schema = schema.set(index, hint) if index >= 0 else schema.append(hint)
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


# -- values that do not fit -----------------------------------------------------------------------
_MISSING = object()


def coerce_value(value: object, target: pa.DataType, from_text: bool = False) -> object:
    """``value`` as a Python value of ``target``, or ``_MISSING`` when it does not fit.

    ``from_text`` is for CSV, where every value arrives as text and "12" is a fine integer.
    """
    if value is None:
        return None
    try:
        if pa.types.is_string(target):
            return value if isinstance(value, str) else orjson.dumps(value).decode()
        if isinstance(value, str) and from_text and not pa.types.is_timestamp(target):
            value = _parse_text(value, target)
            if value is _MISSING:
                return _MISSING
        if pa.types.is_boolean(target):
            return value if isinstance(value, bool) else _MISSING
        if pa.types.is_integer(target):
            if isinstance(value, bool):
                return _MISSING
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            return value if isinstance(value, int) and pa.array([value], target) is not None else _MISSING
        if pa.types.is_floating(target):
            return (
                float(value) if isinstance(value, int | float) and not isinstance(value, bool) else _MISSING
            )
        if pa.types.is_timestamp(target):
            if not isinstance(value, str):
                return _MISSING
            moment = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
            return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)
        if pa.types.is_date(target):
            return dt.date.fromisoformat(value) if isinstance(value, str) else _MISSING
        pa.array([value], target)
        return value
    except (ValueError, TypeError, OverflowError, pa.ArrowException):
        return _MISSING


def _parse_text(text: str, target: pa.DataType) -> object:
    stripped = text.strip()
    if pa.types.is_boolean(target):
        return {"true": True, "false": False}.get(stripped.lower(), _MISSING)
    if pa.types.is_integer(target):
        try:
            return int(stripped)
        except ValueError:
            return _MISSING
    if pa.types.is_floating(target):
        try:
            return float(stripped)
        except ValueError:
            return _MISSING
    return text


def cast_rescuing(
    column: pa.ChunkedArray, target: pa.DataType, rescued: list[dict | None], name: str
) -> pa.Array | pa.ChunkedArray:
    """Cast ``column`` to ``target``; a value that does not fit becomes null and goes to ``rescued``."""
    if column.type == target:
        return column
    try:
        return pc.cast(column, target, safe=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        pass
    from_text = pa.types.is_string(column.type) or pa.types.is_large_string(column.type)
    values = []
    for row, value in enumerate(column.to_pylist()):
        fitted = coerce_value(value, target, from_text=from_text)
        if fitted is _MISSING:
            _rescue(rescued, row, name, value)
            fitted = None
        values.append(fitted)
    return pa.array(values, target)


def _rescue(rescued: list[dict | None], row: int, name: str, value: object) -> None:
    if rescued[row] is None:
        rescued[row] = {}
    rescued[row][name] = value


def conform(
    raw: pa.Table,
    target: pa.Schema,
    mode: str,
    source_file: str,
    rescued: list[dict | None] | None = None,
) -> Conformed:
    """``raw`` shaped as ``target`` (+ new columns in add_new_columns mode) with ``_rescued_data``."""
    rescued = rescued if rescued is not None else [None] * raw.num_rows
    rows = len(rescued)
    result = Conformed(raw)
    by_lower = {f.name.lower(): f.name for f in target}
    columns: dict[str, pa.Array | pa.ChunkedArray] = {}
    new_fields: list[pa.Field] = []
    for index, raw_field in enumerate(raw.schema):
        name, column = raw_field.name, raw.column(index)
        if name in target.names:
            columns[name] = cast_rescuing(column, target.field(name).type, rescued, name)
        elif name.lower() in by_lower or mode == "rescue":
            # A case mismatch ("User" for "user") is never merged silently: it is rescued.
            for row, value in enumerate(column.to_pylist()):
                if value is not None:
                    _rescue(rescued, row, name, value)
        elif mode == "add_new_columns":
            column_type = normalise_type(column.type)
            columns[name] = cast_rescuing(column, column_type, rescued, name)
            new_fields.append(pa.field(name, column_type))
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
    arrays, out_fields = [], []
    for target_field in [*target, *new_fields]:
        arrays.append(columns.get(target_field.name, pa.nulls(rows, target_field.type)))
        out_fields.append(pa.field(target_field.name, target_field.type))
    result.rescued_rows = sum(1 for r in rescued if r is not None)
    if result.rescued_rows:
        rescued_json = [
            None if r is None else orjson.dumps({**r, "_file_path": source_file}, default=str).decode()
            for r in rescued
        ]
        arrays.append(pa.array(rescued_json, pa.string()))
    else:
        arrays.append(pa.nulls(rows, pa.string()))
    out_fields.append(pa.field(RESCUED_COLUMN, pa.string()))
    result.table = pa.Table.from_arrays(arrays, schema=pa.schema(out_fields))
    result.new_columns = [f.name for f in new_fields]
    return result


def schema_to_json(schema: pa.Schema) -> list[dict[str, str]]:
    return [{"name": f.name, "type": str(f.type)} for f in schema]
