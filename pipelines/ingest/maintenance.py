"""Table maintenance per feed: compact small files (``optimize.compact``) and vacuum old ones.

Ingest appends one file per batch and the ledger one per plan, so both grow many small files;
compaction keeps reads and ledger lookups fast. Compaction commits add no rows and keep the
application transactions, so posting and exactly-once are unaffected. Vacuum deletes files unreferenced for longer than the retention.
"""

from collections.abc import Iterator
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


def maintenance_asset_key(feed: FeedSpec) -> dg.AssetKey:
    return dg.AssetKey(f"{feed.name}_maintenance")


def build_maintenance_asset(feeds: FeedSpec | list[FeedSpec]) -> dg.AssetsDefinition:
    """``<feed>_maintenance`` for each feed: one op for all of them (a run maintains the feeds
    selected), so that a deployment of many feeds has one maintenance asset definition, job and
    schedule, not one of each per feed."""
    feeds = [feeds] if isinstance(feeds, FeedSpec) else feeds
    by_key = {maintenance_asset_key(feed): feed for feed in feeds}

    @dg.multi_asset(
        name="feeds_maintenance" if len(feeds) != 1 else f"{feeds[0].name}_maintenance",
        specs=[
            dg.AssetSpec(
                key,
                group_name="maintenance",
                deps=[dg.AssetKey(feed.name)],
                skippable=True,
                description=f"Compacts and vacuums feed {feed.name!r}: its table, file ledger and quarantine table.",
            )
            for key, feed in by_key.items()
        ],
        can_subset=True,
    )
    def maintenance_asset(
        context: dg.AssetExecutionContext, config: MaintenanceConfig, lake: LakeResource
    ) -> Iterator[dg.MaterializeResult]:
        for key in sorted(context.selected_asset_keys, key=lambda k: k.to_user_string()):
            feed = by_key[key]
            results = maintain_feed(feed, lake, config.retention_hours)
            for result in results:
                context.log.info(
                    "%s: compacted %d files into %d, vacuumed %d",
                    result.uri,
                    result.files_removed,
                    result.files_added,
                    result.vacuumed_files,
                )
            yield dg.MaterializeResult(
                asset_key=key,
                metadata={
                    "files_compacted": sum(r.files_removed for r in results),
                    "files_written": sum(r.files_added for r in results),
                    "files_vacuumed": sum(r.vacuumed_files for r in results),
                    "retention_hours": config.retention_hours,
                },
            )

    return maintenance_asset
