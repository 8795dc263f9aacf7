"""The dead-letter Delta table: every record a sink rejected, with the reason, never a secret."""

from datetime import UTC, datetime

import pyarrow as pa

from pipelines.delta_once import append_once

DEAD_LETTER_TABLE = "dead_letters"
DEAD_LETTER_SCHEMA = pa.schema(
    [
        ("sink", pa.string()),
        ("source_table", pa.string()),
        ("delta_version", pa.int64()),
        ("batch_to", pa.int64()),
        ("record_id", pa.string()),
        ("record", pa.string()),
        ("status", pa.int32()),
        ("error_type", pa.string()),
        ("reason", pa.string()),
        ("dead_lettered_at", pa.timestamp("us", tz="UTC")),
    ]
)


def append_dead_letters(
    table_uri: str,
    storage_options: dict[str, str],
    sink: str,
    source_table: str,
    delta_version: int,
    batch_to: int,
    rejected: pa.Table,
    group: int | None = None,
) -> int:
    """Append the rejected records once per (sink, batch_to), or per group of the plan with ``group``.

    A re-posted batch or group does not add them twice. A group is named by its plan (``delta_version``,
    ``batch_to``) and number, each with an application id of its own: groups settle in any order, and
    delta-rs' check of a transaction version only orders the versions of one id. Only groups with
    rejections add one, so their number stays small.
    """
    n = rejected.num_rows
    now = datetime.now(UTC)
    table = pa.table(
        {
            "sink": pa.repeat(pa.scalar(sink), n),
            "source_table": pa.repeat(pa.scalar(source_table), n),
            "delta_version": pa.repeat(pa.scalar(delta_version, pa.int64()), n),
            "batch_to": pa.repeat(pa.scalar(batch_to, pa.int64()), n),
            "record_id": rejected["record_id"],
            "record": rejected["record"].cast(pa.string()),
            "status": rejected["status"],
            "error_type": rejected["error_type"],
            "reason": rejected["reason"],
            "dead_lettered_at": pa.repeat(pa.scalar(now, pa.timestamp("us", tz="UTC")), n),
        },
        schema=DEAD_LETTER_SCHEMA,
    )
    app_id = f"lakerelay-dead-letters:{sink}:{source_table}"
    if group is None:
        return n if append_once(table_uri, storage_options, table, app_id, batch_to) else 0
    group_app_id = f"{app_id}:v{delta_version}:b{batch_to}:g{group}"
    return n if append_once(table_uri, storage_options, table, group_app_id, 1) else 0
