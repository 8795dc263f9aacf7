"""Appending to a Delta table at most once per (application id, version).

delta-rs records an application transaction but does not refuse a version it has already seen, so
the check is ours: read the table, skip if the version is already there, and otherwise commit against
*that* snapshot. A concurrent writer that commits the same application id in between makes our commit
fail with CommitFailedError instead of appending twice; we then read the version again.
"""

from typing import Literal

import pyarrow as pa
from deltalake import CommitProperties, DeltaTable, Transaction, WriterProperties, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError

# Rows per Parquet row group in the files lakerelay writes (delta-rs' default is ~1M, so a typical
# ingest file is one group). Readers split work and stream at row-group granularity: the post op's
# tasks each decode only the groups of their row range, and start posting after the first group
# instead of after the whole file. 32k rows of events are a few MB compressed.
ROW_GROUP_ROWS = 32_768


def writer_properties() -> WriterProperties:
    """How every Parquet file lakerelay writes to Delta is laid out (appends and compactions alike)."""
    return WriterProperties(max_row_group_size=ROW_GROUP_ROWS)


def transaction_version(uri: str, storage_options: dict[str, str], app_id: str) -> int:
    """The last version committed under ``app_id`` (0 when none, or when the table does not exist)."""
    try:
        return DeltaTable(uri, storage_options=storage_options).transaction_version(app_id) or 0
    except TableNotFoundError:
        return 0


def append_once(
    uri: str,
    storage_options: dict[str, str],
    data: pa.Table,
    app_id: str,
    version: int,
    *,
    custom_metadata: dict[str, str] | None = None,
    schema_mode: Literal["merge", "overwrite"] | None = None,
) -> bool:
    """Append ``data`` unless ``version`` of ``app_id`` is already committed; True when this call appended."""
    try:
        target: DeltaTable | str = DeltaTable(uri, storage_options=storage_options)
    except TableNotFoundError:
        target = uri
    if isinstance(target, DeltaTable) and (target.transaction_version(app_id) or 0) >= version:
        return False
    try:
        write_deltalake(
            target,
            data,
            mode="append",
            schema_mode=schema_mode,
            storage_options=storage_options,
            writer_properties=writer_properties(),
            commit_properties=CommitProperties(
                app_transactions=[Transaction(app_id, version)], custom_metadata=custom_metadata
            ),
        )
    except (CommitFailedError, DeltaError):
        # Lost a race (same app id, or two creators of a new table): it is fine if the winner
        # committed this very version; anything else is a real error.
        if transaction_version(uri, storage_options, app_id) >= version:
            return False
        raise
    return True


def refused_by_delta(exc: BaseException) -> bool:
    """Whether ``exc`` is Delta (or Arrow under it) refusing data or a schema, as opposed to anything else.

    delta-rs raises its own errors (``DeltaError``: a schema mismatch, a lost commit race), Arrow's
    (a cast it cannot make), ``ValueError`` for arguments that do not fit the table, and, for much of
    what its Rust core refuses ("Schema error: Invalid data type for Delta Lake", "Duplicate field
    name"), a bare ``Exception``. A subclass of Exception that is none of these (``TypeError``,
    ``AttributeError``, ...) is a bug of the caller's, not a refusal.
    """
    return isinstance(exc, DeltaError | pa.ArrowException | ValueError) or type(exc) is Exception
