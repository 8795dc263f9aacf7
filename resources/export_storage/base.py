"""The export storage interface: streamed part writes, create-only manifests, listing and signing."""

from abc import ABC, abstractmethod
from typing import BinaryIO, ClassVar

import dagster as dg


def check_key(key: str) -> str:
    """Reject keys that could escape the storage root or collide with temporary files."""
    segments = key.split("/")
    if not key or key.startswith("/") or any(s in ("", ".", "..") or s.startswith(".") for s in segments):
        raise ValueError(f"invalid export key {key!r}: use relative 'a/b/c' keys without dot segments")
    return key


class PartWriter(ABC):
    """A streamed upload of one object; nothing is visible under the key until it is published.

    Two ways to end it: ``close()`` (finish and publish at once), or ``finish()`` for every part of
    an export and then ``publish()`` for each, so that an export failing half-way leaves nothing
    under a final part name: finished parts are still invisible and ``abort()`` discards them.
    """

    @abstractmethod
    def write(self, data: bytes) -> None:
        """Append bytes to the object being written."""

    @abstractmethod
    def close(self) -> None:
        """Finish the object and make it visible under its key."""

    @abstractmethod
    def abort(self) -> None:
        """Discard whatever was written and not published; safe to call more than once and after a
        failed close."""

    def finish(self) -> None:
        """Store every byte written, still invisible under the key until ``publish()``.

        This default publishes at once (a writer that cannot defer); the storages' writers defer.
        """
        self.close()

    def publish(self) -> None:
        """Make a finished object visible under its key (nothing to do after the default ``finish``)."""
        return None

    def __enter__(self) -> "PartWriter":
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class ExportStorage(dg.ConfigurableResource, ABC):
    """Target of bulk exports. Implementations: ``LocalExportStorage`` and ``S3ExportStorage``."""

    # What kind of storage holds the exports ("file", "s3"), for the Dagster kinds of the assets.
    storage_kind: ClassVar[str] = ""

    @abstractmethod
    def open_part(self, key: str, content_type: str = "application/octet-stream") -> PartWriter:
        """Start a streamed, bounded-memory write of a data object."""

    @abstractmethod
    def put_manifest(self, key: str, data: bytes) -> None:
        """Create ``key`` with ``data`` only if it does not exist yet; raise FileExistsError otherwise."""

    @abstractmethod
    def open_read(self, key: str) -> BinaryIO:
        """A readable binary stream of an object (use as a context manager); FileNotFoundError if absent."""

    @abstractmethod
    def list_keys(self, prefix: str) -> list[str]:
        """Sorted keys of the complete objects whose key starts with ``prefix``."""

    @abstractmethod
    def uri_for(self, key: str) -> str:
        """Where a user or a tool finds the object (an absolute path or an ``s3://`` URI)."""

    @abstractmethod
    def abort_incomplete(self, prefix: str) -> int:
        """Discard unfinished writes under ``prefix`` (a crashed run's uploads); returns how many."""

    @abstractmethod
    def delete(self, keys: list[str]) -> None:
        """Remove complete objects (retention); missing keys are ignored."""

    @abstractmethod
    def presign(self, key: str, expires_s: int) -> str:
        """A URL that lets anyone GET ``key`` for ``expires_s`` seconds (a ``file://`` URL locally)."""

    def read_bytes(self, key: str) -> bytes:
        """Whole object; for small objects such as manifests."""
        with self.open_read(key) as stream:
            return stream.read()
