"""The Dagster asset per feed: one materialization ingests every new landing file into the feed's Delta table."""

import dagster as dg
from pydantic import Field

from pipelines.feeds import FeedSpec
from pipelines.ingest.runner import ingest_feed
from resources.lake import LakeResource

QUARANTINE_CHECK = "quarantine_rate_within_threshold"


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
        default=None, description="Force (true) or forbid (false) a full listing of the landing zone."
    )


def build_ingest_asset(feed: FeedSpec) -> dg.AssetsDefinition:
    @dg.asset(
        name=feed.name,
        group_name="bronze",
        kinds={"delta"},
        # One ingest of a feed at a time (the instance allows one slot per pool); overlapping runs
        # would still commit each file once (ledger + app transaction), but only waste work.
        pool=f"lakerelay_ingest_{feed.name}",
        # A transient storage error mid-run: the replay re-plans the same batch, committed once.
        retry_policy=dg.RetryPolicy(max_retries=2, delay=5, backoff=dg.Backoff.EXPONENTIAL),
        description=feed.description
        or f"Landing files of feed {feed.name!r}, appended to Delta exactly once.",
        check_specs=[
            dg.AssetCheckSpec(
                QUARANTINE_CHECK,
                asset=feed.name,
                description=(
                    f"Bad records and unreadable files are at most {feed.max_quarantine_rate:.2%} of what "
                    "the run read (feed option max_quarantine_rate)."
                ),
            )
        ],
    )
    def ingest_asset(
        context: dg.AssetExecutionContext, config: IngestConfig, lake: LakeResource
    ) -> dg.MaterializeResult:
        report = ingest_feed(
            feed,
            lake,
            max_files_per_batch=config.max_files_per_batch,
            max_bytes_per_batch=config.max_bytes_per_batch,
            max_batches=config.max_batches,
            full_listing=config.full_listing,
            log=context.log,
        )
        quarantine_uri = lake.state_uri("quarantine", feed.name)
        return dg.MaterializeResult(
            metadata={
                "files": report.files,
                "rows": report.rows,
                "bytes": report.bytes,
                "batches": len(report.batches),
                "replayed_batches": report.replayed_batches,
                "listed_files": report.listed_files,
                "full_listing": report.full_listing,
                "overwritten_files_skipped": len(report.overwritten_skipped),
                "overwritten_files_reingested": len(report.overwritten_reingested),
                "quarantined_files": len(report.quarantined),
                "bad_records": report.bad_records,
                "rescued_rows": report.rescued_rows,
                "new_columns": dg.MetadataValue.json(report.new_columns),
                "ignored_columns": dg.MetadataValue.json(report.ignored_columns),
                "schema_versions_added": len(report.schema_versions),
                "delta_version": report.delta_version if report.delta_version is not None else -1,
                "table_uri": dg.MetadataValue.path(lake.table_uri(feed.table_name)),
                "quarantine_table_uri": dg.MetadataValue.path(quarantine_uri),
            },
            check_results=[
                dg.AssetCheckResult(
                    check_name=QUARANTINE_CHECK,
                    passed=report.quarantine_rate <= feed.max_quarantine_rate,
                    severity=dg.AssetCheckSeverity.WARN,
                    metadata={
                        "quarantine_rate": report.quarantine_rate,
                        "threshold": feed.max_quarantine_rate,
                        "quarantined_files": len(report.quarantined),
                        "bad_records": report.bad_records,
                        "quarantine_table_uri": dg.MetadataValue.path(quarantine_uri),
                        "examples": dg.MetadataValue.json(
                            [{"path": q.path, "error": q.error} for q in report.quarantined[:10]]
                        ),
                    },
                )
            ],
        )

    return ingest_asset
