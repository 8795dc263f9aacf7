"""Turning a landing file's bytes into a raw Arrow table: decompression, encodings, and the four formats.

A JSON-lines or CSV file with lines that are not valid UTF-8 loses those lines only: each is recorded
as a bad record with its raw bytes, and the rest of the file is read.

The fast path hands the whole file to Arrow's readers. When Arrow refuses the file (a malformed line,
a value of the wrong type for the table), JSON files are read again line by line so that every good
line lands and every bad one is recorded with its line number and raw text.

Values are kept exactly. Arrow's readers and orjson turn integers beyond int64 (or u64) into rounded
doubles, and Arrow rounds long integers into double columns; only a file whose Arrow result has a
floating-point column *and* holds an integer literal of 16+ digits that int64 or a double cannot hold
is read again record by record (``scan_integers`` decides with a byte scan, the fast path of other
files costs nothing), where every value lands exactly or goes to ``_rescued_data`` as its digits.

This module picks the reader; ``json_format`` and ``csv_format`` read, ``parsing`` holds what they yield.
"""

from collections.abc import Collection

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.feeds import FeedSpec
from pipelines.ingest.csv_format import parse_csv
from pipelines.ingest.json_format import parse_json_array, parse_json_lines
from pipelines.ingest.parsing import BadRecord, ParsedFile, UnreadableFile

UTF8_BOM = b"\xef\xbb\xbf"
_CODECS = {".gz": "gzip", ".gzip": "gzip", ".zst": "zstd", ".zstd": "zstd"}


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
    return _text_and_bad_lines(raw, encoding, by_line=False)[0]


def _text_and_bad_lines(raw: bytes, encoding: str, by_line: bool) -> tuple[bytes, list[BadRecord]]:
    """UTF-8 bytes of a text file without BOM, and the lines that are not valid UTF-8 (``by_line``:
    a line-oriented format, where such a line is left out, blank, so line numbers hold, and recorded
    with its raw bytes). Binary files, and wrongly encoded files of other formats, are unreadable."""
    if raw.startswith(UTF8_BOM):
        raw = raw[len(UTF8_BOM) :]
    if b"\x00" in raw[:8192]:
        raise UnreadableFile("binary content (NUL bytes) in a text feed; is this the right format?")
    if encoding.lower().replace("-", "") not in ("utf8", "ascii"):
        return raw.decode(encoding, errors="replace").encode(), []
    if raw.isascii():
        return raw, []
    try:
        raw.decode("utf-8")
        return raw, []
    except UnicodeDecodeError as exc:
        whole_file = UnreadableFile(
            f"not valid UTF-8 at byte {exc.start} ({raw[exc.start : exc.start + 8]!r}); re-encode the "
            "file as UTF-8 or set the feed's encoding (e.g. encoding: latin-1)"
        )
        if not by_line:
            raise whole_file from exc
    lines = raw.split(b"\n")
    bad = []
    for index, line in enumerate(lines):
        if line.isascii():
            continue
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as exc:
            bad.append(
                BadRecord(
                    index + 1,
                    f"not valid UTF-8 at byte {exc.start} of the line ({line[exc.start : exc.start + 8]!r}); "
                    "the rest of the file landed. Re-encode the line as UTF-8, or set the feed's encoding "
                    "if the whole file is in another one",
                    line,
                )
            )
            lines[index] = b""
    return b"\n".join(lines), bad


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
    if feed.format == "json_array":
        return parse_json_array(text_bytes(data, feed.encoding), target, optional)
    text, undecodable = _text_and_bad_lines(data, feed.encoding, by_line=True)
    if feed.format == "csv":
        if undecodable and feed.csv.header and undecodable[0].line == 1:
            raise UnreadableFile(f"the CSV header is not valid UTF-8: {undecodable[0].error}")
        parsed = parse_csv(feed, text, target)
    else:
        parsed = parse_json_lines(text, target, optional)
    if undecodable:
        parsed.bad_records = sorted([*parsed.bad_records, *undecodable], key=lambda b: b.line or 0)
    return parsed
