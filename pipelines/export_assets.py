"""Dagster wiring of bulk exports: per dataset an export asset, its verification check and a cleanup asset.

Resource keys: ``lake`` (LakeResource: where the Delta tables are) and ``export_storage``
(ExportStorage: where exports go). What to export comes from ``ExportSpec``s (one per feed by default,
or ``$LAKERELAY_EXPORTS_FILE``); the export logic itself lives in ``pipelines.exporter``.
"""

import datetime as dt
import json

import dagster as dg
from pydantic import Field

from pipelines import deployment
from pipelines.export_retention import DEFAULT_INCOMPLETE_GRACE_S, cleanup_exports
from pipelines.export_spec import MAX_URL_EXPIRY_S, ExportSpec, default_specs, load_specs
from pipelines.exporter import ExportResult, export_table, latest_manifest_key, new_export_id, verify_export
from pipelines.feeds import FeedSpec
from resources.export_storage import ExportStorage
from resources.lake import LakeResource

EXPORT_GROUP = "exports"
CHECK_NAME = "export_verified"
MAX_URLS_IN_METADATA = 100  # beyond that, use `lakerelay-export sign` on demand


class ExportConfig(dg.Config):
    """Run-time knobs of one export (Launchpad / run config); unset fields keep the dataset's spec."""

    mode: str = Field(
        default="full",
        description="'full' exports the whole pinned version; 'incremental' continues from the latest "
        "export's next_cursor (or from 'since').",
    )
    since: str = Field(default="", description="A manifest's next_cursor: export only newer rows.")
    format: str | None = Field(default=None, description="ndjson, csv or parquet.")
    compression: str | None = Field(default=None, description="gzip, zstd or none.")
    level: int | None = Field(default=None, description="Compression level (gzip 0-9, zstd 1-22).")
    gzip_level: int | None = Field(default=None, ge=0, le=9, description="Older name of 'level' for gzip.")
    part_max_bytes: int | None = Field(default=None, ge=1, description="Maximum uncompressed bytes per part.")
    part_max_rows: int | None = Field(default=None, ge=1, description="Maximum rows per part.")
    batch_rows: int | None = Field(default=None, ge=1, description="Rows read at once: bounds memory.")
    url_expiry_s: int | None = Field(
        default=None, ge=1, le=MAX_URL_EXPIRY_S, description="Lifetime of the presigned URLs (<= 7 days)."
    )


class CleanupConfig(dg.Config):
    keep_last: int | None = Field(default=None, ge=0, description="Keep the newest N exports (0: all).")
    ttl_days: float | None = Field(
        default=None, ge=0, description="Delete exports older than this (0: never)."
    )
    incomplete_grace_s: float = Field(
        default=DEFAULT_INCOMPLETE_GRACE_S,
        ge=0,
        description="Age after which an export without manifest is swept.",
    )


def export_asset_key(dataset: str) -> dg.AssetKey:
    return dg.AssetKey(f"{dataset}_export")


def cleanup_asset_key(dataset: str) -> dg.AssetKey:
    return dg.AssetKey(f"{dataset}_export_cleanup")


def _location(uri: str) -> dg.MetadataValue:
    return dg.MetadataValue.url(uri) if "://" in uri else dg.MetadataValue.path(uri)


def _since(config: ExportConfig, spec: ExportSpec, storage: ExportStorage) -> str | None:
    if config.mode not in ("full", "incremental"):
        raise ValueError(f"mode {config.mode!r} must be 'full' or 'incremental'")
    if config.since:
        return config.since
    if config.mode == "full":
        return None
    latest = latest_manifest_key(storage, spec.dataset)
    if latest is None:
        return None  # nothing exported yet: the first incremental export is a full one
    return json.loads(storage.read_bytes(latest)).get("next_cursor")


def _url_metadata(storage: ExportStorage, result: ExportResult, expiry_s: int) -> dict[str, object]:
    expires = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=expiry_s)
    parts = result.manifest["parts"][:MAX_URLS_IN_METADATA]
    return {
        "manifest_url": dg.MetadataValue.url(storage.presign(result.manifest_key, expiry_s)),
        "part_urls": dg.MetadataValue.json([storage.presign(p["key"], expiry_s) for p in parts]),
        "urls_expire_at": expires.isoformat().replace("+00:00", "Z"),
    }


def build_export_asset(spec: ExportSpec) -> dg.AssetsDefinition:
    """Asset ``<dataset>_export``: one export of the spec's Delta table per materialization."""

    @dg.asset(
        name=export_asset_key(spec.dataset).path[-1],
        group_name=EXPORT_GROUP,
        kinds={"delta", "s3"},
        deps=[dg.AssetKey(spec.source_asset or spec.table)],
        # One export of a dataset at a time: a new one aborts the uploads a crashed one left behind.
        pool=f"export_{spec.dataset}",
        description=spec.description
        or (
            f"Bulk export of the Delta table '{spec.table}' as {spec.extension} parts under "
            f"'{spec.dataset}/<export_id>/', announced by a manifest.json written last."
        ),
    )
    def _export(
        context: dg.AssetExecutionContext,
        config: ExportConfig,
        lake: LakeResource,
        export_storage: ExportStorage,
    ) -> dg.MaterializeResult:
        run_spec = spec.replace(
            format=config.format,
            compression=config.compression,
            level=config.level if config.level is not None else config.gzip_level,
            part_max_bytes=config.part_max_bytes,
            part_max_rows=config.part_max_rows,
            batch_rows=config.batch_rows,
            url_expiry_s=config.url_expiry_s,
        )
        since = _since(config, run_spec, export_storage)
        export_id = new_export_id(context.run_id)
        table_uri = (
            spec.table if "://" in spec.table or spec.table.startswith("/") else lake.table_uri(spec.table)
        )
        result = export_table(
            table_uri,
            lake.storage_options(),
            export_storage,
            spec.dataset,
            export_id,
            spec=run_spec,
            since=since,
        )
        manifest = result.manifest
        context.log.info(
            f"exported {result.rows} rows of Delta version {manifest['delta_version']} in {result.parts} parts "
            f"({result.bytes} bytes) to {result.manifest_uri} in {result.duration_s:.2f} s"
            + (
                f"; aborted {result.aborted_uploads} upload(s) of a crashed export"
                if result.aborted_uploads
                else ""
            )
        )
        return dg.MaterializeResult(
            metadata={
                "rows": result.rows,
                "bytes": result.bytes,
                "parts": result.parts,
                "duration_s": round(result.duration_s, 3),
                "rows_per_s": round(result.rows_per_s, 1),
                "delta_version": manifest["delta_version"],
                "format": manifest["format"],
                "compression": manifest["compression"],
                "export_id": export_id,
                "since": since or "",
                "next_cursor": manifest["next_cursor"] or "",
                "manifest_key": result.manifest_key,
                "manifest_uri": _location(result.manifest_uri),
                "aborted_uploads": result.aborted_uploads,
                **_url_metadata(export_storage, result, run_spec.url_expiry_s),
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
        description="Every part exists, its sha256 and size match the manifest, and it decodes to the listed rows.",
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


def build_cleanup_asset(spec: ExportSpec) -> dg.AssetsDefinition:
    """Asset ``<dataset>_export_cleanup``: apply the retention rules (keep last N, TTL) to the exports."""

    @dg.asset(
        name=cleanup_asset_key(spec.dataset).path[-1],
        group_name=EXPORT_GROUP,
        deps=[export_asset_key(spec.dataset)],
        pool=f"export_{spec.dataset}",
        description=f"Deletes exports of '{spec.dataset}' beyond the retention rules and crashed leftovers.",
    )
    def _cleanup(
        context: dg.AssetExecutionContext, config: CleanupConfig, export_storage: ExportStorage
    ) -> dg.MaterializeResult:
        keep_last = spec.keep_last if config.keep_last is None else config.keep_last
        ttl_days = spec.ttl_days if config.ttl_days is None else config.ttl_days
        result = cleanup_exports(
            export_storage, spec.dataset, keep_last, ttl_days, incomplete_grace_s=config.incomplete_grace_s
        )
        context.log.info(
            f"kept {len(result.kept)} export(s), deleted {len(result.expired)} expired and "
            f"{len(result.incomplete)} incomplete one(s) ({result.deleted_objects} objects)"
        )
        return dg.MaterializeResult(
            metadata={
                "kept": len(result.kept),
                "expired": dg.MetadataValue.json(result.expired),
                "incomplete": dg.MetadataValue.json(result.incomplete),
                "deleted_objects": result.deleted_objects,
                "keep_last": keep_last,
                "ttl_days": ttl_days,
            }
        )

    return _cleanup


def export_specs(feeds: list[FeedSpec]) -> list[ExportSpec]:
    """The configured exports: ``$LAKERELAY_EXPORTS_FILE`` if set, else one default export per feed."""
    path = deployment.exports_file()
    return load_specs(path) if path else default_specs(feeds)


def export_defs(feeds: list[FeedSpec], specs: list[ExportSpec] | None = None) -> dg.Definitions:
    """Exports' share of the Definitions: per dataset the export asset, its check, a cleanup asset,
    an ``export_<dataset>`` job; one ``export_cleanup`` job on a schedule for all of them."""
    specs = export_specs(feeds) if specs is None else specs
    cleanup_job = dg.define_asset_job(
        "export_cleanup", selection=dg.AssetSelection.assets(*(cleanup_asset_key(s.dataset) for s in specs))
    )
    return dg.Definitions(
        assets=[
            *(build_export_asset(spec) for spec in specs),
            *(build_cleanup_asset(spec) for spec in specs),
        ],
        asset_checks=[build_export_check(spec.dataset) for spec in specs],
        jobs=[
            *(
                dg.define_asset_job(
                    f"export_{spec.dataset}",
                    selection=dg.AssetSelection.assets(export_asset_key(spec.dataset)),
                )
                for spec in specs
            ),
            cleanup_job,
        ],
        schedules=[
            dg.ScheduleDefinition(
                name="export_cleanup_schedule",
                job=cleanup_job,
                cron_schedule=deployment.export_cleanup_cron(),
                default_status=dg.DefaultScheduleStatus(deployment.sensors_default_status().value),
                execution_timezone="UTC",
            )
        ],
    )
