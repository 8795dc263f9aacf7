"""Table maintenance per feed: compact small files (``optimize.compact``) and vacuum old ones.

Ingest appends one file per batch and the ledger one per plan, so both grow many small files;
compaction keeps reads and ledger lookups fast. Compaction commits add no rows (change data feed
emits nothing for them) and keep the application transactions, so posting and exactly-once are
unaffected. Vacuum deletes files unreferenced for longer than the retention.
"""

from dataclasses import dataclass

import dagster as dg
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError
from pydantic import Field

from pipelines.delta_once import writer_properties
from pipelines.feeds import FeedSpec
from resources.lake import LakeResource

DEFAULT_RETENTION_HOURS = 168  # Delta's own default: a week of time travel for readers and posting


@dataclass
class MaintenanceResult:
    uri: str
    files_added: int = 0
    files_removed: int = 0
    vacuumed_files: int = 0
    exists: bool = True


def maintain_table(
    uri: str, storage_options: dict[str, str], retention_hours: float, target_size: int | None = None
) -> MaintenanceResult:
    try:
        table = DeltaTable(uri, storage_options=storage_options)
    except TableNotFoundError:
        return MaintenanceResult(uri, exists=False)
    metrics = table.optimize.compact(target_size=target_size, writer_properties=writer_properties())
    vacuumed = table.vacuum(
        retention_hours=int(retention_hours),
        dry_run=False,
        # Below Delta's 7-day floor only when asked for explicitly (the setting is the opt-in).
        enforce_retention_duration=retention_hours >= DEFAULT_RETENTION_HOURS,
    )
    # A checkpoint makes the next reader replay one Parquet file instead of every JSON commit.
    table.create_checkpoint()
    return MaintenanceResult(
        uri, metrics.get("numFilesAdded", 0), metrics.get("numFilesRemoved", 0), len(vacuumed)
    )


def maintain_feed(feed: FeedSpec, lake: LakeResource, retention_hours: float) -> list[MaintenanceResult]:
    """Compact and vacuum the feed's table, its file ledger and its quarantine table."""
    options = lake.storage_options()
    uris = [
        lake.table_uri(feed.table_name),
        lake.state_uri("ledger", feed.name),
        lake.state_uri("quarantine", feed.name),
    ]
    return [maintain_table(uri, options, retention_hours) for uri in uris]


class MaintenanceConfig(dg.Config):
    retention_hours: float = Field(
        default=DEFAULT_RETENTION_HOURS,
        ge=0,
        description="Vacuum deletes files unreferenced for longer than this; below 168 disables Delta's safety check.",
    )


def build_maintenance_asset(feed: FeedSpec) -> dg.AssetsDefinition:
    @dg.asset(
        name=f"{feed.name}_maintenance",
        group_name="maintenance",
        deps=[dg.AssetKey(feed.name)],
        description=f"Compacts and vacuums feed {feed.name!r}: its table, file ledger and quarantine table.",
    )
    def maintenance_asset(
        context: dg.AssetExecutionContext, config: MaintenanceConfig, lake: LakeResource
    ) -> dg.MaterializeResult:
        results = maintain_feed(feed, lake, config.retention_hours)
        for result in results:
            context.log.info(
                "%s: compacted %d files into %d, vacuumed %d",
                result.uri,
                result.files_removed,
                result.files_added,
                result.vacuumed_files,
            )
        return dg.MaterializeResult(
            metadata={
                "files_compacted": sum(r.files_removed for r in results),
                "files_written": sum(r.files_added for r in results),
                "files_vacuumed": sum(r.vacuumed_files for r in results),
                "retention_hours": config.retention_hours,
            }
        )

    return maintenance_asset
