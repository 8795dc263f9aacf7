"""Turning a landing file's bytes into a raw Arrow table: decompression, encodings, and the four formats.

The fast path hands the whole file to Arrow's readers. When Arrow refuses the file (a malformed line,
a value of the wrong type for the table), JSON files are read again line by line so that every good
line lands and every bad one is recorded with its line number and raw text.
"""

import csv
from dataclasses import dataclass, field

import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pj
import pyarrow.parquet as pq

from pipelines.feeds import FeedSpec
from pipelines.ingest.schema import _MISSING, coerce_value

UTF8_BOM = b"\xef\xbb\xbf"
RAW_TEXT_LIMIT = 64 * 1024  # bad records keep this much of their raw text (and their full size)
_CODECS = {".gz": "gzip", ".gzip": "gzip", ".zst": "zstd", ".zstd": "zstd"}


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


def parse(feed: FeedSpec, path: str, raw: bytes, target: pa.Schema | None) -> ParsedFile:
    """A raw table for one file (types as read; conforming to the table happens afterwards)."""
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
        return _parse_json_array(text, target)
    return _parse_json_lines(text, target)


def _json_options(target: pa.Schema | None, size: int) -> tuple[pj.ReadOptions, pj.ParseOptions]:
    # One block for the whole file: a single very long line never straddles blocks (files are
    # read in parallel already).
    block = max(1 << 20, size + 1)
    parse_options = pj.ParseOptions(explicit_schema=target, unexpected_field_behavior="infer")
    return pj.ReadOptions(use_threads=False, block_size=block), parse_options


def _read_with_arrow(lines: bytes, target: pa.Schema | None) -> ParsedFile | None:
    """Arrow's fast reader for JSON lines; None when the text needs the record-by-record path."""
    read_options, parse_options = _json_options(target, len(lines))
    try:
        return ParsedFile(
            pj.read_json(pa.BufferReader(lines), read_options=read_options, parse_options=parse_options)
        )
    except pa.ArrowInvalid:
        return None


def _parse_json_lines(text: bytes, target: pa.Schema | None) -> ParsedFile:
    parsed = _read_with_arrow(text, target)
    if parsed is not None:
        return parsed
    records, bad = [], []
    for number, line in enumerate(text.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            bad.append(BadRecord(number, f"malformed JSON: {exc}", line))
            continue
        if not isinstance(record, dict):
            bad.append(BadRecord(number, f"a JSON {type(record).__name__}, not an object", line))
            continue
        records.append(record)
    return _from_records(records, target, bad)


def _parse_json_array(text: bytes, target: pa.Schema | None) -> ParsedFile:
    try:
        document = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
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
    if not bad:
        parsed = _read_with_arrow(b"\n".join(orjson.dumps(r) for r in records), target)
        if parsed is not None:
            return parsed
    return _from_records(records, target, bad)


def _from_records(records: list[dict], target: pa.Schema | None, bad: list[BadRecord]) -> ParsedFile:
    """Column-wise table from Python records: target columns coerced (misfits rescued), others inferred."""
    rescued: list[dict | None] = [None] * len(records)
    names = list(dict.fromkeys(key for record in records for key in record))
    arrays, fields = [], []
    for name in names:
        values = [record.get(name) for record in records]
        if target is not None and name in target.names:
            column_type = target.field(name).type
            fitted = []
            for row, value in enumerate(values):
                converted = coerce_value(value, column_type)
                if converted is _MISSING:
                    rescued[row] = {**(rescued[row] or {}), name: value}
                    converted = None
                fitted.append(converted)
            array = pa.array(fitted, column_type)
        else:
            try:
                array = pa.array(values)
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                # Mixed types in a column the table does not have yet: keep them all, as JSON text.
                array = pa.array(
                    [v if v is None or isinstance(v, str) else orjson.dumps(v).decode() for v in values],
                    pa.string(),
                )
        arrays.append(array)
        fields.append(pa.field(name, array.type))
    # With no fields at all the table has no rows; conforming counts rows from ``rescued``.
    return ParsedFile(pa.Table.from_arrays(arrays, schema=pa.schema(fields)), rescued, bad)


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
        return ParsedFile(read(known_types), bad_records=bad)
    except pa.ArrowInvalid:
        # A value does not convert to its column's type: read text, so conforming rescues just that value.
        try:
            return ParsedFile(read({n: pa.string() for n in names}), bad_records=bad)
        except pa.ArrowInvalid as exc:
            raise UnreadableFile(f"not readable as CSV: {exc}") from exc
