"""Elasticsearch's `filter_path` response filtering (includes, `-` excludes, `*` globs, `**`).

High-throughput clients send `?filter_path=items.*.error` to get only the failed bulk items back, so
the sink must honour it or those clients would see every item as failed-free by accident.
"""

from fnmatch import fnmatchcase
from typing import Any

_MISSING: Any = object()


def apply_filter_path(payload: Any, spec: str) -> Any:
    """Filter like ES: objects and arrays left empty disappear; nothing left gives `{}`."""
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    includes = [p.split(".") for p in parts if not p.startswith("-")]
    excludes = [p[1:].split(".") for p in parts if p.startswith("-")]
    result = payload
    if includes:
        result = _include(result, includes)
    if excludes and result is not _MISSING:
        result = _exclude(result, excludes)
    return {} if result is _MISSING else result


def _advance(paths: list[list[str]], key: str) -> list[list[str]]:
    out: list[list[str]] = []
    for path in paths:
        head = path[0]
        if head == "**":
            out.append(path)  # `**` may also swallow this level
            if len(path) == 1:
                out.append([])
            elif fnmatchcase(key, path[1]):
                out.append(path[2:])
        elif fnmatchcase(key, head):
            out.append(path[1:])
    return out


def _include(node: Any, paths: list[list[str]]) -> Any:
    if any(not p for p in paths):
        return node
    if isinstance(node, list):
        kept = [r for r in (_include(item, paths) for item in node) if r is not _MISSING]
        return kept or _MISSING
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            sub = _advance(paths, key)
            if sub:
                filtered = _include(value, sub)
                if filtered is not _MISSING:
                    out[key] = filtered
        return out or _MISSING
    return _MISSING


def _exclude(node: Any, paths: list[list[str]]) -> Any:
    if any(not p for p in paths):
        return _MISSING
    if isinstance(node, list):
        return [r for r in (_exclude(item, paths) for item in node) if r is not _MISSING]
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            sub = _advance(paths, key)
            filtered = _exclude(value, sub) if sub else value
            if filtered is not _MISSING:
                out[key] = filtered
        return out
    return node
