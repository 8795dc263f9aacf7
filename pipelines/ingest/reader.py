"""Reading landing files into Arrow, with lakerelay's metadata columns."""

import io
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.json as pj

from pipelines.feeds import FeedSpec
from pipelines.ingest.discovery import LandingFile

TIMESTAMP_UTC = pa.timestamp("us", tz="UTC")
METADATA_SCHEMA = pa.schema(
    [
        ("_source_file", pa.string()),
        ("_source_row", pa.int64()),
        ("_source_modified_at", TIMESTAMP_UTC),
        ("_ingested_at", TIMESTAMP_UTC),
        ("_batch_id", pa.int64()),
    ]
)


@dataclass
class Quarantined:
    """A file that could not be read at all; it stays in the landing zone and is reported."""

    path: str
    error: str


@dataclass
class ReadResult:
    table: pa.Table
    rows_per_file: dict[str, int] = field(default_factory=dict)
    quarantined: list[Quarantined] = field(default_factory=list)


def read_batch(
    fs: pafs.FileSystem, feed: FeedSpec, files: list[LandingFile], batch_id: int, threads: int = 4
) -> ReadResult:
    """Read ``files`` in parallel (Arrow's readers release the GIL) into one table."""
    if feed.format != "json":
        raise ValueError(f"feed {feed.name!r}: format {feed.format!r} is not supported yet; use 'json'")
    hints = feed.hint_schema()
    ingested_at = datetime.now(UTC)
    result = ReadResult(METADATA_SCHEMA.empty_table())
    tables = []
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        outcomes = pool.map(lambda f: _read_one(fs, f, hints), files)
        for landing_file, outcome in zip(files, outcomes, strict=True):
            if isinstance(outcome, Quarantined):
                result.quarantined.append(outcome)
                continue
            tables.append(_with_metadata(outcome, landing_file, batch_id, ingested_at))
            result.rows_per_file[landing_file.path] = outcome.num_rows
    if tables:
        result.table = pa.concat_tables(tables, promote_options="permissive").combine_chunks()
    else:
        # Still commit the batch (empty) so its number is recorded and it is never replayed.
        result.table = METADATA_SCHEMA.empty_table()
    return result


def _read_one(fs: pafs.FileSystem, landing_file: LandingFile, hints: pa.Schema) -> pa.Table | Quarantined:
    try:
        with fs.open_input_stream(landing_file.path) as stream:
            raw = stream.read()
        table = pj.read_json(
            io.BytesIO(raw),
            read_options=pj.ReadOptions(use_threads=True, block_size=1 << 24),
            parse_options=pj.ParseOptions(explicit_schema=hints, unexpected_field_behavior="infer"),
        )
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as exc:
        return Quarantined(landing_file.path, f"{type(exc).__name__}: {exc}")
    return _normalise_types(table)


def _normalise_types(table: pa.Table) -> pa.Table:
    # Delta stores timestamps in microseconds with UTC; Arrow's JSON reader may infer seconds.
    for i, fld in enumerate(table.schema):
        if pa.types.is_timestamp(fld.type) and fld.type != TIMESTAMP_UTC:
            column = table.column(i)
            if fld.type.tz is None:
                column = pc.assume_timezone(column, "UTC")
            table = table.set_column(i, fld.name, column.cast(TIMESTAMP_UTC))
        elif pa.types.is_null(fld.type):
            # An all-null column has no type yet; string is what a later file most likely brings.
            table = table.set_column(i, fld.name, table.column(i).cast(pa.string()))
    return table


def _with_metadata(
    table: pa.Table, landing_file: LandingFile, batch_id: int, ingested_at: datetime
) -> pa.Table:
    n = table.num_rows
    modified = datetime.fromtimestamp(landing_file.mtime_ns / 1e9, UTC)
    return (
        table.append_column("_source_file", pa.repeat(pa.scalar(landing_file.path, pa.string()), n))
        .append_column("_source_row", pa.array(range(n), pa.int64()))
        .append_column("_source_modified_at", pa.repeat(pa.scalar(modified, TIMESTAMP_UTC), n))
        .append_column("_ingested_at", pa.repeat(pa.scalar(ingested_at, TIMESTAMP_UTC), n))
        .append_column("_batch_id", pa.repeat(pa.scalar(batch_id, pa.int64()), n))
    )
