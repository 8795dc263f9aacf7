"""Which data files hold the records a sink has not settled yet.

Every ingested row carries ``_batch_id``, and each Delta commit of the ingest records the batch number
as an application transaction. A sink's progress is a batch number, so the new records are exactly
``progress < _batch_id <= batch at the pinned version``: a filter that file statistics prune, and that
stays right after compaction rewrites files (a diff of file lists would post compacted rows twice).
"""

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable


@dataclass(frozen=True)
class PostPlan:
    table_uri: str
    delta_version: int
    batch_from: int  # exclusive
    batch_to: int  # inclusive
    files: tuple[str, ...]
    schema: pa.Schema

    @property
    def empty(self) -> bool:
        return self.batch_to <= self.batch_from or not self.files


def plan_post(table_uri: str, storage_options: dict[str, str], app_id: str, settled_batch: int) -> PostPlan:
    table = DeltaTable(table_uri, storage_options=storage_options)
    version = table.version()
    last_batch = table.transaction_version(app_id) or 0
    schema = pa.schema(table.schema().to_arrow())
    if last_batch <= settled_batch:
        return PostPlan(table_uri, version, settled_batch, last_batch, (), schema)
    actions = pa.table(table.get_add_actions(flatten=True))
    keep = pc.scalar(True)
    if "min._batch_id" in actions.column_names:
        # Files without statistics (null) are kept: reading them costs time, skipping them loses data.
        low = pc.fill_null(pc.less_equal(actions["min._batch_id"], last_batch), True)
        high = pc.fill_null(pc.greater(actions["max._batch_id"], settled_batch), True)
        keep = pc.and_(low, high)
    paths = actions.filter(keep)["path"].to_pylist() if actions.num_rows else []
    files = tuple(p if "://" in p or p.startswith("/") else f"{table_uri.rstrip('/')}/{p}" for p in paths)
    return PostPlan(table_uri, version, settled_batch, last_batch, files, schema)
