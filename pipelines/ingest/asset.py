"""The Dagster asset per feed: one materialization ingests every new landing file into the feed's Delta table.

Its metadata: Dagster's own keys (``dagster/uri``, ``dagster/table_name``, ``dagster/column_schema``,
``dagster/row_count``: the table after the run), then the run's figures under a common prefix so that
related keys sort together — ``ingest_*`` (what landed), ``listing_*``, ``overwritten_*``,
``quarantine_*``, ``schema_*`` — with units in the names (``_bytes``, ``_s``). Two checks: the
quarantine rate, and ``landing_files_unchanged_after_ingestion``, which fails with the paths of landing
files that changed after they were ingested.
"""

import time
from typing import Any

import dagster as dg
import pyarrow as pa
from pydantic import Field

from pipelines.feeds import FeedSpec
from pipelines.ingest.context import UNCHANGED_CHECK, IngestReport
from pipelines.ingest.runner import ingest_feed
from resources.lake import LakeResource

QUARANTINE_CHECK = "quarantine_rate_within_threshold"
# lakerelay's own columns, described in the column schema (README, "What lands in the table").
COLUMN_DESCRIPTIONS = {
    "_source_file": "Landing path (bucket/key on S3)",
    "_source_row": "0-based number of the record among the file's readable records",
    "_source_modified_at": "The file's mtime / S3 LastModified",
    "_ingested_at": "When the batch was read",
    "_batch_id": "Batch number: the commit's application transaction (feed app id, batch)",
    "_rescued_data": "Values that did not fit (JSON, with _file_path); null when nothing was rescued",
}


class IngestConfig(dg.Config):
    max_files_per_batch: int | None = Field(
        default=None, gt=0, description="Files per Delta commit at most (default: the feed's setting)."
    )
    max_bytes_per_batch: int | None = Field(
        default=None, ge=0, description="Bytes per Delta commit at most, soft (default: the feed's setting)."
    )
    max_batches: int = Field(
        default=100, gt=0, description="Commits per run at most; the rest waits for the next run."
    )
    full_listing: bool | None = Field(
        default=None,
        description=(
            "Force (true) or forbid (false) a full listing of the landing zone; false also skips the "
            "feed's late-name check (only names after the cursor are listed)."
        ),
    )


def build_ingest_asset(feed: FeedSpec) -> dg.AssetsDefinition:
    @dg.asset(
        name=feed.name,
        group_name="bronze",
        # The source format as Dagster's kind names it: a JSON array file is JSON too.
        kinds={"delta", "json" if feed.format == "json_array" else feed.format},
        metadata={"dagster/table_name": feed.table_name},
        # One ingest of a feed at a time (the instance allows one slot per pool); overlapping runs
        # would still commit each file once (ledger + app transaction), but only waste work.
        pool=f"lakerelay_ingest_{feed.name}",
        # A transient storage error mid-run: the replay re-plans the same batch, committed once.
        retry_policy=dg.RetryPolicy(max_retries=2, delay=5, backoff=dg.Backoff.EXPONENTIAL),
        description=feed.description
        or f"Landing files of feed {feed.name!r}, appended to Delta exactly once.",
        check_specs=_check_specs(feed),
    )
    def ingest_asset(
        context: dg.AssetExecutionContext, config: IngestConfig, lake: LakeResource
    ) -> dg.MaterializeResult:
        started = time.monotonic()
        report = ingest_feed(
            feed,
            lake,
            max_files_per_batch=config.max_files_per_batch,
            max_bytes_per_batch=config.max_bytes_per_batch,
            max_batches=config.max_batches,
            full_listing=config.full_listing,
            log=context.log,
        )
        duration_s = time.monotonic() - started
        quarantine_uri = _uri(lake.state_uri("quarantine", feed.name))
        return dg.MaterializeResult(
            metadata=_ingest_metadata(lake, feed, report, duration_s, quarantine_uri),
            check_results=[quarantine_check(feed, report, quarantine_uri), unchanged_check(report)],
        )

    return ingest_asset


def _check_specs(feed: FeedSpec) -> list[dg.AssetCheckSpec]:
    return [
        dg.AssetCheckSpec(
            QUARANTINE_CHECK,
            asset=feed.name,
            description=(
                f"Bad records and unreadable files are at most {feed.max_quarantine_rate:.2%} of what "
                "the run read (feed option max_quarantine_rate)."
            ),
        ),
        dg.AssetCheckSpec(
            UNCHANGED_CHECK,
            asset=feed.name,
            description=(
                "No landing file changed (size or mtime) after it was ingested; a changed file's new "
                "content is not ingested unless the feed sets allow_overwrites."
            ),
        ),
    ]


def _ingest_metadata(
    lake: LakeResource,
    feed: FeedSpec,
    report: IngestReport,
    duration_s: float,
    quarantine_uri: dg.MetadataValue,
) -> dict[str, Any]:
    """The ingest asset's materialization metadata: the table, then what the run read and set aside."""
    return {
        **table_metadata(lake.table_uri(feed.table_name), feed.table_name, report),
        "ingest_files": report.files,
        "ingest_rows": report.rows,
        "ingest_bytes": report.bytes,
        "ingest_batches": len(report.batches),
        "ingest_batches_replayed": report.replayed_batches,
        "ingest_duration_s": round(duration_s, 3),
        "listing_files": report.listed_files,
        "listing_full": report.full_listing,
        "listing_late_files": len(report.late_files),
        "listing_unsettled_files": len(report.unsettled_files),
        "overwritten_files_skipped": len(report.overwritten_skipped),
        "overwritten_files_reingested": len(report.overwritten_reingested),
        "quarantine_files": len(report.quarantined),
        "quarantine_bad_records": report.bad_records,
        "quarantine_table_uri": quarantine_uri,
        "schema_new_columns": dg.MetadataValue.json(report.new_columns),
        "schema_ignored_columns": dg.MetadataValue.json(report.ignored_columns),
        "schema_rescued_rows": report.rescued_rows,
        "schema_versions_added": len(report.schema_versions),
    }


def quarantine_check(
    feed: FeedSpec, report: IngestReport, quarantine_uri: dg.MetadataValue
) -> dg.AssetCheckResult:
    """Warns when bad records and unreadable files exceed the feed's max_quarantine_rate of the run's read."""
    return dg.AssetCheckResult(
        check_name=QUARANTINE_CHECK,
        passed=report.quarantine_rate <= feed.max_quarantine_rate,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "quarantine_rate": report.quarantine_rate,
            "quarantine_rate_threshold": feed.max_quarantine_rate,
            "quarantine_files": len(report.quarantined),
            "quarantine_bad_records": report.bad_records,
            "quarantine_table_uri": quarantine_uri,
            "quarantine_examples": dg.MetadataValue.json(
                [{"path": q.path, "error": q.error} for q in report.quarantined[:10]]
            ),
        },
    )


def unchanged_check(report: IngestReport) -> dg.AssetCheckResult:
    """Fails, naming the paths, while landing files differ from what was ingested (the listing keeps
    finding them on every run until they are renamed, removed or the feed allows overwrites)."""
    changed = report.overwritten_skipped
    return dg.AssetCheckResult(
        check_name=UNCHANGED_CHECK,
        passed=not changed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=(
            f"{len(changed)} landing files changed after ingestion, their new content is not ingested: "
            f"{', '.join(changed[:3])}{' …' if len(changed) > 3 else ''}. Write changed content under a new "
            "name, or set the feed's allow_overwrites"
            if changed
            else None
        ),
        metadata={
            "changed_files": dg.MetadataValue.json(changed[:100]),
            "changed_file_count": len(changed),
            "reingested_files": dg.MetadataValue.json(report.overwritten_reingested[:100]),
        },
    )


def table_metadata(table_uri: str, table_name: str, report: IngestReport) -> dict[str, dg.MetadataValue]:
    """Dagster's table keys for the feed's Delta table after the run (no schema or rows before its
    first commit), and its version (-1: no table yet)."""
    metadata: dict[str, dg.MetadataValue] = {
        "dagster/uri": _uri(table_uri),
        "dagster/table_name": dg.MetadataValue.text(table_name),
        "delta_version": dg.MetadataValue.int(
            report.delta_version if report.delta_version is not None else -1
        ),
    }
    if report.table_schema is not None:
        metadata["dagster/column_schema"] = dg.MetadataValue.table_schema(column_schema(report.table_schema))
    if report.table_rows is not None:
        metadata["dagster/row_count"] = dg.MetadataValue.int(report.table_rows)
    return metadata


def column_schema(schema: pa.Schema) -> dg.TableSchema:
    """The Delta table's columns as Dagster shows them (Arrow type names, lakerelay's columns described)."""
    return dg.TableSchema(
        columns=[
            dg.TableColumn(f.name, str(f.type), description=COLUMN_DESCRIPTIONS.get(f.name)) for f in schema
        ]
    )


def _uri(uri: str) -> dg.MetadataValue:
    """A clickable location: a URL for object stores (s3://…), a path for local tables."""
    return dg.MetadataValue.url(uri) if "://" in uri else dg.MetadataValue.path(uri)
