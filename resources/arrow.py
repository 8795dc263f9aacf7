"""Arrow helpers shared by the ingest, post and export stages and the sink writers."""

from typing import Any

import pyarrow as pa
import pyarrow.compute

# pyarrow.compute builds its functions at import time from Arrow's C++ function registry, so a type
# checker sees none of them; typed as what it is to one: a namespace of any attribute.
pc: Any = pyarrow.compute


def conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """``batch`` with ``schema``'s columns: a file written before a column was added has it as nulls.

    Delta keeps old files as they were written when the schema evolves, so a column may be missing
    from a file or stored with the narrower type it had then; both are made what the table says now.
    """
    columns = []
    for field in schema:
        index = batch.schema.get_field_index(field.name)
        column = batch.column(index) if index >= 0 else pa.nulls(batch.num_rows, field.type)
        columns.append(column if column.type == field.type else column.cast(field.type))
    return pa.RecordBatch.from_arrays(columns, schema=schema)
