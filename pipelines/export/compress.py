"""Compression of export parts as independent blocks, so several threads can compress one part.

Each part is one standard stream (a gzip member, concatenated zstd frames, or as is) that any
decoder reads; zlib and zstd release the GIL, so blocks compress in parallel on a small pool.
"""

import struct
import zlib
from abc import ABC, abstractmethod

import pyarrow as pa

from pipelines.export.spec import ExportSpec


class BlockCodec(ABC):
    """Compresses a part as independent blocks, so several threads can compress one part at once.

    ``block()`` is a pure function of its input (safe to run in parallel); ``header()``/``trailer()``
    frame the part. The concatenation is one standard stream that any decoder reads.
    """

    def header(self) -> bytes:
        return b""

    @abstractmethod
    def block(self, data: bytes, previous: bytes, last: bool) -> bytes:
        """Compressed ``data``; ``previous`` is the uncompressed tail before it (a dictionary)."""

    def trailer(self, crc: int, size: int) -> bytes:
        return b""


class _Identity(BlockCodec):
    def block(self, data: bytes, previous: bytes, last: bool) -> bytes:
        return data


class _Gzip(BlockCodec):
    """One gzip member per part, pigz style: each block is raw deflate primed with the previous 32 KiB
    and ended by a sync flush (the last one by a final block), then the CRC-32 and size trailer."""

    WINDOW = 32 * 1024

    def __init__(self, level: int) -> None:
        self._level = level

    def header(self) -> bytes:
        return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # gzip, deflate, no name, mtime 0, OS unknown

    def block(self, data: bytes, previous: bytes, last: bool) -> bytes:
        if previous:
            z = zlib.compressobj(self._level, zlib.DEFLATED, -15, zdict=previous)
        else:
            z = zlib.compressobj(self._level, zlib.DEFLATED, -15)
        return z.compress(data) + z.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)

    def trailer(self, crc: int, size: int) -> bytes:
        return struct.pack("<II", crc & 0xFFFFFFFF, size & 0xFFFFFFFF)


class _Zstd(BlockCodec):
    """One zstd frame per block: concatenated frames are a valid zstd stream (no zstd package needed)."""

    def __init__(self, level: int) -> None:
        self._codec = pa.Codec("zstd", compression_level=level)

    def block(self, data: bytes, previous: bytes, last: bool) -> bytes:
        return self._codec.compress(data, asbytes=True) if data else b""


def block_codec(spec: ExportSpec) -> BlockCodec:
    if spec.format == "parquet" or spec.compression == "none":
        return _Identity()  # Parquet compresses its pages itself
    if spec.compression == "gzip":
        return _Gzip(spec.compression_level)
    return _Zstd(spec.compression_level)
