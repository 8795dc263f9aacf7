"""The state one ingest run carries: what it works on (``IngestContext``) and what it reports
(``IngestReport``, the asset's materialization metadata)."""

import logging
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.fs as pafs

from pipelines.feeds import FeedSpec
from pipelines.ingest.reader import Quarantined
from resources.lake import LakeResource

# The asset check that fails while a landing file changed after it was ingested (its new content
# is not ingested unless the feed allows overwrites).
UNCHANGED_CHECK = "landing_files_unchanged_after_ingestion"


@dataclass
class IngestReport:
    batches: list[int] = field(default_factory=list)
    files: int = 0
    rows: int = 0
    bytes: int = 0
    listed_files: int = 0
    full_listing: bool = False
    late_files: list[str] = field(default_factory=list)  # planned this run, sorting before the cursor
    unsettled_files: list[str] = field(default_factory=list)  # left for a later run: maybe still written
    overwritten_skipped: list[str] = field(default_factory=list)
    overwritten_reingested: list[str] = field(default_factory=list)
    quarantined: list[Quarantined] = field(default_factory=list)
    bad_records: int = 0
    rescued_rows: int = 0
    new_columns: list[str] = field(default_factory=list)
    ignored_columns: list[str] = field(default_factory=list)
    schema_versions: list[int] = field(default_factory=list)
    replayed_batches: int = 0
    # The table after the run (None: it does not exist yet): version, schema and row count.
    delta_version: int | None = None
    table_schema: pa.Schema | None = None
    table_rows: int | None = None  # from Delta's per-file statistics, no scan

    @property
    def quarantine_rate(self) -> float:
        """Bad records and unreadable files over everything read."""
        bad = self.bad_records + len(self.quarantined)
        return bad / max(1, self.rows + bad)


@dataclass
class IngestContext:
    feed: FeedSpec
    lake: LakeResource
    options: dict[str, str]
    table_uri: str
    landing_fs: pafs.FileSystem
    report: IngestReport
    log: logging.Logger | logging.LoggerAdapter
