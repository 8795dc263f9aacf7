"""Dagster wiring of bulk exports: one export asset and one verification check per dataset.

Resource keys: ``lake`` (LakeResource: where the Delta table is) and ``export_storage``
(ExportStorage: where exports go). The export logic itself lives in ``pipelines.exporter``.
"""

import dagster as dg
from pydantic import Field

from pipelines.exporter import (
    DEFAULT_BATCH_ROWS,
    DEFAULT_GZIP_LEVEL,
    DEFAULT_PART_MAX_BYTES,
    DEFAULT_PART_MAX_ROWS,
    export_table,
    latest_manifest_key,
    new_export_id,
    verify_export,
)
from pipelines.feeds import FeedSpec
from resources.export_storage import ExportStorage
from resources.lake import LakeResource

EXPORT_GROUP = "exports"
CHECK_NAME = "export_verified"


class ExportConfig(dg.Config):
    """Run-time knobs of one export (Launchpad / run config)."""

    part_max_bytes: int = Field(
        default=DEFAULT_PART_MAX_BYTES, ge=1, description="Maximum uncompressed NDJSON bytes per part."
    )
    part_max_rows: int = Field(default=DEFAULT_PART_MAX_ROWS, ge=1, description="Maximum rows per part.")
    gzip_level: int = Field(
        default=DEFAULT_GZIP_LEVEL, ge=0, le=9, description="1 is ~2x faster, 6 is ~20% smaller."
    )
    batch_rows: int = Field(
        default=DEFAULT_BATCH_ROWS, ge=1, description="Rows decoded at once: bounds the memory used."
    )


def export_asset_key(dataset: str) -> dg.AssetKey:
    return dg.AssetKey(f"{dataset}_export")


def _location(uri: str) -> dg.MetadataValue:
    return dg.MetadataValue.url(uri) if "://" in uri else dg.MetadataValue.path(uri)


def build_export_asset(dataset: str, table_name: str, source_asset_key: dg.AssetKey) -> dg.AssetsDefinition:
    """Asset ``<dataset>_export``: a full export of the Delta table ``table_name`` per materialization."""

    @dg.asset(
        name=export_asset_key(dataset).path[-1],
        group_name=EXPORT_GROUP,
        kinds={"delta", "s3"},
        deps=[source_asset_key],
        description=(
            f"Bulk export of the Delta table '{table_name}' as gzip NDJSON parts under "
            f"'{dataset}/<export_id>/', announced by a manifest.json written last."
        ),
    )
    def _export(
        context: dg.AssetExecutionContext,
        config: ExportConfig,
        lake: LakeResource,
        export_storage: ExportStorage,
    ) -> dg.MaterializeResult:
        export_id = new_export_id(context.run_id)
        result = export_table(
            lake.table_uri(table_name),
            lake.storage_options(),
            export_storage,
            dataset,
            export_id,
            part_max_bytes=config.part_max_bytes,
            part_max_rows=config.part_max_rows,
            batch_rows=config.batch_rows,
            gzip_level=config.gzip_level,
        )
        context.log.info(
            f"exported {result.rows} rows of Delta version {result.manifest['delta_version']} in "
            f"{result.parts} parts ({result.bytes} bytes) to {result.manifest_uri} in {result.duration_s:.2f} s"
        )
        return dg.MaterializeResult(
            metadata={
                "rows": result.rows,
                "bytes": result.bytes,
                "parts": result.parts,
                "duration_s": round(result.duration_s, 3),
                "rows_per_s": round(result.rows_per_s, 1),
                "delta_version": result.manifest["delta_version"],
                "export_id": export_id,
                "manifest_key": result.manifest_key,
                "manifest_uri": _location(result.manifest_uri),
            }
        )

    return _export


def build_export_check(dataset: str) -> dg.AssetChecksDefinition:
    """Blocking check on ``<dataset>_export``: re-read the latest export and compare it with its manifest.

    "Latest" is the manifest named in the asset's last materialization; when the instance has none
    (e.g. a fresh instance pointed at existing storage), the newest export id found in storage.
    """
    asset_key = export_asset_key(dataset)

    @dg.asset_check(
        asset=asset_key,
        name=CHECK_NAME,
        blocking=True,
        description="Every part exists, its sha256 and size match the manifest, and it gunzips to the listed rows.",
    )
    def _check(context: dg.AssetCheckExecutionContext, export_storage: ExportStorage) -> dg.AssetCheckResult:
        key = None
        event = context.instance.get_latest_materialization_event(asset_key)
        if event is not None and event.asset_materialization is not None:
            entry = event.asset_materialization.metadata.get("manifest_key")
            key = entry.value if entry is not None else None
        key = key or latest_manifest_key(export_storage, dataset)
        if key is None:
            return dg.AssetCheckResult(passed=False, description=f"no export of '{dataset}' found")
        problems = verify_export(export_storage, str(key))
        return dg.AssetCheckResult(
            passed=not problems,
            description="; ".join(problems[:20]) or "all parts match the manifest",
            metadata={
                "manifest_uri": _location(export_storage.uri_for(str(key))),
                "problems": len(problems),
            },
        )

    return _check


def export_defs(feeds: list[FeedSpec]) -> dg.Definitions:
    """Exports' share of the Definitions: per feed, the export asset, its check and an ``export_<feed>`` job."""
    return dg.Definitions(
        assets=[build_export_asset(feed.name, feed.table_name, dg.AssetKey(feed.name)) for feed in feeds],
        asset_checks=[build_export_check(feed.name) for feed in feeds],
        jobs=[
            dg.define_asset_job(
                f"export_{feed.name}", selection=dg.AssetSelection.assets(export_asset_key(feed.name))
            )
            for feed in feeds
        ],
    )
