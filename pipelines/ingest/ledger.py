"""The file ledger: which landing file went into which batch, kept as a small Delta table.

A batch's file list is written here *before* its data is appended (a write-ahead plan), so a run that
dies between the two replays exactly the same files under the same batch number.

Lookups are by ``key`` — the path relative to the feed's landing root — with a filter the Delta file
statistics prune (min/max key per ledger file). Delta truncates string statistics to 64 characters,
so a key without the long shared prefix keeps them useful: checking a handful of new names does not
read the names of every file ever ingested.
"""

import logging
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.dataset as ds
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from pipelines.delta_once import append_once, transaction_version
from pipelines.feeds import FeedSpec
from pipelines.ingest.landing_file import LandingFile
from resources.delta_arrow import read_delta
from resources.filesystem import FileSystemSettings
from resources.lake import LakeResource

# Planned batches between two automatic compactions of the ledger.
TIDY_EVERY_BATCHES = 25

LEDGER_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),
        pa.field("size", pa.int64(), nullable=False),
        pa.field("mtime_ns", pa.int64(), nullable=False),
        pa.field("batch_id", pa.int64(), nullable=False),
        pa.field("planned_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)


class FileLedger:
    def __init__(
        self,
        uri: str,
        storage_options: dict[str, str],
        feed_name: str,
        landing_root: str = "",
        filesystem: FileSystemSettings | None = None,
    ) -> None:
        self.uri = uri
        self.storage_options = storage_options
        self.filesystem = filesystem  # what scans read the ledger's files with (delta_arrow says why)
        self.landing_root = landing_root.rstrip("/") + "/" if landing_root else ""
        # Planning a batch number is itself an application transaction, so two runs of one feed
        # can never plan the same number with different files.
        self.app_id = f"lakerelay-ledger:{feed_name}"

    @classmethod
    def for_feed(cls, feed: FeedSpec, lake: LakeResource) -> "FileLedger":
        root = lake.resolve(feed.landing_uri(lake.landing_uri))[1]
        return cls(
            lake.state_uri("ledger", feed.name),
            lake.storage_options(),
            feed.name,
            root,
            lake.filesystem_settings(),
        )

    def key(self, path: str) -> str:
        return path[len(self.landing_root) :] if path.startswith(self.landing_root) else path

    def last_batch(self) -> int:
        """The highest planned batch number (0 before the first plan); read from the log only."""
        return transaction_version(self.uri, self.storage_options, self.app_id)

    def _scan(self, condition: ds.Expression) -> pa.Table:
        try:
            table = DeltaTable(self.uri, storage_options=self.storage_options)
        except TableNotFoundError:
            return LEDGER_SCHEMA.empty_table()
        return read_delta(table, self.filesystem, filter=condition)

    def lookup(self, paths: list[str]) -> dict[str, LandingFile]:
        """The latest recorded identity of each of ``paths`` that the ledger knows."""
        if not paths:
            return {}
        keys = [self.key(p) for p in paths]
        condition = (
            (ds.field("key") >= min(keys))
            & (ds.field("key") <= max(keys))
            & ds.field("key").isin(pa.array(keys, pa.string()))
        )
        rows = self._scan(condition).sort_by("batch_id")
        known: dict[str, LandingFile] = {}
        # A path planned twice (a re-ingested overwrite) keeps its latest identity.
        for path, size, mtime in zip(
            rows["path"].to_pylist(), rows["size"].to_pylist(), rows["mtime_ns"].to_pylist(), strict=True
        ):
            known[path] = LandingFile(path, size, mtime)
        return known

    def lookup_batches(self, paths: list[str]) -> dict[str, int]:
        """The latest batch that planned each of ``paths`` that the ledger knows."""
        if not paths:
            return {}
        keys = [self.key(p) for p in paths]
        rows = self._scan(ds.field("key").isin(pa.array(keys, pa.string())))
        latest: dict[str, int] = {}
        for path, batch in zip(rows["path"].to_pylist(), rows["batch_id"].to_pylist(), strict=True):
            latest[path] = max(batch, latest.get(path, 0))
        return latest

    def files_of_batch(self, batch_id: int) -> list[LandingFile]:
        rows = self._scan(ds.field("batch_id") == batch_id)
        return sorted(
            LandingFile(r["path"], r["size"], r["mtime_ns"])
            for r in rows.select(["path", "size", "mtime_ns"]).to_pylist()
        )

    def plan(self, batch_id: int, files: list[LandingFile]) -> bool:
        """Record the files of ``batch_id``; False when another run planned that batch first."""
        now = datetime.now(UTC)
        table = pa.table(
            {
                "key": [self.key(f.path) for f in files],
                "path": [f.path for f in files],
                "size": [f.size for f in files],
                "mtime_ns": [f.mtime_ns for f in files],
                "batch_id": [batch_id] * len(files),
                "planned_at": [now] * len(files),
            },
            schema=LEDGER_SCHEMA,
        )
        # Sorted rows give each ledger file a tight min/max key, which is what lookups prune on.
        planned = append_once(self.uri, self.storage_options, table.sort_by("key"), self.app_id, batch_id)
        if planned and batch_id % TIDY_EVERY_BATCHES == 0:
            self._tidy()
        return planned

    def _tidy(self) -> None:
        """Compact and checkpoint the ledger, so lookups stay as cheap at 100,000 files as at 1,000.

        Between runs of the maintenance schedule the ledger otherwise gains one small file and one
        log entry per batch. Best effort: a failure here costs speed, never correctness.
        """
        try:
            table = DeltaTable(self.uri, storage_options=self.storage_options)
            table.optimize.compact()
            table.create_checkpoint()
        except Exception as exc:  # a boundary: the plan is already durable, and tidying can wait
            logging.getLogger(__name__).warning("could not compact the file ledger %s: %s", self.uri, exc)
