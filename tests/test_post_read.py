"""Reading a feed's data files in row ranges: every row exactly once, whatever the split."""

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from pipelines.delta_once import ROW_GROUP_ROWS, append_once
from pipelines.post.plan import split_units
from pipelines.post.read_stage import _batches_in_range, _in_batch_range


def _one_file_table(tmp_path: Path, rows: int) -> pq.ParquetFile:
    table = pa.table({"n": pa.array(range(rows), pa.int64()), "_batch_id": pa.array([1] * rows, pa.int64())})
    uri = str(tmp_path / "feed")
    assert append_once(uri, {}, table, "feed", 1)
    [path] = DeltaTable(uri).file_uris()
    return pq.ParquetFile(path)


def test_files_lakerelay_writes_have_row_groups_readers_can_split_on(tmp_path: Path) -> None:
    parquet = _one_file_table(tmp_path, 100_000)

    sizes = [parquet.metadata.row_group(g).num_rows for g in range(parquet.metadata.num_row_groups)]

    assert sum(sizes) == 100_000
    assert len(sizes) >= 3 and max(sizes) <= ROW_GROUP_ROWS


@pytest.mark.parametrize("tasks", [1, 2, 3, 7, 8, 64])
def test_row_ranges_cover_every_row_once_in_order(tmp_path: Path, tasks: int) -> None:
    rows = 100_003
    parquet = _one_file_table(tmp_path, rows)

    units = split_units((rows,), tasks)
    read = [
        value
        for unit in units
        for batch in _batches_in_range(parquet, unit.row_start, unit.row_stop)
        for value in batch.column("n").to_pylist()
    ]

    assert read == list(range(rows))
    assert len(units) <= max(tasks, 1)


@pytest.mark.parametrize(
    ("batch_ids", "kept"),
    [
        ([3, 3, 3], [0, 1, 2]),  # wholly inside (2, 3]: the batch as it is
        ([2, 2], []),  # wholly before
        ([4, 5], []),  # wholly after
        ([2, 3, 4, 3], [1, 3]),  # straddling: filtered
        ([3, None, 3], [0, 2]),  # a row without a batch id is never posted
    ],
)
def test_only_rows_of_the_planned_ingest_batches_are_read(batch_ids: list, kept: list[int]) -> None:
    batch = pa.record_batch(
        {"n": pa.array(range(len(batch_ids)), pa.int64()), "_batch_id": pa.array(batch_ids, pa.int64())}
    )

    selected = _in_batch_range(batch, 2, 3)

    assert selected.column("n").to_pylist() == kept
