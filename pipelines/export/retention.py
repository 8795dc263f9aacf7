"""Retention of exports: keep the last N and/or those younger than a TTL; sweep crashed leftovers.

A published export is removed manifest first, so at every instant a visible manifest lists parts that
exist. Exports without a manifest (a crashed run) are removed once older than a grace period, so an
export still being written is never touched.
"""

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass, field

from pipelines.export.manifest import MANIFEST_NAME
from resources.export_storage import ExportStorage

DEFAULT_INCOMPLETE_GRACE_S = 24 * 3600


@dataclass
class CleanupResult:
    kept: list[str] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)
    incomplete: list[str] = field(default_factory=list)
    deleted_objects: int = 0


def export_time(export_id: str) -> dt.datetime | None:
    """When an export started, from its id (``20240102T030405123Z-<run>``); None for foreign ids."""
    stamp = export_id.split("-", 1)[0]
    for layout in ("%Y%m%dT%H%M%S%fZ", "%Y%m%dT%H%M%SZ"):
        try:
            return dt.datetime.strptime(stamp, layout).replace(tzinfo=dt.UTC)
        except ValueError:
            continue
    return None


def cleanup_exports(
    storage: ExportStorage,
    dataset: str,
    keep_last: int = 0,
    ttl_days: float = 0,
    now: dt.datetime | None = None,
    incomplete_grace_s: float = DEFAULT_INCOMPLETE_GRACE_S,
) -> CleanupResult:
    """Delete the exports of ``dataset`` beyond the newest ``keep_last`` or older than ``ttl_days``.

    ``0`` disables a rule. The newest published export is always kept: consumers may be reading it.
    """
    now = now or dt.datetime.now(dt.UTC)
    objects: dict[str, list[str]] = defaultdict(list)
    for key in storage.list_keys(f"{dataset}/"):
        parts = key.split("/")
        if len(parts) == 3:
            objects[parts[1]].append(key)
    result = CleanupResult()
    published = sorted(
        (e for e, keys in objects.items() if f"{dataset}/{e}/{MANIFEST_NAME}" in keys), reverse=True
    )
    for rank, export_id in enumerate(published):
        started = export_time(export_id)
        too_many = keep_last > 0 and rank >= keep_last
        too_old = ttl_days > 0 and started is not None and now - started > dt.timedelta(days=ttl_days)
        if rank > 0 and (too_many or too_old):
            result.expired.append(export_id)
        else:
            result.kept.append(export_id)
    for export_id in objects:
        started = export_time(export_id)
        is_published = export_id in published
        if not is_published and started is not None and (now - started).total_seconds() > incomplete_grace_s:
            result.incomplete.append(export_id)
    for export_id in result.expired:
        manifest = f"{dataset}/{export_id}/{MANIFEST_NAME}"
        storage.delete([manifest])  # invisible first, then the parts
        rest = [k for k in objects[export_id] if k != manifest]
        storage.delete(rest)
        result.deleted_objects += 1 + len(rest)
    for export_id in result.incomplete:
        storage.delete(objects[export_id])
        result.deleted_objects += len(objects[export_id])
    return result
