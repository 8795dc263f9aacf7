"""Turning a landing file's bytes into a raw Arrow table: decompression, encodings, and the four formats.

The fast path hands the whole file to Arrow's readers. When Arrow refuses the file (a malformed line,
a value of the wrong type for the table), JSON files are read again line by line so that every good
line lands and every bad one is recorded with its line number and raw text.

Values are kept exactly. Arrow's readers and orjson turn integers beyond int64 (or u64) into rounded
doubles, and Arrow rounds long integers into double columns; only a file whose Arrow result has a
floating-point column *and* holds an integer literal of 16+ digits that int64 or a double cannot hold
is read again record by record (``scan_integers`` decides with a byte scan, the fast path of other
files costs nothing), where every value lands exactly or goes to ``_rescued_data`` as its digits.
"""

import csv
import json
from collections.abc import Collection
from dataclasses import dataclass, field

import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pj
import pyarrow.parquet as pq

from pipelines.feeds import FeedSpec
from pipelines.ingest.schema import (
    EXACT_DOUBLE_LIMIT,
    INT64_MAX,
    INT64_MIN,
    INTEGER_TEXT,
    fit_values,
    has_floating,
    json_text,
    normalise_type,
)

UTF8_BOM = b"\xef\xbb\xbf"
RAW_TEXT_LIMIT = 64 * 1024  # bad records keep this much of their raw text (and their full size)
_CODECS = {".gz": "gzip", ".gzip": "gzip", ".zst": "zstd", ".zstd": "zstd"}
# Every digit becomes "0" and every other byte ".", so that digit runs are found with bytes.find (C
# speed, unlike a regex over the whole file).
_DIGIT_RUNS = bytes(48 if 48 <= b <= 57 else 46 for b in range(256))
# Integers of up to 15 digits fit int64 and are exact doubles (< 2**53); orjson parses up to 19 digits
# (< 2**64) exactly.
_LONG_RUN = b"0" * 16
_HUGE_RUN = b"0" * 20


class UnreadableFile(Exception):
    """The file as a whole cannot be read: binary, broken compression, wrong encoding, corrupt Parquet."""


@dataclass
class BadRecord:
    line: int | None  # 1-based line (JSON lines), element (JSON arrays) or CSV row number
    error: str
    raw: bytes


@dataclass
class ParsedFile:
    table: pa.Table
    rescued: list[dict | None] | None = None  # values set aside while reading (line-by-line path)
    bad_records: list[BadRecord] = field(default_factory=list)


def decompress(path: str, raw: bytes) -> bytes:
    codec = next((c for suffix, c in _CODECS.items() if path.lower().endswith(suffix)), None)
    if codec is None:
        return raw
    try:
        return pa.CompressedInputStream(pa.BufferReader(raw), codec).read()
    except (OSError, pa.ArrowException) as exc:
        raise UnreadableFile(f"broken {codec} data ({exc}); re-upload the file") from exc


def text_bytes(raw: bytes, encoding: str) -> bytes:
    """UTF-8 bytes of a text file, without BOM; binary or wrongly encoded files are unreadable."""
    if raw.startswith(UTF8_BOM):
        raw = raw[len(UTF8_BOM) :]
    if b"\x00" in raw[:8192]:
        raise UnreadableFile("binary content (NUL bytes) in a text feed; is this the right format?")
    if encoding.lower().replace("-", "") not in ("utf8", "ascii"):
        return raw.decode(encoding, errors="replace").encode()
    if not raw.isascii():
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UnreadableFile(
                f"not valid UTF-8 at byte {exc.start} ({raw[exc.start : exc.start + 8]!r}); re-encode the "
                "file as UTF-8 or set the feed's encoding (e.g. encoding: latin-1)"
            ) from exc
    return raw


def parse(
    feed: FeedSpec, path: str, raw: bytes, target: pa.Schema | None, optional: Collection[str] = ()
) -> ParsedFile:
    """A raw table for one file (types as read; conforming to the table happens afterwards).

    ``optional`` names columns of ``target`` that are only there to type a hinted column should the
    file have it: Arrow's JSON reader adds every column of its schema, and such a column the file
    does not have is left out again.
    """
    data = decompress(path, raw)
    if feed.format == "parquet":
        try:
            return ParsedFile(pq.read_table(pa.BufferReader(data)))
        except (pa.ArrowException, OSError) as exc:
            raise UnreadableFile(f"not a readable Parquet file: {exc}") from exc
    text = text_bytes(data, feed.encoding)
    if feed.format == "csv":
        return _parse_csv(feed, text, target)
    if feed.format == "json_array":
        return _parse_json_array(text, target, optional)
    return _parse_json_lines(text, target, optional)


@dataclass(frozen=True)
class IntegerScan:
    inexact: bool  # an integer literal int64 or a double cannot hold exactly (possibly inside a string)
    huge: bool  # one of 20+ digits, which orjson would parse into a rounded float


def scan_integers(text: bytes) -> IntegerScan:
    """Which exactness risks the integer literals of ``text`` carry, from a byte scan: a few ms per
    MB, and only run for files whose fast read produced a floating-point column (or failed)."""
    runs = text.translate(_DIGIT_RUNS)
    start = runs.find(_LONG_RUN)
    if start < 0:
        return IntegerScan(False, False)
    huge = runs.find(_HUGE_RUN, start) >= 0
    while start >= 0:
        end = runs.find(b".", start)
        end = len(runs) if end < 0 else end
        digits = int(text[start:end])
        value = -digits if start and text[start - 1] == ord("-") else digits
        if not INT64_MIN <= value <= INT64_MAX or float(value) != value:
            return IntegerScan(True, huge)
        start = runs.find(_LONG_RUN, end)
    return IntegerScan(False, huge)


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


def _parse_json_lines(text: bytes, target: pa.Schema | None, optional: Collection[str]) -> ParsedFile:
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


def _parse_json_array(text: bytes, target: pa.Schema | None, optional: Collection[str]) -> ParsedFile:
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


def _parse_csv(feed: FeedSpec, text: bytes, target: pa.Schema | None) -> ParsedFile:
    options = feed.csv
    bad: list[BadRecord] = []

    def on_invalid_row(row: pacsv.InvalidRow) -> str:
        bad.append(
            BadRecord(
                row.number,
                f"expected {row.expected_columns} columns, got {row.actual_columns}",
                row.text.encode(),
            )
        )
        return "skip"

    first_line = text.split(b"\n", 1)[0].decode()
    header = next(csv.reader([first_line], delimiter=options.delimiter, quotechar=options.quote), [])
    names = header if options.header else [f"_c{i}" for i in range(len(header))]
    known_types = {n: target.field(n).type for n in names if target is not None and n in target.names}
    read_options = pacsv.ReadOptions(
        use_threads=False,
        column_names=names,
        skip_rows=1 if options.header else 0,
        block_size=max(1 << 20, len(text) + 1),
    )
    parse_options = pacsv.ParseOptions(
        delimiter=options.delimiter,
        quote_char=options.quote or False,
        escape_char=options.escape or False,
        invalid_row_handler=on_invalid_row,
    )

    def read(column_types: dict[str, pa.DataType]) -> pa.Table:
        bad.clear()
        return pacsv.read_csv(
            pa.BufferReader(text),
            read_options=read_options,
            parse_options=parse_options,
            convert_options=pacsv.ConvertOptions(column_types=column_types, strings_can_be_null=True),
        )

    try:
        table = read(known_types)
    except pa.ArrowInvalid:
        # A value does not convert to its column's type: read text, so conforming rescues just that value.
        try:
            table = read({n: pa.string() for n in names})
        except pa.ArrowInvalid as exc:
            raise UnreadableFile(f"not readable as CSV: {exc}") from exc
    if not has_floating(table.schema) or not scan_integers(text).inexact:
        return ParsedFile(table, bad_records=bad)
    # Arrow read a long integer into a double column (rounded): convert those columns from their text.
    texts = read({n: pa.string() for n in names})
    rescued: list[dict | None] = [None] * table.num_rows
    columns = []
    for index, column_field in enumerate(table.schema):
        if not pa.types.is_floating(column_field.type):
            columns.append(table.column(index))
            continue
        values = texts.column(index).to_pylist()
        column_type = column_field.type
        if column_field.name not in known_types and all(
            v is None or INTEGER_TEXT.fullmatch(v.strip()) for v in values
        ):
            # Arrow infers double for integers when one does not fit int64; the column stays int64
            # and that one is rescued as its text.
            column_type = pa.int64()
        columns.append(fit_values(values, column_type, rescued, column_field.name, from_text=True))
    return ParsedFile(pa.Table.from_arrays(columns, names=table.column_names), rescued, bad)
