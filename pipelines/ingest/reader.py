"""Reading one batch of landing files into one Arrow table, with lakerelay's metadata columns.

Files are read and parsed in parallel (Arrow's readers release the GIL), then conformed to the
feed's schema in file order, so a new column seen in one file has one type for the whole batch.
A file whose bytes fail anywhere on the way (unreadable, or a conforming error nobody foresaw: any
of ``FILE_CONTENT_ERRORS``) is quarantined with the reason, and the rest of the batch lands: one
poison file never blocks a feed. Any other error is lakerelay's own bug and fails the run.
A file that cannot be fetched (network, storage) is not quarantined: the read is retried up to the
feed's ``read_deadline`` and then the run fails with the batch still planned (``transport``).
"""

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.fs as pafs
from deltalake import Schema as DeltaSchema

from pipelines.delta_once import refused_by_delta
from pipelines.feeds import FeedSpec
from pipelines.ingest.discovery import LandingFile
from pipelines.ingest.formats import parse
from pipelines.ingest.parsing import (
    FILE_CONTENT_ERRORS,
    BadRecord,
    ParsedFile,
    UnreadableFile,
    UnstorableSchema,
)
from pipelines.ingest.schema import (
    RESCUED_COLUMN,
    TIMESTAMP_UTC,
    SchemaChangeError,
    conform,
    infer_schema,
    normalise_type,
)
from pipelines.ingest.transport import with_retries
from resources.arrow import pc

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


def data_schema(table_schema: pa.Schema | None) -> pa.Schema | None:
    """The feed's target schema: the table's data columns. Hinted columns the table does not have
    are not part of it: ``read_batch`` adds one, with its hinted type, once a file has it."""
    if table_schema is None:
        return None
    return pa.schema(
        [pa.field(f.name, normalise_type(f.type)) for f in table_schema if f.name not in RESERVED_COLUMNS]
    )


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
    parse_schema, optional_names = _parse_schema(target, hints)
    gave_up = threading.Event()  # one unreachable file ends the batch's reads: the run fails
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        parsed = list(
            pool.map(lambda f: _read_one(fs, feed, f, parse_schema, optional_names, gave_up), files)
        )
    readable = [(f, p) for f, p in zip(files, parsed, strict=True) if isinstance(p, ParsedFile)]
    result.quarantined = [p for p in parsed if isinstance(p, Quarantined)]
    schema = target
    if schema is None:
        samples = [p.table for _, p in readable[: feed.infer_max_files]]
        schema = infer_schema(samples, hints, RESERVED_COLUMNS)
    tables = _conform_files(feed, readable, schema, hints, batch_id, ingested_at, result)
    if tables:
        result.table = pa.concat_tables(tables, promote_options="default")
    else:
        # Still commit the batch (empty) so its number is recorded and it is never replayed.
        result.table = METADATA_SCHEMA.empty_table()
    return result


def _parse_schema(target: pa.Schema | None, hints: pa.Schema) -> tuple[pa.Schema | None, list[str]]:
    """The schema files are parsed with, and the names in it a file may lack (hinted, not in the table).

    Hinted columns the table does not have go into the parse schema only so that they are read with
    their hinted type; the parser leaves them out again for a file that does not have them.
    """
    known = {name.lower() for name in (*(target.names if target is not None else ()), *RESERVED_COLUMNS)}
    optional = [h for h in hints if h.name.lower() not in known]
    parse_fields = [*(target if target is not None else ()), *optional]
    parse_schema = pa.schema(parse_fields) if target is not None or parse_fields else None
    return parse_schema, [h.name for h in optional]


def _conform_files(
    feed: FeedSpec,
    readable: list[tuple[LandingFile, ParsedFile]],
    schema: pa.Schema,
    hints: pa.Schema,
    batch_id: int,
    ingested_at: datetime,
    result: ReadResult,
) -> list[pa.Table]:
    """Each readable file conformed to the schema, in file order, with the metadata columns; what was
    found on the way (quarantined files, bad records, new and ignored columns) goes into ``result``,
    and the batch's schema into ``result.schema``."""
    tables = []
    batch_schema: pa.Schema | None = None
    for landing_file, outcome in readable:
        try:
            conformed = conform(
                outcome.table,
                schema,
                feed.schema_evolution_mode,
                landing_file.path,
                outcome.rescued,
                hints,
                RESERVED_COLUMNS,
            )
            table = _with_metadata(conformed.table, landing_file, batch_id, ingested_at)
            if batch_schema is None or table.schema != batch_schema:
                _check_storable(table.schema)
                batch_schema = (
                    table.schema
                    if batch_schema is None
                    else pa.unify_schemas([batch_schema, table.schema], promote_options="default")
                )
        except (SchemaChangeError, MemoryError):
            raise  # the user's decision (fail_on_new_columns), or the machine's, not the file's
        except FILE_CONTENT_ERRORS as exc:  # this file's bytes: they must not block the feed
            result.quarantined.append(
                Quarantined(
                    landing_file.path,
                    f"could not be conformed to the table's schema ({type(exc).__name__}: {exc}); the "
                    "rest of the batch landed",
                )
            )
            continue
        if outcome.bad_records:
            result.bad_records.append(FileBadRecords(landing_file.path, outcome.bad_records))
        for name in conformed.new_columns:
            result.new_columns.setdefault(name, []).append(landing_file.path)
            schema = schema.append(conformed.table.schema.field(name))
        for name in conformed.ignored_columns:
            result.ignored_columns.setdefault(name, []).append(landing_file.path)
        result.rescued_rows += conformed.rescued_rows
        result.rows_per_file[landing_file.path] = conformed.table.num_rows
        tables.append(table)
    result.schema = schema
    return tables


def _check_storable(schema: pa.Schema) -> None:
    """Raise when Delta would refuse ``schema`` (invalid types, names differing only in case): that
    file is quarantined now instead of failing the batch's commit on every run."""
    try:
        DeltaSchema.from_arrow(schema)
    except Exception as exc:
        if not refused_by_delta(exc):
            raise
        # delta-rs words it "External error: Schema error: ..." in a bare Exception, maybe with a backtrace.
        raise UnstorableSchema(
            str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        ) from exc


def _read_one(
    fs: pafs.FileSystem,
    feed: FeedSpec,
    landing_file: LandingFile,
    target: pa.Schema | None,
    optional: list[str],
    gave_up: threading.Event | None = None,
) -> ParsedFile | Quarantined:
    try:
        # A transport fault (network cut, S3 5xx, local I/O error) is retried up to the feed's
        # read_deadline and then fails the run (LandingUnreachable): it says nothing about the bytes.
        raw = with_retries(
            lambda: _fetch(fs, landing_file.path),
            f"reading {landing_file.path}",
            feed.read_deadline_s(),
            gave_up=gave_up,
        )
    except FileNotFoundError as exc:
        return Quarantined(landing_file.path, f"file vanished before it was read: {exc}")
    try:
        return parse(feed, landing_file.path, raw, target, optional)
    except UnreadableFile as exc:
        return Quarantined(landing_file.path, str(exc))
    except MemoryError:
        raise
    except FILE_CONTENT_ERRORS as exc:  # a parser error nobody foresaw: this file's bytes, not the feed
        return Quarantined(landing_file.path, f"{type(exc).__name__}: {exc}")


def _fetch(fs: pafs.FileSystem, path: str) -> bytes:
    # compression=None: decompression is ours, so that broken data is reported, not raised.
    with fs.open_input_stream(path, compression=None) as stream:
        return stream.read()


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
