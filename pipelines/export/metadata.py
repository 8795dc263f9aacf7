"""What the export assets show in Dagster: their kinds, definition metadata and run metadata.

Run metadata keys are grouped by a prefix so related ones sort together, with the unit in the name
(``<domain>_<what>``, as the ingest and post assets' keys):

- ``export_``: what was exported (id, format, compression, Delta version, cursors, aborted uploads)
- ``size_``: ``rows``, ``bytes`` (stored), ``uncompressed_bytes``, ``parts``
- ``speed_``: ``duration_s``, ``rows_per_s``, ``mib_per_s`` (uncompressed MiB per second)
- ``manifest_``: ``key`` (storage-relative, what the check reads) and ``uri``

plus Dagster's own ``dagster/row_count`` and ``dagster/uri`` (where this export is). No presigned URL is
stored: event metadata lives as long as the instance, and a presigned URL is a credential until it
expires; ``lakerelay export sign`` makes them when someone needs them.
"""

from typing import Any

import dagster as dg

from pipelines.export.exporter import ExportResult
from pipelines.export.manifest import export_prefix
from pipelines.export.spec import ExportSpec
from resources.export_storage import ExportStorage

MANIFEST_KEY = "manifest_key"  # read back by the export's check
MANIFEST_KEY_BEFORE = "manifest/key"  # the same, in materializations written before the keys were renamed
MiB = 1024 * 1024


def location(uri: str) -> dg.MetadataValue:
    """A clickable URL for ``s3://``-style URIs, a path for local files."""
    return dg.MetadataValue.url(uri) if "://" in uri else dg.MetadataValue.path(uri)


def asset_kinds(spec: ExportSpec, storage: ExportStorage | None) -> set[str]:
    """``delta`` (what is read), the storage written to (``s3``/``file``) when known, and the format."""
    kinds = {"delta", spec.format}
    if storage is not None and storage.storage_kind:
        kinds.add(storage.storage_kind)
    return kinds


def storage_kinds(storage: ExportStorage | None) -> set[str] | None:
    return {storage.storage_kind} if storage is not None and storage.storage_kind else None


def destination_uris(storage: ExportStorage | None, datasets: list[str]) -> dict[str, str]:
    """Where the exports of each dataset go, read when the definitions load; empty when unknown.

    The deployment gives settings as ``dg.EnvVar`` (resolved in a run), so the storage is resolved
    here first, once for every dataset (each resolution builds a throwaway Dagster instance: 0.1 s
    of CPU, which 50 feeds would pay 50 times); only the root/bucket/prefix are read, never a credential.
    """
    if storage is None or not datasets:
        return {}
    try:
        # The context-manager form: a storage with a nested resource (S3's lake) needs it.
        with storage.process_config_and_initialize_cm() as resolved:
            return {dataset: resolved.uri_for(dataset) for dataset in datasets}
    except dg.DagsterInvalidConfigError:  # an unset variable: the run reports it; the definitions load
        return {}


def definition_metadata(spec: ExportSpec, uri: str | None) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "export_format": spec.format,
        # Parquet compresses its pages itself; the part file is not compressed again.
        "export_compression": f"{spec.compression} (Parquet pages)"
        if spec.format == "parquet"
        else spec.compression,
        "export_order_by": spec.order_by or "(storage order)",
        "export_source_table": spec.table,
    }
    if uri is not None:
        metadata["dagster/uri"] = location(uri)
    return metadata


def run_metadata(
    storage: ExportStorage, result: ExportResult, export_id: str, since: str | None
) -> dict[str, Any]:
    """The materialization's metadata of one export, typed (ints, floats, URLs), in key order."""
    manifest = result.manifest
    seconds = result.duration_s
    return {
        "dagster/row_count": dg.MetadataValue.int(result.rows),
        "dagster/uri": location(storage.uri_for(export_prefix(manifest["dataset"], export_id))),
        "export_id": dg.MetadataValue.text(export_id),
        "export_format": dg.MetadataValue.text(manifest["format"]),
        "export_compression": dg.MetadataValue.text(manifest["compression"]),
        "export_delta_version": dg.MetadataValue.int(manifest["delta_version"]),
        "export_since": dg.MetadataValue.text(since or ""),
        "export_next_cursor": dg.MetadataValue.text(manifest["next_cursor"] or ""),
        "export_aborted_uploads": dg.MetadataValue.int(result.aborted_uploads),
        "size_rows": dg.MetadataValue.int(result.rows),
        "size_bytes": dg.MetadataValue.int(result.bytes),
        "size_uncompressed_bytes": dg.MetadataValue.int(result.uncompressed_bytes),
        "size_parts": dg.MetadataValue.int(result.parts),
        "speed_duration_s": dg.MetadataValue.float(round(seconds, 3)),
        "speed_rows_per_s": dg.MetadataValue.float(round(result.rows_per_s, 1)),
        "speed_mib_per_s": dg.MetadataValue.float(
            round(result.uncompressed_bytes / MiB / seconds, 2) if seconds > 0 else 0.0
        ),
        MANIFEST_KEY: dg.MetadataValue.text(result.manifest_key),
        "manifest_uri": location(result.manifest_uri),
    }
