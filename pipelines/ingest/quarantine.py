"""The quarantine table: every bad record and unreadable file, with where it came from and why.

It lives at ``<lake>/_lakerelay/quarantine/<feed>`` and is appended once per batch under its own
application transaction, *before* the batch's data commit, so a crash between the two neither loses
nor doubles an entry.
"""

from datetime import UTC, datetime

import pyarrow as pa

from pipelines.delta_once import append_once
from pipelines.ingest.parsing import RAW_TEXT_LIMIT
from pipelines.ingest.reader import ReadResult

QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("batch_id", pa.int64(), nullable=False),
        pa.field("source_file", pa.string(), nullable=False),
        pa.field("line", pa.int64()),  # null for a whole unreadable file
        pa.field("kind", pa.string(), nullable=False),  # bad_record | unreadable_file
        pa.field("error", pa.string(), nullable=False),
        # The first RAW_TEXT_LIMIT bytes of the bad line as text (bytes that are not UTF-8 as \xNN
        # escapes), its size, and those bytes exactly as they were in the file.
        pa.field("raw_text", pa.string()),
        pa.field("raw_bytes", pa.int64()),
        pa.field("raw_data", pa.binary()),
        pa.field("recorded_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)


def quarantine_rows(result: ReadResult, batch_id: int) -> pa.Table:
    now = datetime.now(UTC)
    rows = [
        {
            "batch_id": batch_id,
            "source_file": q.path,
            "line": None,
            "kind": "unreadable_file",
            "error": q.error,
            "raw_text": None,
            "raw_bytes": None,
            "raw_data": None,
            "recorded_at": now,
        }
        for q in result.quarantined
    ]
    for per_file in result.bad_records:
        for bad in per_file.records:
            rows.append(
                {
                    "batch_id": batch_id,
                    "source_file": per_file.path,
                    "line": bad.line,
                    "kind": "bad_record",
                    "error": bad.error,
                    "raw_text": bad.raw[:RAW_TEXT_LIMIT].decode("utf-8", errors="backslashreplace"),
                    "raw_bytes": len(bad.raw),
                    "raw_data": bad.raw[:RAW_TEXT_LIMIT],
                    "recorded_at": now,
                }
            )
    return pa.Table.from_pylist(rows, schema=QUARANTINE_SCHEMA)


def record_quarantine(
    uri: str,
    storage_options: dict[str, str],
    feed_name: str,
    result: ReadResult,
    batch_id: int,
    app_id: str | None = None,
) -> int:
    """Append this batch's quarantine entries once; the number of entries.

    ``app_id`` (default ``lakerelay-quarantine:<feed>``) tells apart a second set of entries of one
    batch: files found unwritable only when the data commit failed.
    """
    rows = quarantine_rows(result, batch_id)
    if rows.num_rows:
        # merge: a quarantine table written before raw_data existed gains the column.
        append_once(
            uri,
            storage_options,
            rows,
            app_id or f"lakerelay-quarantine:{feed_name}",
            batch_id,
            schema_mode="merge",
        )
    return rows.num_rows
