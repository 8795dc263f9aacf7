"""Bulk export of one pinned Delta version to parts plus a ``manifest.json`` written last.

Pure logic (no Dagster run needed). ``export_table`` runs a pipeline of bounded stages on separate
threads:

    read (DataFusion) -> cut into parts + encode -> compress -> upload (this thread, sha256 as it goes)

so reading, encoding, compressing and uploading overlap while memory stays bounded by the queues and
one multipart chunk, whatever the table size. Parts are stored under no visible name (a hidden temp
file, an open multipart upload) and get their names only once every part is stored, just before the
manifest is created (create-only): an export is either whole or invisible, and a failed one leaves
nothing under a part name. ``manifest.verify_export`` re-reads it all.
"""

import datetime as dt
import time
from dataclasses import dataclass
from typing import Any

from deltalake import DeltaTable

from pipelines.export.cursor import Cursor, decode_cursor
from pipelines.export.late_rows import check_append_only_since, commit_reader
from pipelines.export.manifest import build_manifest, export_prefix, manifest_key, put_manifest
from pipelines.export.parts import StoredParts, compress, cut_and_encode, store_parts
from pipelines.export.read import ReadPlan, plan_read, read_batches
from pipelines.export.spec import ExportSpec
from pipelines.export.stages import staged
from resources.export_storage import ExportStorage
from resources.filesystem import FileSystemSettings
from resources.lake import LakeResource

__all__ = ["ExportResult", "export_table"]

# Items waiting between two stages. Measured (bench.export, 1M rows): 4 -> 2 saved ~30 MB of peak RSS
# and no speed, since the stages run at the pace of deflate anyway.
QUEUE_SIZE = 2


@dataclass(frozen=True)
class ExportResult:
    """What one export wrote; ``manifest`` is exactly the published manifest document."""

    manifest: dict[str, Any]
    manifest_key: str
    manifest_uri: str
    rows: int
    bytes: int
    parts: int
    duration_s: float
    aborted_uploads: int = 0

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def uncompressed_bytes(self) -> int:
        return sum(p["uncompressed_bytes"] for p in self.manifest["parts"])

    @property
    def next_cursor(self) -> str | None:
        return self.manifest.get("next_cursor")


def _opener(table: str, lake: LakeResource | None) -> tuple[str, Any]:
    """(URI of ``table``, a function opening it at a version): through the lake's settings when given."""
    if lake is not None:
        return lake.table_uri(table), lambda version=None: lake.table(table, version)
    # No lake: a local table, or one the standard AWS environment reaches (tests, benchmarks).
    return table, lambda version=None: DeltaTable(table, version=version)


def export_table(
    table: str,
    lake: LakeResource | None,
    storage: ExportStorage,
    dataset: str,
    export_id: str,
    *,
    spec: ExportSpec | None = None,
    since: str | None = None,
    **options: Any,
) -> ExportResult:
    """Export the current version of a Delta table under ``<dataset>/<export_id>/``.

    ``table`` is a table name under ``lake`` or a path/URI, opened with the lake's storage settings
    (``lake=None``: a local path or the standard AWS environment). ``spec`` says what and how
    (defaults: every column, gzip NDJSON); keyword ``options`` override its fields
    (``format="csv"``, ``part_max_rows=...``). ``since`` is a previous manifest's ``next_cursor``:
    only rows with a greater ordering key are exported.
    """
    table_uri, open_table = _opener(table, lake)
    spec = (spec or ExportSpec(dataset=dataset, table=table_uri)).replace(dataset=dataset, **options)
    started = time.perf_counter()
    created_at = dt.datetime.now(dt.UTC)
    prefix = export_prefix(dataset, export_id)
    aborted = _claim_prefix(storage, dataset, prefix)

    delta = open_table()
    version = delta.version()  # every query below reads this one snapshot
    filesystem = lake.filesystem_settings() if lake is not None else FileSystemSettings()
    since_key = _since_key(delta, filesystem, spec, version, since)
    plan = plan_read(delta, spec, since_key)
    stored = _store_parts(delta, filesystem, plan, spec, storage, prefix)

    parts = stored.parts
    key = manifest_key(dataset, export_id)
    try:
        last_key = parts[-1]["last_key"] if parts else since_key
        next_cursor = Cursor(dataset, spec.order_by, version, last_key).encode() if spec.order_by else None
        manifest = build_manifest(
            spec, export_id, table_uri, version, plan.schema, parts, since, next_cursor, created_at
        )
        stored.publish()  # the parts get their names only now, just before the manifest
        put_manifest(storage, key, manifest)
    except BaseException:
        stored.discard()  # a failed export leaves nothing under a part name
        raise
    return ExportResult(
        manifest=manifest,
        manifest_key=key,
        manifest_uri=storage.uri_for(key),
        rows=manifest["total_rows"],
        bytes=manifest["total_bytes"],
        parts=len(parts),
        duration_s=time.perf_counter() - started,
        aborted_uploads=aborted,
    )


def _claim_prefix(storage: ExportStorage, dataset: str, prefix: str) -> int:
    """Refuse an export id already used; abort what a crashed export of ``dataset`` left pending
    (exports of one dataset run one at a time). Returns how many uploads were aborted."""
    if storage.list_keys(prefix + "/"):
        raise FileExistsError(f"export {storage.uri_for(prefix)} already has objects; use a new export_id")
    return storage.abort_incomplete(f"{dataset}/")


def _since_key(
    delta: DeltaTable, filesystem: FileSystemSettings, spec: ExportSpec, version: int, since: str | None
) -> int | str | None:
    """The ordering key after which rows are exported (None: all), from a previous manifest's
    ``next_cursor``; refused when the rows since it were not only appended."""
    if not since:
        return None
    if not spec.order_by:
        raise ValueError(f"export {spec.dataset!r} has no order_by: a 'since' cursor needs an ordering key")
    cursor = decode_cursor(since, spec.dataset, spec.order_by)
    if cursor.delta_version > version:
        raise ValueError(f"cursor is at Delta version {cursor.delta_version}, the table only at {version}")
    if cursor.last_key is not None:
        check_append_only_since(
            delta, commit_reader(delta, filesystem), spec.order_by, cursor.delta_version, cursor.last_key
        )
    return cursor.last_key


def _store_parts(
    delta: DeltaTable,
    filesystem: FileSystemSettings,
    plan: ReadPlan,
    spec: ExportSpec,
    storage: ExportStorage,
    prefix: str,
) -> StoredParts:
    """Read, encode, compress and store the parts under no visible name yet (stages on threads)."""
    pieces = staged(
        # NDJSON and CSV go through polars, which takes string views as they are; Parquet writes the
        # plan's schema.
        read_batches(
            delta,
            plan,
            spec.batch_rows,
            keep_views=spec.format != "parquet",
            filesystem=filesystem,
        ),
        cut_and_encode(spec, plan.schema),
        compress(spec),
        maxsize=QUEUE_SIZE,
    )
    try:
        return store_parts(pieces, storage, prefix, spec)
    finally:
        pieces.close()  # stops and joins the stage threads, also on error
