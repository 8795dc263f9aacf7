"""Feeds: one landing source ingested into one Delta table. Adding a feed is a config entry.

Feeds come from a YAML or JSON file (``load_feeds``), or the embedded events feed by default.
"""

import json
import re
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import yaml

# Arrow types for the short names users write in schema hints ("ts timestamp, bytes bigint").
HINT_TYPES: dict[str, pa.DataType] = {
    "string": pa.string(),
    "bigint": pa.int64(),
    "long": pa.int64(),
    "int": pa.int32(),
    "double": pa.float64(),
    "float": pa.float32(),
    "boolean": pa.bool_(),
    "timestamp": pa.timestamp("us", tz="UTC"),
    "date": pa.date32(),
}
FORMATS = ("json", "json_array", "csv", "parquet")
EVOLUTION_MODES = ("add_new_columns", "rescue", "fail_on_new_columns", "none")
LISTING_MODES = ("incremental", "full")
RELAY_MODES = ("triggered", "continuous")  # continuous: one long-lived run per feed (pipelines/continuous)
_DURATION = re.compile(
    r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|seconds?|m|min|minutes?|h|hours?|d|days?|w|weeks?)?\s*$"
)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration_s(text: str | float | int) -> float:
    """Seconds in "90", "90s", "15 minutes", "1h", "1 day", "1 week" (Auto Loader's backfillInterval style)."""
    if isinstance(text, int | float):
        return float(text)
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"cannot read duration {text!r}: write e.g. '30s', '15 minutes', '1 hour', '1 day'")
    unit = (match.group(2) or "s")[0]
    return float(match.group(1)) * _UNIT_SECONDS[unit]


@dataclass(frozen=True)
class CsvOptions:
    header: bool = True
    delimiter: str = ","
    quote: str = '"'
    escape: str | None = None


@dataclass(frozen=True)
class FeedSpec:
    """A landing source and the Delta table it feeds.

    ``source`` is a path relative to the lake's landing root, or a full ``s3://bucket/prefix`` or
    absolute folder; ``table`` a table name under the lake root. README.md, "Ingestion", lists every option.
    """

    name: str
    source: str = ""
    table: str = ""
    format: str = "json"
    csv: CsvOptions = field(default_factory=CsvOptions)
    encoding: str = "utf-8"
    schema_hints: str = ""
    schema_evolution_mode: str = "add_new_columns"
    infer_max_files: int = 100
    recursive: bool = True
    path_glob: str = ""
    modified_after: str = ""
    listing: str = "incremental"
    backfill_interval: str = "1 hour"
    max_files_per_batch: int = 1000
    max_bytes_per_batch: int = 0
    allow_overwrites: bool = False
    # Reads of the landing zone that fail in transport are retried this long, then the run fails.
    read_deadline: str = "2 minutes"
    # A folder's file is taken once its mtime is this old (it may still be being written before).
    # Off by default: a non-zero value delays every file, and writers that rename into place need none.
    settle_time: str = "0s"
    # Each run also lists the names before the cursor, so late-named files land without a backfill.
    find_late_names: bool = True
    max_quarantine_rate: float = 0.0
    # Spark SQL select expressions added before posting; None = the default enrichment, each
    # expression only where the table has its columns; () = post records as they are.
    enrich: tuple[str, ...] | None = None
    # "triggered": a sensor starts a run when files land; "continuous": one always-on run per feed.
    mode: str = "triggered"
    # Continuous mode on S3: the SQS queue URL that receives the bucket's object-created notifications
    # (without it the run lists the landing zone every second).
    notification_queue: str = ""
    description: str = ""

    def __post_init__(self) -> None:
        def bad(option: str, value: object, allowed: tuple) -> ValueError:
            return ValueError(f"feed {self.name!r}: {option} {value!r} is not one of {', '.join(allowed)}")

        if self.format not in FORMATS:
            raise bad("format", self.format, FORMATS)
        if self.schema_evolution_mode not in EVOLUTION_MODES:
            raise bad("schema_evolution_mode", self.schema_evolution_mode, EVOLUTION_MODES)
        if self.listing not in LISTING_MODES:
            raise bad("listing", self.listing, LISTING_MODES)
        if self.mode not in RELAY_MODES:
            raise bad("mode", self.mode, RELAY_MODES)
        if self.max_files_per_batch <= 0 or self.max_bytes_per_batch < 0:
            raise ValueError(f"feed {self.name!r}: max_files_per_batch must be > 0, max_bytes_per_batch >= 0")
        for option in ("backfill_interval", "read_deadline", "settle_time"):
            try:
                parse_duration_s(getattr(self, option))
            except ValueError as exc:
                raise ValueError(f"feed {self.name!r}: {option}: {exc}") from None
        if self.enrich is not None and not all(isinstance(e, str) and e.strip() for e in self.enrich):
            raise ValueError(
                f"feed {self.name!r}: enrich must be a list of Spark SQL select expressions, "
                f'e.g. ["upper(host) AS host_upper"], got {list(self.enrich)!r}'
            )
        self.modified_after_ns()
        "".encode(self.encoding)  # raises LookupError for an unknown codec name

    @property
    def table_name(self) -> str:
        return self.table or self.name

    @property
    def app_id(self) -> str:
        """The delta-rs application-transaction id under which this feed's batches are committed."""
        return f"lakerelay-ingest:{self.name}"

    def landing_uri(self, landing_root: str) -> str:
        """Where this feed's files land: under the lake's landing root, or ``source`` when it is absolute."""
        if "://" in self.source or self.source.startswith("/"):
            return self.source.rstrip("/")
        return "/".join(p for p in (landing_root.rstrip("/"), self.source.strip("/")) if p)

    def backfill_interval_s(self) -> float:
        return parse_duration_s(self.backfill_interval)

    def read_deadline_s(self) -> float:
        return parse_duration_s(self.read_deadline)

    def settle_time_s(self) -> float:
        return parse_duration_s(self.settle_time)

    def modified_after_ns(self) -> int:
        """``modified_after`` (ISO 8601; naive means UTC) in epoch nanoseconds; 0 when unset."""
        if not self.modified_after:
            return 0
        try:
            moment = datetime.fromisoformat(self.modified_after.replace("Z", "+00:00"))
        except ValueError as exc:
            raise ValueError(
                f"feed {self.name!r}: modified_after {self.modified_after!r} is not ISO 8601, "
                "e.g. '2026-11-01T00:00:00Z'"
            ) from exc
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return int(moment.timestamp() * 1e9)

    def hint_schema(self) -> pa.Schema:
        """The Arrow schema of the fields pinned by ``schema_hints``."""
        hints = []
        for part in filter(None, (p.strip() for p in self.schema_hints.split(","))):
            name, _, type_name = part.partition(" ")
            arrow_type = HINT_TYPES.get(type_name.strip().lower())
            if arrow_type is None:
                raise ValueError(
                    f"feed {self.name!r}: schema hint {part!r} has unknown type {type_name.strip()!r}; "
                    f"use one of {', '.join(sorted(HINT_TYPES))}"
                )
            hints.append(pa.field(name.strip(), arrow_type))
        return pa.schema(hints)


def feed_from_mapping(entry: dict) -> FeedSpec:
    """One feed from a config mapping; unknown keys are an error that lists the known ones."""
    known = {f.name for f in fields(FeedSpec)}
    unknown = sorted(set(entry) - known)
    if unknown or "name" not in entry:
        raise ValueError(
            f"feed entry {entry.get('name', '<no name>')!r}: "
            + (f"unknown option(s) {unknown}; " if unknown else "missing 'name'; ")
            + f"known options: {', '.join(sorted(known))}"
        )
    values = dict(entry)
    if isinstance(values.get("csv"), dict):
        values["csv"] = CsvOptions(**values["csv"])
    if "enrich" in values and values["enrich"] is not None:
        if isinstance(values["enrich"], str) or not isinstance(values["enrich"], list | tuple):
            raise ValueError(
                f"feed {entry['name']!r}: enrich must be a list of Spark SQL select expressions, "
                f"got {values['enrich']!r}"
            )
        values["enrich"] = tuple(values["enrich"])
    if values.get("schema_hints") and isinstance(values["schema_hints"], dict):
        values["schema_hints"] = ", ".join(f"{k} {v}" for k, v in values["schema_hints"].items())
    return FeedSpec(**values)


def load_feeds(path: str | Path | None, default: list[FeedSpec]) -> list[FeedSpec]:
    """Feeds from a YAML/JSON file (``{"feeds": [...]}`` or a list); ``default`` when ``path`` is unset."""
    if not path:
        return list(default)
    text = Path(path).read_text()
    document = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
    entries = document.get("feeds") if isinstance(document, dict) else document
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path}: expected a non-empty list of feeds under 'feeds:'")
    feeds = [feed_from_mapping(e) for e in entries]
    names = [f.name for f in feeds]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"{path}: feed names must be unique; repeated: {duplicates}")
    return feeds


# The embedded default: security and operations events as JSON lines.
EVENTS_FEED = FeedSpec(
    name="events",
    source="events",
    schema_hints="ts timestamp, bytes_in bigint, bytes_out bigint, status_code bigint",
    description="Security and operations events (JSON lines) from the landing zone.",
)
