"""Dagster wiring of bulk exports: per dataset an export asset, its verification check and a cleanup asset.

Resource keys: ``lake`` (LakeResource: where the Delta tables are) and ``export_storage``
(ExportStorage: where exports go). What to export comes from ``ExportSpec``s (one per feed by default,
or ``$LAKERELAY_EXPORTS_FILE``); the export logic lives in ``exporter``, what the UI shows (kinds,
metadata) in ``metadata``.
"""

import json
from typing import Literal

import dagster as dg
from pydantic import Field

from pipelines import deployment
from pipelines.export.exporter import export_table
from pipelines.export.manifest import latest_manifest_key, new_export_id, verify_export
from pipelines.export.metadata import (
    MANIFEST_KEY,
    MANIFEST_KEY_BEFORE,
    asset_kinds,
    definition_metadata,
    destination_uris,
    location,
    run_metadata,
    storage_kinds,
)
from pipelines.export.retention import DEFAULT_INCOMPLETE_GRACE_S, cleanup_exports
from pipelines.export.spec import (
    ExportSpec,
    default_specs,
    load_specs,
)
from pipelines.feeds import FeedSpec
from pipelines.run_defaults import INFO_LOGS
from resources.export_storage import ExportStorage
from resources.lake import LakeResource

EXPORT_GROUP = "exports"
CHECK_NAME = "export_verified"


class ExportConfig(dg.Config):
    """Run-time knobs of one export (Launchpad / run config); unset fields keep the dataset's spec."""

    mode: Literal["full", "incremental"] = Field(
        default="full",
        description="'full' exports the whole pinned version; 'incremental' continues from the latest "
        "export's next_cursor (or from 'since').",
    )
    since: str = Field(default="", description="A manifest's next_cursor: export only newer rows.")
    # Dagster shows a Literal's choices in the Launchpad, but not an optional one: "default" stands
    # for "the dataset's own".
    format: Literal["default", "ndjson", "csv", "parquet"] = Field(
        default="default", description="Format of the parts; 'default': the dataset's."
    )
    compression: Literal["default", "gzip", "zstd", "none"] = Field(
        default="default", description="Compression of the parts; 'default': the dataset's."
    )
    # The range depends on the compression, so the spec checks it (with a message naming both).
    level: int | None = Field(default=None, description="Compression level (gzip 0-9, zstd 1-22).")
    part_max_bytes: int | None = Field(default=None, ge=1, description="Maximum uncompressed bytes per part.")
    part_max_rows: int | None = Field(default=None, ge=1, description="Maximum rows per part.")
    batch_rows: int | None = Field(default=None, ge=1, description="Rows read at once: bounds memory.")


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


def _since(config: ExportConfig, spec: ExportSpec, storage: ExportStorage) -> str | None:
    if config.since:
        return config.since
    if config.mode == "full":
        return None
    latest = latest_manifest_key(storage, spec.dataset)
    if latest is None:
        return None  # nothing exported yet: the first incremental export is a full one
    return json.loads(storage.read_bytes(latest)).get("next_cursor")


def build_export_asset(
    spec: ExportSpec, storage: ExportStorage | None = None, uri: str | None = None
) -> dg.AssetsDefinition:
    """Asset ``<dataset>_export``: one export of the spec's Delta table per materialization.

    ``storage`` is the deployment's export storage, when known at definition time: it gives the
    asset its storage kind (``s3`` or ``file``); ``uri`` the ``dagster/uri`` of the destination
    (default: resolved from ``storage``).
    """

    @dg.asset(
        name=export_asset_key(spec.dataset).path[-1],
        group_name=EXPORT_GROUP,
        kinds=asset_kinds(spec, storage),
        metadata=definition_metadata(
            spec, uri if uri is not None else destination_uris(storage, [spec.dataset]).get(spec.dataset)
        ),
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
        return _run_export(context, config, spec, lake, export_storage)

    return _export


def _run_spec(spec: ExportSpec, config: ExportConfig) -> ExportSpec:
    """The dataset's spec with the run's knobs ("default": the dataset's own)."""
    return spec.replace(
        format=None if config.format == "default" else config.format,
        compression=None if config.compression == "default" else config.compression,
        level=config.level,
        part_max_bytes=config.part_max_bytes,
        part_max_rows=config.part_max_rows,
        batch_rows=config.batch_rows,
    )


def _run_export(
    context: dg.AssetExecutionContext,
    config: ExportConfig,
    spec: ExportSpec,
    lake: LakeResource,
    export_storage: ExportStorage,
) -> dg.MaterializeResult:
    run_spec = _run_spec(spec, config)
    since = _since(config, run_spec, export_storage)
    export_id = new_export_id(context.run_id)
    result = export_table(
        spec.table,  # a table name under the lake, or a path/URI opened with the lake's settings
        lake,
        export_storage,
        spec.dataset,
        export_id,
        spec=run_spec,
        since=since,
    )
    context.log.info(
        f"exported {result.rows} rows of Delta version {result.manifest['delta_version']} in {result.parts} "
        f"parts ({result.bytes} bytes) to {result.manifest_uri} in {result.duration_s:.2f} s"
        + (
            f"; aborted {result.aborted_uploads} upload(s) of a crashed export"
            if result.aborted_uploads
            else ""
        )
    )
    return dg.MaterializeResult(metadata=run_metadata(export_storage, result, export_id, since))


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
            metadata = event.asset_materialization.metadata
            entry = metadata.get(MANIFEST_KEY) or metadata.get(MANIFEST_KEY_BEFORE)
            key = entry.value if entry is not None else None
        key = key or latest_manifest_key(export_storage, dataset)
        if key is None:
            return dg.AssetCheckResult(passed=False, description=f"no export of '{dataset}' found")
        problems = verify_export(export_storage, str(key))
        return dg.AssetCheckResult(
            passed=not problems,
            description="; ".join(problems[:20]) or "all parts match the manifest",
            metadata={
                "manifest_uri": location(export_storage.uri_for(str(key))),
                "problems": dg.MetadataValue.int(len(problems)),
            },
        )

    return _check


def build_cleanup_asset(spec: ExportSpec, storage: ExportStorage | None = None) -> dg.AssetsDefinition:
    """Asset ``<dataset>_export_cleanup``: apply the retention rules (keep last N, TTL) to the exports."""

    @dg.asset(
        name=cleanup_asset_key(spec.dataset).path[-1],
        group_name=EXPORT_GROUP,
        kinds=storage_kinds(storage),
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
                "kept": dg.MetadataValue.int(len(result.kept)),
                "expired": dg.MetadataValue.json(result.expired),
                "incomplete": dg.MetadataValue.json(result.incomplete),
                "deleted_objects": dg.MetadataValue.int(result.deleted_objects),
                "keep_last": dg.MetadataValue.int(keep_last),
                "ttl_days": dg.MetadataValue.float(float(ttl_days)),
            }
        )

    return _cleanup


def export_specs(feeds: list[FeedSpec]) -> list[ExportSpec]:
    """The configured exports: ``$LAKERELAY_EXPORTS_FILE`` if set, else one default export per feed."""
    path = deployment.exports_file()
    return load_specs(path) if path else default_specs(feeds)


SHARED_EXPORT_JOB = "export_datasets"


def export_defs(
    feeds: list[FeedSpec],
    specs: list[ExportSpec] | None = None,
    storage: ExportStorage | None = None,
    layout: str = "per_route",
) -> dg.Definitions:
    """Exports' share of the Definitions: per dataset the export asset, its check, a cleanup asset,
    an ``export_<dataset>`` job (``layout`` ``shared``: one ``export_datasets`` job, a run selecting the
    datasets it exports); one ``export_cleanup`` job on a schedule for all of them.

    ``storage``: the ``export_storage`` resource the definitions will run with, for the assets' kinds
    and destination URI (the resource itself is still injected at run time).
    """
    specs = export_specs(feeds) if specs is None else specs
    if not specs:
        return dg.Definitions()
    uris = destination_uris(storage, [spec.dataset for spec in specs])
    cleanup_job = dg.define_asset_job(
        "export_cleanup",
        selection=dg.AssetSelection.assets(*(cleanup_asset_key(s.dataset) for s in specs)),
        config=INFO_LOGS,
    )
    return dg.Definitions(
        assets=[
            *(build_export_asset(spec, storage, uris.get(spec.dataset)) for spec in specs),
            *(build_cleanup_asset(spec, storage) for spec in specs),
        ],
        asset_checks=[build_export_check(spec.dataset) for spec in specs],
        jobs=[
            *(
                dg.define_asset_job(
                    name,
                    selection=dg.AssetSelection.assets(*(export_asset_key(s.dataset) for s in chosen)),
                    # The exports and their blocking checks in the run's process: no step subprocesses.
                    executor_def=dg.in_process_executor,
                    config=INFO_LOGS,
                )
                for name, chosen in (
                    [(SHARED_EXPORT_JOB, specs)]
                    if layout == "shared"
                    else [(f"export_{spec.dataset}", [spec]) for spec in specs]
                )
            ),
            cleanup_job,
        ],
        # A schedule, not AutomationCondition.on_cron: on_cron waits for a new export after the cron
        # tick, but a TTL expires without one; and its sensor's cost grows with the datasets (see the
        # maintenance schedule in pipelines/ingest/defs.py).
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
