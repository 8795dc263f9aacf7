"""Bulk export of one pinned Delta version to parts plus a ``manifest.json`` written last.

Pure logic (no Dagster). ``export_table`` runs a pipeline of bounded stages on separate threads:

    read (DataFusion) -> cut into parts + encode -> compress -> upload (this thread, sha256 as it goes)

so reading, encoding, compressing and uploading overlap while memory stays bounded by the queues and
one multipart chunk, whatever the table size. The manifest is created only after every part is
complete (create-only), so an export is either whole or invisible. ``verify_export`` re-reads it all.
"""

# First: it configures the allocators of deltalake and polars, which read it when they load.
import pipelines.export_alloc  # noqa: F401

# isort: split
import datetime as dt
import hashlib
import os
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
import pyarrow as pa
from deltalake import DeltaTable

from pipelines.export_check import inspect_part, manifest_problems
from pipelines.export_cursor import Cursor, decode_cursor
from pipelines.export_encode import block_codec, content_type, encoder_factory
from pipelines.export_pipeline import staged
from pipelines.export_read import check_append_only_since, plan_read, read_batches
from pipelines.export_spec import (
    DEFAULT_BATCH_ROWS,
    DEFAULT_PART_MAX_BYTES,
    DEFAULT_PART_MAX_ROWS,
    ExportSpec,
)
from resources.export_storage import ExportStorage, PartWriter

__all__ = [
    "DEFAULT_BATCH_ROWS",
    "DEFAULT_PART_MAX_BYTES",
    "DEFAULT_PART_MAX_ROWS",
    "MANIFEST_NAME",
    "ExportResult",
    "export_prefix",
    "export_table",
    "latest_manifest_key",
    "new_export_id",
    "verify_export",
]

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 2
# Items waiting between two stages. Measured (bench.export, 1M rows): 4 -> 2 saved ~30 MB of peak RSS
# and no speed, since the stages run at the pace of deflate anyway.
QUEUE_SIZE = 2
PROBE_ROWS = 64
COMPRESS_WORKERS = max(1, min(4, os.cpu_count() or 1))
COMPRESS_IN_FLIGHT = 2 * COMPRESS_WORKERS  # one block compressing and one queued per worker


@dataclass(frozen=True)
class ExportResult:
    """What one export wrote; ``manifest`` is exactly the published manifest document."""

    manifest: dict[str, Any]
    manifest_key: str
    manifest_uri: str
    rows: int
    bytes: int
    parts: int
    duration_s: float
    aborted_uploads: int = 0

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def next_cursor(self) -> str | None:
        return self.manifest.get("next_cursor")


# -- layout ------------------------------------------------------------------------------------------


def new_export_id(run_id: str, now: dt.datetime | None = None) -> str:
    """UTC timestamp first so export ids sort by time; the run id keeps concurrent runs apart."""
    now = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    # Milliseconds too: two exports in one second must still sort in the order they started.
    return f"{now:%Y%m%dT%H%M%S}{now.microsecond // 1000:03d}Z-{run_id.replace('-', '')[:8]}"


def export_prefix(dataset: str, export_id: str) -> str:
    ExportSpec(dataset=dataset, table="-")  # validates the dataset name
    if not export_id or "/" in export_id or export_id.startswith("."):
        raise ValueError(f"export_id {export_id!r} must be one path segment of letters, digits, '._=-'")
    return f"{dataset}/{export_id}"


def manifest_key(dataset: str, export_id: str) -> str:
    return f"{export_prefix(dataset, export_id)}/{MANIFEST_NAME}"


def latest_manifest_key(storage: ExportStorage, dataset: str) -> str | None:
    """Manifest of the newest published export of ``dataset`` (export ids sort by time)."""
    keys = [
        k for k in storage.list_keys(f"{dataset}/") if k.count("/") == 2 and k.endswith("/" + MANIFEST_NAME)
    ]
    return max(keys, default=None)


def _redact_uri(uri: str) -> str:
    """A table URI without user info or query string, where credentials or SAS tokens could hide."""
    parts = urlsplit(uri)
    if not parts.scheme or len(parts.scheme) == 1:  # a plain local path (or a Windows drive letter)
        return uri
    return urlunsplit((parts.scheme, parts.netloc.rsplit("@", 1)[-1], parts.path, "", ""))


def _utc(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


# -- the pipeline stages -------------------------------------------------------------------------------


@dataclass
class _Piece:
    """Bytes of one part on their way to storage; ``last`` closes the part."""

    part: int
    data: bytes
    rows: int = 0
    raw_bytes: int = 0
    first_key: Any = None
    last_key: Any = None
    last: bool = False


def _cut_and_encode(
    spec: ExportSpec, schema: pa.Schema
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[_Piece]]:
    """Stage: slice batches into parts and encode them.

    Rows per part are exact. Bytes per part are exact for NDJSON and CSV (a group that would overflow
    is re-encoded smaller; a single row larger than the limit gets a part of its own) and approximate
    for Parquet (whose row groups cannot be taken back once written).
    """
    new_encoder = encoder_factory(spec, schema)
    exact_bytes = spec.format != "parquet"
    group_rows = min(new_encoder().group_rows, spec.batch_rows)
    key_index = schema.get_field_index(spec.order_by) if spec.order_by else -1
    max_bytes = spec.part_max_bytes

    def stage(batches: Iterator[pa.RecordBatch]) -> Iterator[_Piece]:
        index, encoder, rows, size = -1, None, 0, 0
        total_rows = total_size = 0
        for batch in batches:
            offset = 0
            while offset < batch.num_rows:
                if encoder is None:
                    index, encoder, rows, size = index + 1, new_encoder(), 0, 0
                    header = encoder.begin()
                    size += len(header)
                    yield _Piece(index, header, raw_bytes=len(header))
                row_size = total_size / total_rows if total_rows else 0
                n = min(batch.num_rows - offset, spec.part_max_rows - rows, group_rows)
                # Learn the row size on a few rows first, then take what should fill the part.
                n = min(n, max(1, int((max_bytes - size) / row_size))) if row_size else min(n, PROBE_ROWS)
                data = encoder.encode(batch.slice(offset, n))
                while exact_bytes and size + len(data) > max_bytes and n > 1:
                    n = max(1, n * max(max_bytes - size, 0) // len(data))
                    data = encoder.encode(batch.slice(offset, n))
                if exact_bytes and rows and size + len(data) > max_bytes:
                    full = True  # not even one more row fits: it opens the next part
                else:
                    keys = batch.column(key_index).slice(offset, n) if key_index >= 0 else None
                    offset += n
                    rows, size = rows + n, size + len(data)
                    total_rows, total_size = total_rows + n, total_size + len(data)
                    yield _Piece(
                        index,
                        data,
                        rows=n,
                        raw_bytes=len(data),
                        first_key=None if keys is None else keys[0].as_py(),
                        last_key=None if keys is None else keys[-1].as_py(),
                    )
                    full = rows >= spec.part_max_rows or size + total_size / total_rows > max_bytes
                if full:
                    tail = encoder.end()
                    yield _Piece(index, tail, raw_bytes=len(tail), last=True)
                    encoder = None
        if encoder is not None:
            tail = encoder.end()
            yield _Piece(index, tail, raw_bytes=len(tail), last=True)

    return stage


def _compress(spec: ExportSpec) -> Callable[[Iterator[_Piece]], Iterator[_Piece]]:
    """Stage: compress pieces on a small thread pool (zlib and zstd release the GIL), in order.

    Each part is one stream (a gzip member, zstd frames, or as is) made of independently compressed
    blocks; at most ``2 x COMPRESS_WORKERS`` pieces are in flight.
    """
    codec = block_codec(spec)
    window = 32 * 1024

    def stage(pieces: Iterator[_Piece]) -> Iterator[_Piece]:
        pending: deque[tuple[_Piece, Future[bytes], bytes, bool, int, int]] = deque()
        opened, crc, size, tail = -1, 0, 0, b""

        def finish(item: tuple[_Piece, Future[bytes], bytes, bool, int, int]) -> _Piece:
            piece, future, head, last, part_crc, part_size = item
            piece.data = head + future.result() + (codec.trailer(part_crc, part_size) if last else b"")
            return piece

        with ThreadPoolExecutor(COMPRESS_WORKERS, thread_name_prefix="export-compress") as pool:
            for piece in pieces:
                head = b""
                if piece.part != opened:
                    opened, crc, size, tail, head = piece.part, 0, 0, b"", codec.header()
                data = piece.data
                crc, size = zlib.crc32(data, crc), size + len(data)
                pending.append(
                    (piece, pool.submit(codec.block, data, tail, piece.last), head, piece.last, crc, size)
                )
                tail = data[-window:] if len(data) >= window else (tail + data)[-window:]
                while len(pending) > COMPRESS_IN_FLIGHT:
                    yield finish(pending.popleft())
            while pending:
                yield finish(pending.popleft())

    return stage


class _PartUpload:
    """One part being stored: the storage writer plus sha256, counters and first/last key."""

    def __init__(self, storage: ExportStorage, key: str, content_type: str) -> None:
        self.key = key
        self.rows = self.raw_bytes = self.stored_bytes = 0
        self.first_key: Any = None
        self.last_key: Any = None
        self._sha = hashlib.sha256()
        self._writer: PartWriter = storage.open_part(key, content_type=content_type)

    def add(self, piece: _Piece) -> None:
        if piece.rows and self.rows == 0:
            self.first_key = piece.first_key
        if piece.rows:
            self.last_key = piece.last_key
        self.rows += piece.rows
        self.raw_bytes += piece.raw_bytes
        if piece.data:
            self._sha.update(piece.data)
            self.stored_bytes += len(piece.data)
            self._writer.write(piece.data)

    def finish(self) -> dict[str, Any]:
        self._writer.close()
        return {
            "key": self.key,
            "rows": self.rows,
            "bytes": self.stored_bytes,
            "uncompressed_bytes": self.raw_bytes,
            "sha256": self._sha.hexdigest(),
            "first_key": self.first_key,
            "last_key": self.last_key,
        }

    def abort(self) -> None:
        self._writer.abort()


def _store_parts(
    pieces: Iterator[_Piece], storage: ExportStorage, prefix: str, spec: ExportSpec
) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    current: _PartUpload | None = None
    try:
        for piece in pieces:
            if current is None:
                current = _PartUpload(
                    storage, f"{prefix}/part-{piece.part:05d}.{spec.extension}", content_type(spec)
                )
            current.add(piece)
            if piece.last:
                parts.append(current.finish())
                current = None
    except BaseException:
        if current is not None:
            current.abort()  # no half-written part (nor a pending multipart upload) survives
        raise
    return parts


# -- export ------------------------------------------------------------------------------------------


def export_table(
    table_uri: str,
    storage_options: dict[str, str] | None,
    storage: ExportStorage,
    dataset: str,
    export_id: str,
    *,
    spec: ExportSpec | None = None,
    since: str | None = None,
    **options: Any,
) -> ExportResult:
    """Export the current version of a Delta table under ``<dataset>/<export_id>/``.

    ``spec`` says what and how (defaults: every column, gzip NDJSON); keyword ``options`` override its
    fields (``format="csv"``, ``part_max_rows=...``). ``since`` is a previous manifest's
    ``next_cursor``: only rows with a greater ordering key are exported.
    """
    if "gzip_level" in options:  # the older name of `level`
        options["level"] = options.pop("gzip_level")
    spec = (spec or ExportSpec(dataset=dataset, table=table_uri)).replace(dataset=dataset, **options)
    started = time.perf_counter()
    created_at = dt.datetime.now(dt.UTC)
    prefix = export_prefix(dataset, export_id)
    if storage.list_keys(prefix + "/"):
        raise FileExistsError(f"export {storage.uri_for(prefix)} already has objects; use a new export_id")
    # Exports of one dataset run one at a time: anything still pending under it is from a crashed run.
    aborted = storage.abort_incomplete(f"{dataset}/")

    table = DeltaTable(table_uri, storage_options=storage_options or None)
    version = table.version()  # every query below reads this one snapshot
    cursor = None
    if since:
        if not spec.order_by:
            raise ValueError(f"export {dataset!r} has no order_by: a 'since' cursor needs an ordering key")
        cursor = decode_cursor(since, dataset, spec.order_by)
        if cursor.delta_version > version:
            raise ValueError(
                f"cursor is at Delta version {cursor.delta_version}, the table only at {version}"
            )
        if cursor.last_key is not None:
            check_append_only_since(
                table, storage_options, spec.order_by, cursor.delta_version, cursor.last_key
            )
    since_key = cursor.last_key if cursor else None
    plan = plan_read(table, spec, since_key)

    pieces = staged(
        # NDJSON and CSV go through polars, which takes string views as they are; Parquet writes the
        # plan's schema.
        read_batches(table, plan, spec.batch_rows, keep_views=spec.format != "parquet"),
        _cut_and_encode(spec, plan.schema),
        _compress(spec),
        maxsize=QUEUE_SIZE,
    )
    try:
        parts = _store_parts(pieces, storage, prefix, spec)
    finally:
        pieces.close()  # stops and joins the stage threads, also on error

    total_rows = sum(p["rows"] for p in parts)
    last_key = parts[-1]["last_key"] if parts else since_key
    next_cursor = Cursor(dataset, spec.order_by, version, last_key).encode() if spec.order_by else None
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "format": spec.format,
        "compression": spec.compression,
        "dataset": dataset,
        "export_id": export_id,
        "table_uri": _redact_uri(table_uri),
        "delta_version": version,
        "columns": plan.schema.names,
        "where": spec.where or None,
        "order_by": spec.order_by or None,
        "schema": [{"name": f.name, "type": str(f.type), "nullable": f.nullable} for f in plan.schema],
        "since": since,
        "next_cursor": next_cursor,
        "total_rows": total_rows,
        "total_bytes": sum(p["bytes"] for p in parts),
        "parts": parts,
        "created_at": _utc(created_at),
        "expires_at": _utc(created_at + dt.timedelta(days=spec.ttl_days)) if spec.ttl_days else None,
    }
    key = manifest_key(dataset, export_id)
    storage.put_manifest(key, orjson.dumps(manifest, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE))
    return ExportResult(
        manifest=manifest,
        manifest_key=key,
        manifest_uri=storage.uri_for(key),
        rows=total_rows,
        bytes=manifest["total_bytes"],
        parts=len(parts),
        duration_s=time.perf_counter() - started,
        aborted_uploads=aborted,
    )


# -- verification ------------------------------------------------------------------------------------


def verify_export(storage: ExportStorage, manifest_key: str) -> list[str]:
    """Re-read every part of an export and compare it with the manifest; an empty list means OK."""
    try:
        manifest = orjson.loads(storage.read_bytes(manifest_key))
    except FileNotFoundError:
        return [f"manifest {manifest_key} not found"]
    except orjson.JSONDecodeError as exc:
        return [f"manifest {manifest_key} is not valid JSON ({exc})"]
    problems: list[str] = []
    fmt, compression = manifest.get("format", "ndjson"), manifest.get("compression", "gzip")
    for part in manifest.get("parts", []):
        try:
            with storage.open_read(part["key"]) as stream:
                problems.extend(inspect_part(stream, part, fmt, compression))
        except FileNotFoundError:
            problems.append(f"{part['key']}: missing")
    return problems + manifest_problems(manifest)
