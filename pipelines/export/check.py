"""Check stored part bytes against a manifest entry: sha256, size and row count, in one streaming pass.

Shared by the asset check (reading from the export storage) and the download client (reading files
it fetched), so both apply the same rules to every format and compression.
"""

import csv
import hashlib
import io
import tempfile
import zlib
from collections.abc import Iterator
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

CHUNK = 1024 * 1024


class _Hashing(io.RawIOBase):
    """A readable stream that hashes and counts every byte read through it."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self.sha = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._raw.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        self.sha.update(data)
        self.size += n
        return n

    def drain(self) -> None:
        while self.read(CHUNK):
            pass


def _gunzip(raw: io.RawIOBase, problems: list[str], key: str) -> Iterator[bytes]:
    z = zlib.decompressobj(31)
    while chunk := raw.read(CHUNK):
        if z.eof:
            problems.append(f"{key}: trailing data after the gzip stream")
            return
        try:
            yield z.decompress(chunk)
        except zlib.error as exc:
            problems.append(f"{key}: not valid gzip ({exc})")
            return
    if not z.eof:
        problems.append(f"{key}: gzip stream is truncated")


def _unzstd(raw: io.RawIOBase, problems: list[str], key: str) -> Iterator[bytes]:
    stream = pa.CompressedInputStream(pa.PythonFile(raw, mode="r"), "zstd")
    try:
        while chunk := stream.read(CHUNK):
            yield chunk
    except (OSError, pa.ArrowException) as exc:
        problems.append(f"{key}: not valid zstd ({exc})")


def _plain(raw: io.RawIOBase, problems: list[str], key: str) -> Iterator[bytes]:
    while chunk := raw.read(CHUNK):
        yield chunk


class _Chunks(io.RawIOBase):
    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks, self._rest = chunks, b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._rest:
            self._rest = next(self._chunks, b"")
            if not self._rest:
                return 0
        n = min(len(buffer), len(self._rest))
        buffer[:n], self._rest = self._rest[:n], self._rest[n:]
        return n


def _count_ndjson(chunks: Iterator[bytes], problems: list[str], key: str) -> int:
    lines, last = 0, b"\n"
    for text in chunks:
        lines += text.count(b"\n")
        last = text[-1:] or last
    if last != b"\n":
        problems.append(f"{key}: last line is not terminated")
    return lines


def _count_csv(chunks: Iterator[bytes], problems: list[str], key: str) -> int:
    """CSV records (not lines: RFC 4180 fields may hold line breaks), minus the header."""
    text = io.TextIOWrapper(io.BufferedReader(_Chunks(chunks), CHUNK), encoding="utf-8", newline="")
    try:
        records = sum(1 for _ in csv.reader(text))
    except (csv.Error, UnicodeDecodeError) as exc:
        problems.append(f"{key}: not valid CSV ({exc})")
        return -1
    return max(records - 1, 0)


def _count_parquet(chunks: Iterator[bytes], problems: list[str], key: str) -> int:
    with tempfile.TemporaryFile() as spool:  # the row count is in the footer, at the end
        for chunk in chunks:
            spool.write(chunk)
        spool.seek(0)
        try:
            return pq.ParquetFile(spool).metadata.num_rows
        except (OSError, pa.ArrowException) as exc:
            problems.append(f"{key}: not valid Parquet ({exc})")
            return -1


def inspect_part(raw: BinaryIO, part: dict[str, Any], fmt: str, compression: str) -> list[str]:
    """Problems found reading ``raw`` as the manifest's ``part``; an empty list means it matches."""
    key = part["key"]
    problems: list[str] = []
    hashing = _Hashing(raw)
    if fmt == "parquet":
        rows = _count_parquet(_plain(hashing, problems, key), problems, key)
    else:
        decompress = {"gzip": _gunzip, "zstd": _unzstd, "none": _plain}[compression]
        count = _count_csv if fmt == "csv" else _count_ndjson
        rows = count(decompress(hashing, problems, key), problems, key)
    hashing.drain()  # hash every stored byte even when decoding stopped early
    if hashing.sha.hexdigest() != part["sha256"]:
        problems.insert(0, f"{key}: sha256 {hashing.sha.hexdigest()} != manifest {part['sha256']}")
    if hashing.size != part["bytes"]:
        problems.append(f"{key}: {hashing.size} bytes stored != manifest {part['bytes']}")
    if rows >= 0 and rows != part["rows"] and not any("not valid" in p for p in problems):
        problems.append(f"{key}: {rows} rows != manifest {part['rows']} rows")
    return problems


def manifest_problems(manifest: dict[str, Any]) -> list[str]:
    """Internal consistency of a manifest (totals equal the sum of the parts)."""
    parts = manifest.get("parts", [])
    problems = []
    if sum(p["rows"] for p in parts) != manifest.get("total_rows"):
        problems.append("total_rows does not equal the sum of the parts' rows")
    if sum(p["bytes"] for p in parts) != manifest.get("total_bytes"):
        problems.append("total_bytes does not equal the sum of the parts' bytes")
    return problems
