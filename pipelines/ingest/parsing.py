"""What reading a landing file yields (a raw table, bad records, or "unreadable"), and the byte scan
that tells whether Arrow's fast readers may have rounded an integer literal of the file.

Shared by the format readers (``json_format``, ``csv_format``) and the batch reader.
"""

import csv
from dataclasses import dataclass, field

import orjson
import pyarrow as pa

from pipelines.ingest.values import INT64_MAX, INT64_MIN

RAW_TEXT_LIMIT = 64 * 1024  # bad records keep this much of their raw text (and their full size)
# Every digit becomes "0" and every other byte ".", so that digit runs are found with bytes.find (C
# speed, unlike a regex over the whole file).
_DIGIT_RUNS = bytes(48 if 48 <= b <= 57 else 46 for b in range(256))
# Integers of up to 15 digits fit int64 and are exact doubles (< 2**53); orjson parses up to 19 digits
# (< 2**64) exactly.
_LONG_RUN = b"0" * 16
_HUGE_RUN = b"0" * 20


class UnreadableFile(Exception):
    """The file as a whole cannot be read: binary, broken compression, wrong encoding, corrupt Parquet."""


class UnstorableSchema(ValueError):
    """The file's columns make a schema Delta refuses (a type it cannot store, names differing only in case)."""


# What a landing file's bytes can make the readers, the conforming and Delta's schema check raise: a
# file that raises one of these is quarantined and the rest of its batch lands. Anything else
# (TypeError, AttributeError, NameError, KeyError, ...) is a bug of lakerelay's own: it fails the run,
# to be fixed, instead of passing for a bad file. MemoryError (ArrowMemoryError too) is the machine's
# and is re-raised before these are caught.
FILE_CONTENT_ERRORS: tuple[type[Exception], ...] = (
    UnreadableFile,
    ValueError,  # decoding (UnicodeDecodeError, JSON decode errors), ArrowInvalid, UnstorableSchema
    ArithmeticError,  # a value too large for its type (OverflowError)
    RecursionError,  # nesting deeper than a parser's stack
    EOFError,  # a truncated compressed stream
    csv.Error,
    pa.ArrowException,  # Arrow's readers and casts (its ArrowTypeError and ArrowKeyError too)
    orjson.JSONEncodeError,  # a value orjson cannot write back as JSON text
)


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
