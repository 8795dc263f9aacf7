"""The stages of an export between the read and the storage: cut into parts and encode, compress, store.

``export_table`` links them with ``stages.staged``: the first two run on threads of their own, the
upload on the caller's thread, which hashes every stored byte (sha256) as it goes.
"""

import hashlib
import logging
import os
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from pipelines.export.compress import block_codec
from pipelines.export.encode import content_type, encoder_factory
from pipelines.export.spec import ExportSpec
from resources.export_storage import ExportStorage, PartWriter

log = logging.getLogger(__name__)

PROBE_ROWS = 64
COMPRESS_WORKERS = max(1, min(4, os.cpu_count() or 1))
COMPRESS_IN_FLIGHT = 2 * COMPRESS_WORKERS  # one block compressing and one queued per worker


@dataclass
class Piece:
    """Bytes of one part on their way to storage; ``last`` closes the part."""

    part: int
    data: bytes
    rows: int = 0
    raw_bytes: int = 0
    first_key: Any = None
    last_key: Any = None
    last: bool = False


def cut_and_encode(
    spec: ExportSpec, schema: pa.Schema
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[Piece]]:
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

    def stage(batches: Iterator[pa.RecordBatch]) -> Iterator[Piece]:
        index, encoder, rows, size = -1, None, 0, 0
        total_rows = total_size = 0
        for batch in batches:
            offset = 0
            while offset < batch.num_rows:
                if encoder is None:
                    index, encoder, rows, size = index + 1, new_encoder(), 0, 0
                    header = encoder.begin()
                    size += len(header)
                    yield Piece(index, header, raw_bytes=len(header))
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
                    yield Piece(
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
                    yield Piece(index, tail, raw_bytes=len(tail), last=True)
                    encoder = None
        if encoder is not None:
            tail = encoder.end()
            yield Piece(index, tail, raw_bytes=len(tail), last=True)

    return stage


def compress(spec: ExportSpec) -> Callable[[Iterator[Piece]], Iterator[Piece]]:
    """Stage: compress pieces on a small thread pool (zlib and zstd release the GIL), in order.

    Each part is one stream (a gzip member, zstd frames, or as is) made of independently compressed
    blocks; at most ``2 x COMPRESS_WORKERS`` pieces are in flight.
    """
    codec = block_codec(spec)
    window = 32 * 1024

    def stage(pieces: Iterator[Piece]) -> Iterator[Piece]:
        pending: deque[tuple[Piece, Future[bytes], bytes, bool, int, int]] = deque()
        opened, crc, size, tail = -1, 0, 0, b""

        def finish(item: tuple[Piece, Future[bytes], bytes, bool, int, int]) -> Piece:
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

    def add(self, piece: Piece) -> None:
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
        """Store the part's last bytes (still invisible) and describe it for the manifest."""
        self._writer.finish()
        return {
            "key": self.key,
            "rows": self.rows,
            "bytes": self.stored_bytes,
            "uncompressed_bytes": self.raw_bytes,
            "sha256": self._sha.hexdigest(),
            "first_key": self.first_key,
            "last_key": self.last_key,
        }

    def publish(self) -> None:
        self._writer.publish()

    def abort(self) -> None:
        self._writer.abort()


class StoredParts:
    """Every part of an export, stored but not yet visible under its name: ``publish`` them all
    just before the manifest, or ``discard`` them when the export fails."""

    def __init__(self, storage: ExportStorage, uploads: list[_PartUpload], parts: list[dict[str, Any]]):
        self.parts = parts
        self._storage = storage
        self._unpublished = list(uploads)
        self._published: list[str] = []

    def publish(self) -> None:
        while self._unpublished:
            self._unpublished[0].publish()
            self._published.append(self._unpublished.pop(0).key)

    def discard(self) -> None:
        """Leave nothing under a part name: abort the unpublished, delete the published (best effort:
        it must not hide the error that failed the export; a later export or the retention sweeps)."""
        _abort_all(self._unpublished)
        self._unpublished = []
        if self._published:
            try:
                self._storage.delete(self._published)
            except Exception as exc:  # best effort on the way out: the export's own error is the one raised
                log.warning("could not delete the parts of a failed export %s: %s", self._published, exc)
            self._published = []


def _abort_all(uploads: list[_PartUpload]) -> None:
    for upload in uploads:
        try:
            upload.abort()
        except Exception as exc:  # keep aborting the others; never hide the export's own error
            log.warning("could not discard part %s of a failed export: %s", upload.key, exc)


def store_parts(
    pieces: Iterator[Piece], storage: ExportStorage, prefix: str, spec: ExportSpec
) -> StoredParts:
    """Store every part, none of them visible yet; on failure nothing is left under a part name."""
    parts: list[dict[str, Any]] = []
    finished: list[_PartUpload] = []
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
                finished.append(current)
                current = None
    except BaseException:
        # No half-written part, nor a finished one (a temp file, a pending multipart upload), survives.
        _abort_all([*finished, *([current] if current is not None else [])])
        raise
    return StoredParts(storage, finished, parts)
