"""``lakerelay.Feed``: a landing source ingested, Auto Loader style, into one Delta table."""

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from pipelines.components.declaration import Declaration, only_set
from pipelines.feeds import CsvOptions, FeedSpec

Duration = str  # "30s", "15 minutes", "1 hour", "1 day" (pipelines.feeds.parse_duration_s)


class CsvModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    header: bool = True
    delimiter: str = ","
    quote: str = '"'
    escape: str | None = None


class Feed(Declaration):
    """A landing zone (a folder or an S3 prefix) ingested into a Delta table; unset options take the
    defaults of ``pipelines.feeds.FeedSpec`` (docs/reference.md lists them)."""

    EXAMPLE: ClassVar[str] = """\
# Feed @name@: files landing under <landing root>/@name@ (LAKERELAY_LANDING_URI, default
# .lakerelay/landing), ingested once each into the Delta table @name@. Route it to a sink with a
# pipelines.components.Route. Every option and its default: docs/reference.md.
type: @type@

attributes:
  name: @name@
  source: @name@            # a folder under the landing root, an absolute folder, or s3://bucket/prefix
  format: json              # json (JSON lines) | json_array | csv | parquet
  # schema_hints:           # pinned column types; others are inferred
  #   ts: timestamp
  #   status_code: bigint
  # schema_evolution_mode: add_new_columns   # | rescue | fail_on_new_columns | none
  # settle_time: 0s         # take a file only once its mtime is this old (writers that append)
  # enrich: []              # Spark SQL select expressions added before posting ([] = as they are)
"""

    name: str = Field(description="The feed's name: its Delta table, asset and jobs are named after it.")
    source: str | None = Field(
        default=None,
        description="Where files land: a path under the lake's landing root, an absolute folder or s3://bucket/prefix.",
    )
    table: str | None = Field(
        default=None, description="Delta table name under the lake root (default: name)."
    )
    format: Literal["json", "json_array", "csv", "parquet"] | None = Field(
        default=None, description="json: JSON lines; json_array: one array per file; csv; parquet."
    )
    csv: CsvModel | None = Field(default=None, description="CSV dialect: header, delimiter, quote, escape.")
    encoding: str | None = Field(default=None, description="Text encoding of json/csv files (default utf-8).")
    schema_hints: str | dict[str, str] | None = Field(
        default=None, description='Pinned column types: "ts timestamp, bytes bigint" or a mapping.'
    )
    schema_evolution_mode: Literal["add_new_columns", "rescue", "fail_on_new_columns", "none"] | None = Field(
        default=None,
        description="New columns: added to the table; kept in the rescued-data column; fail the batch; ignored.",
    )
    infer_max_files: int | None = Field(default=None, gt=0, description="Files read to infer the schema.")
    recursive: bool | None = Field(default=None, description="Take files in sub-folders too.")
    path_glob: str | None = Field(default=None, description='Only names matching this glob, e.g. "*.json".')
    modified_after: str | None = Field(default=None, description="ISO 8601: ignore files modified before.")
    listing: Literal["incremental", "full"] | None = Field(
        default=None,
        description="incremental: names after the cursor each run; full: the whole zone each run.",
    )
    backfill_interval: Duration | None = Field(
        default=None, description="How often a full listing also runs (finds overwritten files)."
    )
    max_files_per_batch: int | None = Field(default=None, gt=0, description="Files per Delta commit at most.")
    max_bytes_per_batch: int | None = Field(
        default=None, ge=0, description="Bytes per Delta commit at most (0: no limit)."
    )
    allow_overwrites: bool | None = Field(
        default=None, description="Ingest a file again when it changes (size or mtime) after ingestion."
    )
    read_deadline: Duration | None = Field(
        default=None, description="How long transport errors reading the landing zone are retried."
    )
    settle_time: Duration | None = Field(
        default=None, description="Take a file only once its mtime is this old (for writers that append)."
    )
    find_late_names: bool | None = Field(
        default=None, description="Each run also finds files named before the cursor (out-of-order names)."
    )
    max_quarantine_rate: float | None = Field(
        default=None, ge=0, le=1, description="Share of quarantined lines above which the ingest check fails."
    )
    enrich: list[str] | None = Field(
        default=None,
        description="Spark SQL select expressions added before posting (default: the built-in "
        "enrichment where the table has its columns; [] posts records as they are).",
    )
    mode: Literal["triggered", "continuous"] | None = Field(
        default=None,
        description="triggered: a sensor launches a run when files land; continuous: one long-lived run "
        "relays each file as it lands (docs/operating.md: when to choose which).",
    )
    notification_queue: str | None = Field(
        default=None,
        description="Continuous mode on S3: the SQS queue URL receiving the bucket's object-created "
        "notifications (without it the run lists the landing zone every second).",
    )
    description: str | None = Field(default=None, description="Shown on the feed's asset in the UI.")

    def spec(self) -> FeedSpec:
        """The feed as the pipeline knows it; a value FeedSpec refuses names this file."""
        values = only_set(self)
        if isinstance(values.get("csv"), dict):
            values["csv"] = CsvOptions(**values["csv"])
        if values.get("enrich") is not None:
            values["enrich"] = tuple(values["enrich"])
        if isinstance(values.get("schema_hints"), dict):
            values["schema_hints"] = ", ".join(f"{k} {v}" for k, v in values["schema_hints"].items())
        try:
            return FeedSpec(**values)
        except (ValueError, LookupError) as exc:
            raise ValueError(f"{self.declared_in}: {exc}") from None
