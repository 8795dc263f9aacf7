"""Values that do not fit: whether a column type holds a value exactly, and rescuing it when not.

A value is converted only when nothing is lost (no clamping, rounding, truncation or dropped struct
field); otherwise it becomes null in its column and goes to ``_rescued_data`` as it was read.
"""

import datetime as dt
import json
import re
import struct

import orjson
import pyarrow as pa

from resources.arrow import pc

INTEGER_TEXT = re.compile(r"[+-]?[0-9]+")
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
EXACT_DOUBLE_LIMIT = 1 << 53  # every integer up to this magnitude is exactly a double
# What coerce_value returns for a value its target cannot hold (None is a value: null); private to
# this module, whose public functions turn it into a null plus a rescued value.
_MISSING = object()


def coerce_value(value: object, target: pa.DataType, from_text: bool = False) -> object:
    """``value`` as a Python value of ``target``, or ``_MISSING`` when ``target`` cannot hold it exactly.

    Exactly: an integer beyond the column's range is refused, not clamped; one a double cannot
    represent is not rounded; an object with a field its struct type lacks is not trimmed, and 1.5 is
    not truncated into a nested integer (pyarrow does both silently). ``from_text`` is for CSV, where
    every value arrives as text and "12" is a fine integer.
    """
    if value is None:
        return None
    try:
        if pa.types.is_string(target):
            return value if isinstance(value, str) else json_text(value)
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
            if not isinstance(value, int):
                return _MISSING
            bits = target.bit_width
            low, high = (
                (-(1 << (bits - 1)), (1 << (bits - 1)) - 1)
                if pa.types.is_signed_integer(target)
                else (0, (1 << bits) - 1)
            )
            return value if low <= value <= high else _MISSING
        if pa.types.is_floating(target):
            if isinstance(value, bool) or not isinstance(value, int | float):
                return _MISSING
            return _exact_float(value, target) if isinstance(value, int) else value
        if pa.types.is_timestamp(target):
            if not isinstance(value, str):
                return _MISSING
            moment = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
            return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)
        if pa.types.is_date(target):
            return dt.date.fromisoformat(value) if isinstance(value, str) else _MISSING
        if pa.types.is_struct(target):
            return _coerce_struct(value, target)
        if pa.types.is_list(target) or pa.types.is_large_list(target):
            if not isinstance(value, list):
                return _MISSING
            items = [coerce_value(item, target.value_type) for item in value]
            return _MISSING if any(item is _MISSING for item in items) else items
        pa.array([value], target)
        return value
    except (ValueError, TypeError, OverflowError, pa.ArrowException):
        return _MISSING


def _coerce_struct(value: object, target: pa.StructType) -> object:
    if not isinstance(value, dict) or any(target.get_field_index(key) < 0 for key in value):
        return _MISSING
    fitted = {}
    for struct_field in target:
        item = coerce_value(value.get(struct_field.name), struct_field.type)
        if item is _MISSING:
            return _MISSING
        fitted[struct_field.name] = item
    return fitted


def _exact_float(value: int, target: pa.DataType) -> object:
    """``value`` as a float of ``target`` when that loses no digit (2**64 fits a double, 2**64 + 1 not)."""
    as_float = float(value)  # OverflowError beyond 1e308: the caller's _MISSING
    if pa.types.is_float32(target):
        as_float = struct.unpack("f", struct.pack("f", as_float))[0]
    return as_float if as_float == value else _MISSING


def _parse_text(text: str, target: pa.DataType) -> object:
    stripped = text.strip()
    if pa.types.is_boolean(target):
        return {"true": True, "false": False}.get(stripped.lower(), _MISSING)
    if pa.types.is_integer(target):
        # Only plain digits: int() would also take "1_000" and non-ASCII digits.
        return int(stripped) if INTEGER_TEXT.fullmatch(stripped) else _MISSING
    if pa.types.is_floating(target):
        if INTEGER_TEXT.fullmatch(stripped):
            return int(stripped)  # judged as an integer, so that 30 digits are not rounded into a double
        try:
            return float(stripped)
        except ValueError:
            return _MISSING
    return text


def json_text(value: object) -> str:
    """``value`` as compact JSON text, every digit of big integers kept (orjson refuses beyond 64 bits)."""
    try:
        return orjson.dumps(value, default=str).decode()
    except TypeError:
        return json.dumps(value, default=str, separators=(",", ":"), ensure_ascii=False)


def rescuable(value: object) -> object:
    """``value`` as it is kept in ``_rescued_data``: an integer beyond ±2**53 becomes its exact digits as
    a JSON string, because JSON readers round such numbers (into doubles: JavaScript, Elasticsearch's
    dynamic mapping, orjson beyond 64 bits) — and it is rescued because its column could not hold it."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value if -EXACT_DOUBLE_LIMIT <= value <= EXACT_DOUBLE_LIMIT else str(value)
    if isinstance(value, dict):
        return {key: rescuable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [rescuable(item) for item in value]
    return value


def cast_rescuing(
    column: pa.ChunkedArray, target: pa.DataType, rescued: list[dict | None], name: str
) -> pa.Array | pa.ChunkedArray:
    """Cast ``column`` to ``target``; a value that does not fit becomes null and goes to ``rescued``."""
    if column.type == target:
        return column
    if _cast_is_exact(column, target):
        try:
            return pc.cast(column, target, safe=True)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            pass
    from_text = pa.types.is_string(column.type) or pa.types.is_large_string(column.type)
    return fit_values(column.to_pylist(), target, rescued, name, from_text=from_text)


def fit_values(
    values: list, target: pa.DataType, rescued: list[dict | None], name: str, from_text: bool = False
) -> pa.Array:
    """``values`` as an array of ``target``; each value it cannot hold exactly is null and rescued."""
    fitted = []
    for row, value in enumerate(values):
        converted = coerce_value(value, target, from_text=from_text)
        if converted is _MISSING:
            rescue(rescued, row, name, value)
            converted = None
        fitted.append(converted)
    return pa.array(fitted, target)


def _cast_is_exact(column: pa.ChunkedArray | pa.Array, target: pa.DataType) -> bool:
    """Whether Arrow's safe cast keeps every value: it refuses overflow and truncation, but drops struct
    fields the target lacks and rounds long digit strings into doubles."""
    source = column.type
    if pa.types.is_string(source) or pa.types.is_large_string(source):
        if pa.types.is_floating(target):
            return not pc.any(pc.match_substring_regex(column, r"[0-9]{16}")).as_py()
        return True
    return _fields_kept(source, target)


def _fields_kept(source: pa.DataType, target: pa.DataType) -> bool:
    if pa.types.is_struct(source):
        if not pa.types.is_struct(target):
            return True  # not castable at all: Arrow refuses, the per-value path decides
        for source_field in source:
            index = target.get_field_index(source_field.name)
            if index < 0 or not _fields_kept(source_field.type, target.field(index).type):
                return False
        return True
    if source.num_fields and target.num_fields == source.num_fields:
        return all(_fields_kept(source.field(i).type, target.field(i).type) for i in range(source.num_fields))
    return True


def rescue(rescued: list[dict | None], row: int, name: str, value: object) -> None:
    """Set ``value`` of column ``name`` aside in row ``row``'s ``_rescued_data``."""
    slot = rescued[row]
    if slot is None:
        slot = rescued[row] = {}
    slot[name] = rescuable(value)
