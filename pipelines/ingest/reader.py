"""Reading one batch of landing files into one Arrow table, with lakerelay's metadata columns.

Files are read and parsed in parallel (Arrow's readers release the GIL), then conformed to the
feed's schema in file order, so a new column seen in one file has one type for the whole batch.
"""

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from pipelines.feeds import FeedSpec
from pipelines.ingest.discovery import LandingFile
from pipelines.ingest.formats import BadRecord, ParsedFile, UnreadableFile, parse
from pipelines.ingest.schema import RESCUED_COLUMN, TIMESTAMP_UTC, conform, infer_schema, normalise_type

METADATA_SCHEMA = pa.schema(
    [
        ("_source_file", pa.string()),
        ("_source_row", pa.int64()),
        ("_source_modified_at", TIMESTAMP_UTC),
        ("_ingested_at", TIMESTAMP_UTC),
        ("_batch_id", pa.int64()),
    ]
)
RESERVED_COLUMNS = {*METADATA_SCHEMA.names, RESCUED_COLUMN}


@dataclass
class Quarantined:
    """A file that could not be read at all; it stays in the landing zone and is reported."""

    path: str
    error: str


@dataclass
class FileBadRecords:
    path: str
    records: list[BadRecord]


@dataclass
class ReadResult:
    table: pa.Table
    rows_per_file: dict[str, int] = field(default_factory=dict)
    quarantined: list[Quarantined] = field(default_factory=list)
    bad_records: list[FileBadRecords] = field(default_factory=list)
    rescued_rows: int = 0
    new_columns: dict[str, list[str]] = field(default_factory=dict)  # column -> files that brought it
    ignored_columns: dict[str, list[str]] = field(default_factory=dict)
    schema: pa.Schema | None = None

    @property
    def bad_record_count(self) -> int:
        return sum(len(b.records) for b in self.bad_records)


def data_schema(table_schema: pa.Schema | None, hints: pa.Schema) -> pa.Schema | None:
    """The feed's target schema: the table's data columns, plus hinted columns it does not have yet."""
    if table_schema is None:
        return None
    fields = [
        pa.field(f.name, normalise_type(f.type)) for f in table_schema if f.name not in RESERVED_COLUMNS
    ]
    names = {f.name for f in fields}
    return pa.schema(fields + [h for h in hints if h.name not in names])


def read_batch(
    fs: pafs.FileSystem,
    feed: FeedSpec,
    files: list[LandingFile],
    batch_id: int,
    target: pa.Schema | None,
    threads: int = 4,
) -> ReadResult:
    """Read ``files``; ``target`` is the table's schema (None before the first batch: infer it)."""
    hints = feed.hint_schema()
    ingested_at = datetime.now(UTC)
    result = ReadResult(METADATA_SCHEMA.empty_table())
    parse_schema = target if target is not None else (hints if len(hints) else None)
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        parsed = list(pool.map(lambda f: _read_one(fs, feed, f, parse_schema), files))
    readable = [(f, p) for f, p in zip(files, parsed, strict=True) if isinstance(p, ParsedFile)]
    result.quarantined = [p for p in parsed if isinstance(p, Quarantined)]
    if target is None:
        target = infer_schema([p.table for _, p in readable[: feed.infer_max_files]], hints)
    tables = []
    for landing_file, outcome in readable:
        if outcome.bad_records:
            result.bad_records.append(FileBadRecords(landing_file.path, outcome.bad_records))
        conformed = conform(
            outcome.table, target, feed.schema_evolution_mode, landing_file.path, outcome.rescued
        )
        for name in conformed.new_columns:
            result.new_columns.setdefault(name, []).append(landing_file.path)
            target = target.append(conformed.table.schema.field(name))
        for name in conformed.ignored_columns:
            result.ignored_columns.setdefault(name, []).append(landing_file.path)
        result.rescued_rows += conformed.rescued_rows
        result.rows_per_file[landing_file.path] = conformed.table.num_rows
        tables.append(_with_metadata(conformed.table, landing_file, batch_id, ingested_at))
    result.schema = target
    if tables:
        result.table = pa.concat_tables(tables, promote_options="default")
    else:
        # Still commit the batch (empty) so its number is recorded and it is never replayed.
        result.table = METADATA_SCHEMA.empty_table()
    return result


def _read_one(
    fs: pafs.FileSystem, feed: FeedSpec, landing_file: LandingFile, target: pa.Schema | None
) -> ParsedFile | Quarantined:
    try:
        # compression=None: decompression is ours, so that broken data is reported, not raised.
        with fs.open_input_stream(landing_file.path, compression=None) as stream:
            raw = stream.read()
        return parse(feed, landing_file.path, raw, target)
    except UnreadableFile as exc:
        return Quarantined(landing_file.path, str(exc))
    except FileNotFoundError as exc:
        return Quarantined(landing_file.path, f"file vanished before it was read: {exc}")
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as exc:
        return Quarantined(landing_file.path, f"{type(exc).__name__}: {exc}")


def _with_metadata(
    table: pa.Table, landing_file: LandingFile, batch_id: int, ingested_at: datetime
) -> pa.Table:
    n = table.num_rows
    modified = datetime.fromtimestamp(landing_file.mtime_ns / 1e9, UTC)
    return (
        table.append_column("_source_file", pa.repeat(pa.scalar(landing_file.path, pa.string()), n))
        .append_column("_source_row", _row_numbers(n))
        .append_column("_source_modified_at", pa.repeat(pa.scalar(modified, TIMESTAMP_UTC), n))
        .append_column("_ingested_at", pa.repeat(pa.scalar(ingested_at, TIMESTAMP_UTC), n))
        .append_column("_batch_id", pa.repeat(pa.scalar(batch_id, pa.int64()), n))
    )


def _row_numbers(n: int) -> pa.Array:
    """0..n-1 as int64, computed in Arrow (a Python range costs more than the JSON parse of the file)."""
    return pc.subtract(pc.cumulative_sum(pa.repeat(pa.scalar(1, pa.int64()), n)), 1)
