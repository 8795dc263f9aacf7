"""A landing file's identity, on its own so that the ledger and discovery can both use it."""

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class LandingFile:
    """A file in the landing zone; (path, size, mtime) is its identity for exactly-once ingestion."""

    path: str
    size: int
    mtime_ns: int
