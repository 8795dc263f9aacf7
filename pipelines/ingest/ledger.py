"""The file ledger: which landing file went into which batch, kept as a small Delta table.

A batch's file list is written here *before* its data is appended (a write-ahead plan), so a run that
dies between the two replays exactly the same files under the same batch number.
"""

from dataclasses import dataclass
from datetime import UTC, datetime

import pyarrow as pa
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from pipelines.delta_once import append_once
from pipelines.ingest.discovery import LandingFile

LEDGER_SCHEMA = pa.schema(
    [
        pa.field("path", pa.string(), nullable=False),
        pa.field("size", pa.int64(), nullable=False),
        pa.field("mtime_ns", pa.int64(), nullable=False),
        pa.field("batch_id", pa.int64(), nullable=False),
        pa.field("planned_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)


@dataclass
class LedgerState:
    """What the ledger knows: each path's identity and batch, and the highest planned batch."""

    files: dict[str, LandingFile]
    batch_of: dict[str, int]
    last_batch: int

    def files_of_batch(self, batch_id: int) -> list[LandingFile]:
        return sorted(f for path, f in self.files.items() if self.batch_of[path] == batch_id)


class FileLedger:
    def __init__(self, uri: str, storage_options: dict[str, str], feed_name: str) -> None:
        self.uri = uri
        self.storage_options = storage_options
        # Planning a batch number is itself an application transaction, so two runs of one feed
        # can never plan the same number with different files.
        self.app_id = f"lakerelay-ledger:{feed_name}"

    def load(self) -> LedgerState:
        try:
            table = pa.table(DeltaTable(self.uri, storage_options=self.storage_options).to_pyarrow_table())
        except TableNotFoundError:
            return LedgerState({}, {}, 0)
        files: dict[str, LandingFile] = {}
        batch_of: dict[str, int] = {}
        # A path planned twice (re-ingested overwrite) keeps its latest identity.
        for row in table.sort_by("batch_id").to_pylist():
            files[row["path"]] = LandingFile(row["path"], row["size"], row["mtime_ns"])
            batch_of[row["path"]] = row["batch_id"]
        last = max(batch_of.values(), default=0)
        return LedgerState(files, batch_of, last)

    def plan(self, batch_id: int, files: list[LandingFile]) -> bool:
        """Record the files of ``batch_id``; False when another run planned that batch first."""
        now = datetime.now(UTC)
        table = pa.table(
            {
                "path": [f.path for f in files],
                "size": [f.size for f in files],
                "mtime_ns": [f.mtime_ns for f in files],
                "batch_id": [batch_id] * len(files),
                "planned_at": [now] * len(files),
            },
            schema=LEDGER_SCHEMA,
        )
        return append_once(self.uri, self.storage_options, table, self.app_id, batch_id)
