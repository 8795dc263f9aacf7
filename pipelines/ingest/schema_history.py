"""The versioned schema history of a feed, next to its table: ``<lake>/_lakerelay/schemas/<feed>.json``.

The Delta table's own schema is what ingestion conforms to; this history says when each version
appeared, in which batch, and which files brought which columns (what Auto Loader keeps in
``_schemas``).
"""

from datetime import UTC, datetime

import pyarrow as pa

from pipelines.ingest.schema import schema_to_json
from resources.lake import LakeResource


def schema_history(lake: LakeResource, feed_name: str) -> list[dict]:
    document = lake.read_state("schemas", f"{feed_name}.json") or {}
    return document.get("versions", [])


def record_schema(
    lake: LakeResource, feed_name: str, schema: pa.Schema, batch_id: int, added_by: dict[str, list[str]]
) -> int | None:
    """Append a version when ``schema`` differs from the latest one; the new version number or None."""
    versions = schema_history(lake, feed_name)
    fields = schema_to_json(schema)
    if versions and versions[-1]["fields"] == fields:
        return None
    version = len(versions) + 1
    versions.append(
        {
            "version": version,
            "batch_id": batch_id,
            "recorded_at": datetime.now(UTC).isoformat(),
            "fields": fields,
            "added_columns": {name: files[:10] for name, files in added_by.items()},
        }
    )
    lake.write_state({"feed": feed_name, "versions": versions}, "schemas", f"{feed_name}.json")
    return version
