"""The Dagster asset per feed: one materialization ingests every new landing file into the feed's Delta table."""

import dagster as dg
from pydantic import Field

from pipelines.feeds import FeedSpec
from pipelines.ingest.runner import ingest_feed
from resources.lake import LakeResource


class IngestConfig(dg.Config):
    max_files_per_batch: int = Field(default=1000, gt=0, description="Files per Delta commit at most.")
    max_batches: int = Field(
        default=100, gt=0, description="Commits per run at most; the rest waits for the next run."
    )


def build_ingest_asset(feed: FeedSpec) -> dg.AssetsDefinition:
    check_name = "no_quarantined_files"

    @dg.asset(
        name=feed.name,
        group_name="bronze",
        kinds={"delta"},
        description=feed.description
        or f"Landing files of feed {feed.name!r}, appended to Delta exactly once.",
        check_specs=[
            dg.AssetCheckSpec(check_name, asset=feed.name, description="Every landing file was readable.")
        ],
    )
    def ingest_asset(
        context: dg.AssetExecutionContext, config: IngestConfig, lake: LakeResource
    ) -> dg.MaterializeResult:
        report = ingest_feed(
            feed,
            lake,
            max_files_per_batch=config.max_files_per_batch,
            max_batches=config.max_batches,
            log=context.log,
        )
        return dg.MaterializeResult(
            metadata={
                "files": report.files,
                "rows": report.rows,
                "bytes": report.bytes,
                "batches": len(report.batches),
                "replayed_batches": report.replayed_batches,
                "overwritten_files_skipped": len(report.overwritten_skipped),
                "quarantined_files": len(report.quarantined),
                "delta_version": report.delta_version if report.delta_version is not None else -1,
                "table_uri": dg.MetadataValue.path(lake.table_uri(feed.table_name)),
            },
            check_results=[
                dg.AssetCheckResult(
                    check_name=check_name,
                    passed=not report.quarantined,
                    severity=dg.AssetCheckSeverity.WARN,
                    metadata={
                        "quarantined_files": len(report.quarantined),
                        "examples": dg.MetadataValue.json(
                            [{"path": q.path, "error": q.error} for q in report.quarantined[:10]]
                        ),
                    },
                )
            ],
        )

    return ingest_asset
