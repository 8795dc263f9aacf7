"""Feeds: one landing source ingested into one Delta table. Adding a feed is a config entry."""

from dataclasses import dataclass, field

import pyarrow as pa

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


@dataclass(frozen=True)
class FeedSpec:
    """A landing source and the Delta table it feeds.

    ``source`` is a path relative to the lake's landing root; ``table`` a table name under the lake root.
    """

    name: str
    source: str = ""
    table: str = ""
    format: str = "json"
    schema_hints: str = ""
    description: str = ""
    extra_metadata: dict = field(default_factory=dict)

    @property
    def table_name(self) -> str:
        return self.table or self.name

    @property
    def app_id(self) -> str:
        """The delta-rs application-transaction id under which this feed's batches are committed."""
        return f"lakerelay-ingest:{self.name}"

    def landing_uri(self, landing_root: str) -> str:
        """Where this feed's files land, under the lake's landing root."""
        return "/".join(p for p in (landing_root.rstrip("/"), self.source.strip("/")) if p)

    def hint_schema(self) -> pa.Schema:
        """The Arrow schema of the fields pinned by ``schema_hints``."""
        fields = []
        for part in filter(None, (p.strip() for p in self.schema_hints.split(","))):
            name, _, type_name = part.partition(" ")
            arrow_type = HINT_TYPES.get(type_name.strip().lower())
            if arrow_type is None:
                raise ValueError(
                    f"feed {self.name!r}: schema hint {part!r} has unknown type {type_name.strip()!r}; "
                    f"use one of {', '.join(sorted(HINT_TYPES))}"
                )
            fields.append(pa.field(name.strip(), arrow_type))
        return pa.schema(fields)


# The embedded default: security and operations events as JSON lines.
EVENTS_FEED = FeedSpec(
    name="events",
    source="events",
    schema_hints="ts timestamp, bytes_in bigint, bytes_out bigint, status_code bigint",
    description="Security and operations events (JSON lines) from the landing zone.",
)
