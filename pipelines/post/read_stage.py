"""Reading the planned Delta data files inside Spark tasks, with no JVM connector for Delta or S3.

A ``spark.range`` of file indexes is mapped, in Arrow, to the rows of those files. This runs the
same on local Spark, a cluster and Spark Connect, and the data never passes through the driver.
"""

from collections.abc import Callable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.pandas.types import from_arrow_schema

from pipelines.post.plan import PostPlan, ReadUnit, split_units
from resources.arrow import conform, pc
from resources.filesystem import FileSystemSettings
from resources.worker_heap import freeze_imported_heap

_BATCH_ROWS = 8192  # rows per Arrow batch handed to Spark: small enough to start posting early


def read_planned_rows(
    spark: SparkSession, plan: PostPlan, fs: FileSystemSettings, max_tasks: int
) -> tuple[DataFrame, int]:
    """The planned rows as a DataFrame of up to ``max_tasks`` partitions, and that partition count."""
    units = split_units(plan.file_rows or (None,) * len(plan.files), max_tasks)
    tasks = max(1, min(len(units), max_tasks))
    return read_units(spark, plan, fs, units, tasks), tasks


def read_units(
    spark: SparkSession, plan: PostPlan, fs: FileSystemSettings, units: list[ReadUnit], tasks: int = 1
) -> DataFrame:
    """The rows of ``units`` of the plan's files as a DataFrame of ``tasks`` partitions."""
    spark_schema = from_arrow_schema(plan.schema, prefer_timestamp_ntz=False)
    reader = _unit_reader(plan.files, units, plan.schema, fs, plan.batch_from, plan.batch_to)
    return spark.range(0, len(units), 1, numPartitions=max(1, tasks)).mapInArrow(reader, spark_schema)


def _unit_reader(
    files: tuple[str, ...],
    units: list[ReadUnit],
    schema: pa.Schema,
    fs_settings: FileSystemSettings,
    batch_from: int,
    batch_to: int,
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    def read(index_batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        freeze_imported_heap()
        for index_batch in index_batches:
            for index in index_batch.column(0).to_pylist():
                unit = units[index]
                filesystem, path = fs_settings.resolve(files[unit.file_index])
                parquet = pq.ParquetFile(filesystem.open_input_file(path))
                for batch in _batches_in_range(parquet, unit.row_start, unit.row_stop):
                    selected = _in_batch_range(batch, batch_from, batch_to)
                    if selected.num_rows:
                        yield conform(selected, schema)

    return read


def _in_batch_range(batch: pa.RecordBatch, batch_from: int, batch_to: int) -> pa.RecordBatch:
    """The rows of ingest batches ``(batch_from, batch_to]``.

    A data file holds one ingest batch, so a read batch is nearly always wholly in the range or
    wholly out of it: one min/max pass decides those without the filter, which copied every column
    (py-spy: 13% of the workers' samples).
    """
    ids = batch.column("_batch_id")
    if ids.null_count == 0 and len(ids):
        bounds = pc.min_max(ids)
        low, high = bounds["min"].as_py(), bounds["max"].as_py()
        if batch_from < low and high <= batch_to:
            return batch
        if high <= batch_from or batch_to < low:
            return batch.slice(0, 0)
    return batch.filter(pc.and_(pc.greater(ids, batch_from), pc.less_equal(ids, batch_to)))


def _batches_in_range(parquet: pq.ParquetFile, start: int, stop: int | None) -> Iterator[pa.RecordBatch]:
    """Rows ``[start, stop)`` of a file, decoding only the row groups that overlap the range.

    Groups are decoded batch by batch (``iter_batches``), so the first records reach the posting
    stage while the rest of a group is still being read.
    """
    metadata = parquet.metadata
    stop = metadata.num_rows if stop is None else min(stop, metadata.num_rows)
    group_start = 0
    for group in range(metadata.num_row_groups):
        group_stop = group_start + metadata.row_group(group).num_rows
        if group_stop > start and group_start < stop:
            position = group_start
            for batch in parquet.iter_batches(batch_size=_BATCH_ROWS, row_groups=[group]):
                lo, hi = max(start, position), min(stop, position + batch.num_rows)
                if hi > lo:
                    yield batch.slice(lo - position, hi - lo)
                position += batch.num_rows
                if position >= stop:
                    break
        group_start = group_stop
