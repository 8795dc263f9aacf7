"""What to export and how: one ``ExportSpec`` per dataset, from defaults per feed or a YAML/JSON file.

A spec is plain data (no Dagster) so the exporter, the CLI and the assets share it. Bad values fail
when the spec is built, with a message naming the field and the accepted values.
"""

import dataclasses
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import yaml

# The choices, written once: run config (Literal shows them in the Launchpad), the CLI and the checks.
Format = Literal["ndjson", "csv", "parquet"]
Compression = Literal["gzip", "zstd", "none"]
FORMATS: tuple[str, ...] = get_args(Format)
COMPRESSIONS: tuple[str, ...] = get_args(Compression)
MAX_URL_EXPIRY_S = 7 * 24 * 3600  # SigV4 presigned URLs cannot live longer

DEFAULT_PART_MAX_BYTES = 256 * 1024 * 1024
DEFAULT_PART_MAX_ROWS = 1_000_000
# Rows per read batch (and per encoded piece). 16,384 -> 8,192 cut ~20 MB of peak RSS (bench.export,
# 12M rows); 4,096 saves ~5 MB more but made gzip CSV slower (polars' per-call cost shows there).
DEFAULT_BATCH_ROWS = 8_192
DEFAULT_URL_EXPIRY_S = 24 * 3600

_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=-]*")
_DEFAULT_LEVEL = {"gzip": 6, "zstd": 3, "none": 0}
_LEVEL_RANGE = {"gzip": (0, 9), "zstd": (1, 22), "none": (0, 0)}


@dataclass(frozen=True)
class ExportSpec:
    """One export: a Delta table (optionally a projection, a filter and an ordering key) to a format.

    ``where`` is a SQL predicate (DataFusion dialect) over the table's columns. ``order_by`` names a
    non-null integer or string column whose values only grow as rows are appended (an id, an ingest
    sequence); it orders the output, fills each part's first/last key and makes ``since`` cursors
    possible. Without it an export is a plain full stream in storage order.
    """

    dataset: str
    table: str
    columns: tuple[str, ...] = ()
    where: str = ""
    order_by: str = ""
    format: Format = "ndjson"
    compression: Compression = "gzip"
    level: int | None = None
    part_max_bytes: int = DEFAULT_PART_MAX_BYTES
    part_max_rows: int = DEFAULT_PART_MAX_ROWS
    batch_rows: int = DEFAULT_BATCH_ROWS
    keep_last: int = 0  # retention: 0 keeps every export
    ttl_days: float = 0  # retention: 0 means no age limit
    description: str = ""
    source_asset: str = ""  # the asset the export depends on (default: the table name)

    def __post_init__(self) -> None:
        problems = []
        if not _SEGMENT.fullmatch(self.dataset):
            problems.append(f"dataset {self.dataset!r} must be letters, digits and '._=-'")
        if not self.table:
            problems.append("table is required (a table name under the lake or a table URI)")
        if self.format not in FORMATS:
            problems.append(f"format {self.format!r} is not one of {', '.join(FORMATS)}")
        if self.compression not in COMPRESSIONS:
            problems.append(f"compression {self.compression!r} is not one of {', '.join(COMPRESSIONS)}")
        elif self.level is not None:
            low, high = _LEVEL_RANGE[self.compression]
            if not low <= self.level <= high:
                problems.append(f"level {self.level} for {self.compression} must be {low}..{high}")
        for name in ("part_max_bytes", "part_max_rows", "batch_rows"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be positive")
        if self.keep_last < 0 or self.ttl_days < 0:
            problems.append("keep_last and ttl_days must be >= 0")
        if self.columns and self.order_by and self.order_by not in self.columns:
            problems.append(f"order_by {self.order_by!r} must be one of the exported columns")
        if problems:
            raise ValueError(f"export spec {self.dataset!r}: " + "; ".join(problems))

    @property
    def compression_level(self) -> int:
        return _DEFAULT_LEVEL[self.compression] if self.level is None else self.level

    @property
    def extension(self) -> str:
        """File name suffix of the parts: ``ndjson.gz``, ``csv.zst``, ``parquet`` (compressed inside)."""
        if self.format == "parquet":
            return "parquet"
        return self.format + {"gzip": ".gz", "zstd": ".zst", "none": ""}[self.compression]

    def replace(self, **changes: Any) -> "ExportSpec":
        """A copy with ``changes`` applied (and validated); ``None`` values are ignored."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


def spec_from_mapping(data: dict[str, Any]) -> ExportSpec:
    """An ExportSpec from a config entry; unknown keys are an error (typos must not pass silently)."""
    known = {f.name for f in dataclasses.fields(ExportSpec)}
    if "url_expiry_s" in data:
        raise ValueError(
            f"export {data.get('dataset', '?')!r}: url_expiry_s is retired (exports no longer store presigned "
            "URLs in their metadata); remove it and sign links on demand: lakerelay export sign MANIFEST --expires N"
        )
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(
            f"export {data.get('dataset', '?')!r}: unknown option(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(known))}"
        )
    values = dict(data)
    if isinstance(values.get("columns"), str):
        values["columns"] = [c.strip() for c in values["columns"].split(",") if c.strip()]
    values["columns"] = tuple(values.get("columns") or ())
    return ExportSpec(**values)


def load_specs(path: str | Path) -> list[ExportSpec]:
    """Specs from a YAML or JSON file: ``exports: [{dataset: ..., table: ..., ...}, ...]``."""
    text = Path(path).read_text()
    data = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
    entries = data.get("exports") if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a list under 'exports:'")
    specs = [spec_from_mapping(entry) for entry in entries]
    names = [s.dataset for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: dataset names must be unique, got {names}")
    return specs


def default_specs(feeds: Iterable[Any]) -> list[ExportSpec]:
    """One gzip NDJSON full export per feed (``FeedSpec``), depending on the feed's ingest asset."""
    return [
        ExportSpec(dataset=feed.name, table=feed.table_name, source_asset=feed.name, keep_last=0)
        for feed in feeds
    ]
