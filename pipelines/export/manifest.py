"""Where an export lives and what announces it: ids, key layout, the manifest document, verification.

Layout: ``<dataset>/<export_id>/part-NNNNN.<ext>`` then ``<dataset>/<export_id>/manifest.json``, the
manifest written last and create-only. Export ids start with a UTC timestamp so they sort by time.
"""

import datetime as dt
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
import pyarrow as pa

from pipelines.export.check import inspect_part, manifest_problems
from pipelines.export.spec import ExportSpec
from resources.export_storage import ExportStorage

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 2


def new_export_id(run_id: str, now: dt.datetime | None = None) -> str:
    """UTC timestamp first so export ids sort by time; the run id keeps concurrent runs apart."""
    now = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    # Milliseconds too: two exports in one second must still sort in the order they started.
    return f"{now:%Y%m%dT%H%M%S}{now.microsecond // 1000:03d}Z-{run_id.replace('-', '')[:8]}"


def export_prefix(dataset: str, export_id: str) -> str:
    ExportSpec(dataset=dataset, table="-")  # validates the dataset name
    if not export_id or "/" in export_id or export_id.startswith("."):
        raise ValueError(f"export_id {export_id!r} must be one path segment of letters, digits, '._=-'")
    return f"{dataset}/{export_id}"


def manifest_key(dataset: str, export_id: str) -> str:
    return f"{export_prefix(dataset, export_id)}/{MANIFEST_NAME}"


def latest_manifest_key(storage: ExportStorage, dataset: str) -> str | None:
    """Manifest of the newest published export of ``dataset`` (export ids sort by time)."""
    keys = [
        k for k in storage.list_keys(f"{dataset}/") if k.count("/") == 2 and k.endswith("/" + MANIFEST_NAME)
    ]
    return max(keys, default=None)


def redact_uri(uri: str) -> str:
    """A table URI without user info or query string, where credentials or SAS tokens could hide."""
    parts = urlsplit(uri)
    if not parts.scheme or len(parts.scheme) == 1:  # a plain local path (or a Windows drive letter)
        return uri
    return urlunsplit((parts.scheme, parts.netloc.rsplit("@", 1)[-1], parts.path, "", ""))


def _utc(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def build_manifest(
    spec: ExportSpec,
    export_id: str,
    table_uri: str,
    version: int,
    schema: pa.Schema,
    parts: list[dict[str, Any]],
    since: str | None,
    next_cursor: str | None,
    created_at: dt.datetime,
) -> dict[str, Any]:
    """The manifest document of a finished export (the parts are already stored)."""
    return {
        "manifest_version": MANIFEST_VERSION,
        "format": spec.format,
        "compression": spec.compression,
        "dataset": spec.dataset,
        "export_id": export_id,
        "table_uri": redact_uri(table_uri),
        "delta_version": version,
        "columns": schema.names,
        "where": spec.where or None,
        "order_by": spec.order_by or None,
        "schema": [{"name": f.name, "type": str(f.type), "nullable": f.nullable} for f in schema],
        "since": since,
        "next_cursor": next_cursor,
        "total_rows": sum(p["rows"] for p in parts),
        "total_bytes": sum(p["bytes"] for p in parts),
        "parts": parts,
        "created_at": _utc(created_at),
        "expires_at": _utc(created_at + dt.timedelta(days=spec.ttl_days)) if spec.ttl_days else None,
    }


def put_manifest(storage: ExportStorage, key: str, manifest: dict[str, Any]) -> None:
    """Publish ``manifest`` under ``key``, create-only: FileExistsError if an export is already there."""
    storage.put_manifest(key, orjson.dumps(manifest, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE))


def verify_export(storage: ExportStorage, manifest_key: str) -> list[str]:
    """Re-read every part of an export and compare it with the manifest; an empty list means OK."""
    try:
        manifest = orjson.loads(storage.read_bytes(manifest_key))
    except FileNotFoundError:
        return [f"manifest {manifest_key} not found"]
    except orjson.JSONDecodeError as exc:
        return [f"manifest {manifest_key} is not valid JSON ({exc})"]
    problems: list[str] = []
    fmt, compression = manifest.get("format", "ndjson"), manifest.get("compression", "gzip")
    for part in manifest.get("parts", []):
        try:
            with storage.open_read(part["key"]) as stream:
                problems.extend(inspect_part(stream, part, fmt, compression))
        except FileNotFoundError:
            problems.append(f"{part['key']}: missing")
    return problems + manifest_problems(manifest)
