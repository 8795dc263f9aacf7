"""Reading the planned Delta data files inside Spark tasks, with no JVM connector for Delta or S3.

A ``spark.range`` of file indexes is mapped, in Arrow, to the rows of those files. This runs the
same on local Spark, a cluster and Spark Connect, and the data never passes through the driver.
"""

from collections.abc import Callable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.pandas.types import from_arrow_schema

from pipelines.post.plan import PostPlan
from resources.lake import FileSystemSettings


def read_planned_rows(
    spark: SparkSession, plan: PostPlan, fs: FileSystemSettings, max_tasks: int
) -> DataFrame:
    tasks = max(1, min(len(plan.files), max_tasks))
    spark_schema = from_arrow_schema(plan.schema, prefer_timestamp_ntz=False)
    reader = _file_reader(plan.files, plan.schema, fs, plan.batch_from, plan.batch_to)
    return spark.range(0, len(plan.files), 1, numPartitions=tasks).mapInArrow(reader, spark_schema)


def _file_reader(
    files: tuple[str, ...], schema: pa.Schema, fs_settings: FileSystemSettings, batch_from: int, batch_to: int
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    def read(index_batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for index_batch in index_batches:
            for index in index_batch.column(0).to_pylist():
                filesystem, path = fs_settings.resolve(files[index])
                parquet = pq.ParquetFile(filesystem.open_input_file(path))
                for batch in parquet.iter_batches(batch_size=8192):
                    in_range = pc.and_(
                        pc.greater(batch.column("_batch_id"), batch_from),
                        pc.less_equal(batch.column("_batch_id"), batch_to),
                    )
                    selected = batch.filter(in_range)
                    if selected.num_rows:
                        yield _conform(selected, schema)

    return read


def _conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """Give a file written before a schema change the table's current columns (missing ones as nulls)."""
    columns = []
    for field in schema:
        index = batch.schema.get_field_index(field.name)
        column = batch.column(index) if index >= 0 else pa.nulls(batch.num_rows, field.type)
        columns.append(column if column.type == field.type else column.cast(field.type))
    return pa.RecordBatch.from_arrays(columns, schema=schema)
