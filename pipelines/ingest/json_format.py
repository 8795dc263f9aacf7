"""JSON lines and JSON array files into a raw Arrow table, every good record kept and every bad one
recorded with its number and raw text.

Arrow's reader takes the whole file when it can; a file it refuses, or whose double columns may hold
rounded long integers (``scan_integers``), is read record by record with every integer exact.
"""

import json
from collections.abc import Collection

import orjson
import pyarrow as pa
import pyarrow.json as pj

from pipelines.ingest.parsing import BadRecord, ParsedFile, UnreadableFile, scan_integers
from pipelines.ingest.schema import has_floating, normalise_type
from pipelines.ingest.values import EXACT_DOUBLE_LIMIT, fit_values, json_text


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")  # as orjson: NaN and Infinity are not JSON


def _exact_loads(text: bytes) -> object:
    """JSON with every integer exact: the standard library parses integers into Python ints."""
    return json.loads(text, parse_constant=_reject_constant)


def _json_options(target: pa.Schema | None, size: int) -> tuple[pj.ReadOptions, pj.ParseOptions]:
    # One block for the whole file: a single very long line never straddles blocks (files are
    # read in parallel already).
    block = max(1 << 20, size + 1)
    parse_options = pj.ParseOptions(explicit_schema=target, unexpected_field_behavior="infer")
    return pj.ReadOptions(use_threads=False, block_size=block), parse_options


def _read_with_arrow(lines: bytes, target: pa.Schema | None, optional: Collection[str]) -> pa.Table | None:
    """Arrow's fast reader for JSON lines; None when the text needs the record-by-record path."""
    read_options, parse_options = _json_options(target, len(lines))
    try:
        table = pj.read_json(pa.BufferReader(lines), read_options=read_options, parse_options=parse_options)
    except pa.ArrowInvalid:
        return None
    for name in optional:
        column = table.column(name) if name in table.column_names else None
        if column is not None and column.null_count == len(column) and orjson.dumps(name) not in lines:
            table = table.drop_columns([name])
    return table


def parse_json_lines(text: bytes, target: pa.Schema | None, optional: Collection[str]) -> ParsedFile:
    table = _read_with_arrow(text, target, optional)
    scan = None
    if table is not None:
        # Only a floating-point column can have rounded a value silently: integer columns are exact
        # or refused, and Arrow refuses numbers in string columns.
        if not has_floating(table.schema):
            return ParsedFile(table)
        scan = scan_integers(text)
        if not scan.inexact:
            return ParsedFile(table)
    loads = _exact_loads if (scan or scan_integers(text)).huge else orjson.loads
    records, bad = [], []
    for number, line in enumerate(text.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            record = loads(line)
        except (ValueError, RecursionError) as exc:  # orjson's and json's decode errors are ValueErrors
            bad.append(BadRecord(number, f"malformed JSON: {exc}", line))
            continue
        if not isinstance(record, dict):
            bad.append(BadRecord(number, f"a JSON {type(record).__name__}, not an object", line))
            continue
        records.append(record)
    return _from_records(records, target, bad)


def parse_json_array(text: bytes, target: pa.Schema | None, optional: Collection[str]) -> ParsedFile:
    scan = scan_integers(text)
    try:
        document = (_exact_loads if scan.huge else orjson.loads)(text)
    except (ValueError, RecursionError) as exc:
        raise UnreadableFile(f"not a JSON document: {exc}") from exc
    elements = document if isinstance(document, list) else [document]
    records, bad = [], []
    for number, element in enumerate(elements, start=1):
        if isinstance(element, dict):
            records.append(element)
        else:
            bad.append(
                BadRecord(number, f"array element is a JSON {type(element).__name__}", orjson.dumps(element))
            )
    if not bad and not scan.inexact:
        # orjson writes back every integer it read (huge ones made the scan inexact).
        table = _read_with_arrow(b"\n".join(orjson.dumps(r) for r in records), target, optional)
        if table is not None:
            return ParsedFile(table)
    return _from_records(records, target, bad)


def _from_records(records: list[dict], target: pa.Schema | None, bad: list[BadRecord]) -> ParsedFile:
    """Column-wise table from Python records: target columns coerced (misfits rescued), others inferred."""
    rescued: list[dict | None] = [None] * len(records)
    names = list(dict.fromkeys(key for record in records for key in record))
    arrays, fields = [], []
    for name in names:
        values = [record.get(name) for record in records]
        if target is not None and name in target.names:
            array = fit_values(values, target.field(name).type, rescued, name)
        else:
            array = _inferred(values, rescued, name)
        arrays.append(array)
        fields.append(pa.field(name, array.type))
    # With no fields at all the table has no rows; conforming counts rows from ``rescued``.
    return ParsedFile(pa.Table.from_arrays(arrays, schema=pa.schema(fields)), rescued, bad)


def _inferred(values: list, rescued: list[dict | None], name: str) -> pa.Array:
    """A column the table does not have yet, typed from its values without losing a digit.

    pyarrow refuses (rather than rounds) integers beyond int64 and integers a double column cannot
    hold; the column then gets the type of the other values — int64 when they are all integers,
    never a double by accident — and those integers are rescued as their digits.
    """
    try:
        return pa.array(values)
    except (OverflowError, pa.ArrowInvalid, pa.ArrowTypeError):
        pass
    try:
        column_type = normalise_type(pa.array([_small_ints(v) for v in values]).type)
    except (OverflowError, pa.ArrowInvalid, pa.ArrowTypeError):
        # Mixed types in a column the table does not have yet: keep them all, as JSON text.
        return pa.array([v if v is None or isinstance(v, str) else json_text(v) for v in values], pa.string())
    return fit_values(values, column_type, rescued, name)


def _small_ints(value: object) -> object:
    """``value`` with every integer a double cannot hold replaced by 0: a stand-in to infer a type from."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value if -EXACT_DOUBLE_LIMIT <= value <= EXACT_DOUBLE_LIMIT else 0
    if isinstance(value, dict):
        return {key: _small_ints(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_small_ints(item) for item in value]
    return value
