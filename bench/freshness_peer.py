"""The peer of bench.freshness: Spark Structured Streaming's file source → foreachBatch → the sinks.

The seed's "Auto Loader to REST API" design, as its users write it: a streaming read of the landing
folder with a fixed schema, `trigger(processingTime="1 second")`, and a `foreachBatch` handler that
posts each micro-batch. It posts with lakerelay's own sink writer (same batching, keep-alive,
retries), to the index ``--index`` (default `peer`) of Elasticsearch and of HEC, ids from `event_id`.

    python -m bench.freshness_peer <landing folder> <sink url> <work folder>
    python -m bench.freshness_peer <landing> <sink url> <work> --index peerdefault --trigger default
    python -m bench.freshness_peer <landing> <sink url> <work> --trigger available-now --max-files-per-trigger 10

``--trigger``: ``processing`` (every second, the default here), ``default`` (Spark's: a micro-batch as
soon as the last one ended) or ``available-now``, the catch-up peer of ``bench.backlog``:
``trigger(availableNow=True)`` takes what has landed, in micro-batches of at most
``--max-files-per-trigger`` files, and the process exits.
"""

import argparse
from pathlib import Path

from pyspark.sql import SparkSession

from pipelines.deployment import LOCAL_HEC_TOKEN
from resources.sinks.resource import ElasticsearchSinkResource, SplunkHecSinkResource
from resources.sinks.writer import SinkWriter

SCHEMA = (
    "event_id string, file long, ts timestamp, host string, severity string, status_code long, "
    "bytes_in long, message string"
)


def main(
    landing: str,
    sink_url: str,
    work: str,
    index: str = "peer",
    trigger: str = "processing",
    max_files_per_trigger: int = 0,
) -> None:
    Path(landing).mkdir(parents=True, exist_ok=True)
    spark = (
        SparkSession.builder.master("local[2]")
        .appName("freshness-peer")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.shuffle.partitions", "2")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("WARN")
    sinks = [
        ElasticsearchSinkResource(sink_name="peer-es", url=sink_url, index=index).settings(),
        SplunkHecSinkResource(
            sink_name="peer-hec", url=sink_url, token=LOCAL_HEC_TOKEN, index=index
        ).settings(),
    ]

    def post(batch, batch_id: int) -> None:
        rows = batch.selectExpr(
            "event_id",
            "cast(to_json(struct(*)) as binary) AS doc",
            "cast(unix_micros(ts) as double) / 1e6 AS time",
        ).toArrow()
        if not rows.num_rows:
            return
        for settings in sinks:
            writer = SinkWriter(settings)
            writer.add_arrow(
                rows["event_id"].combine_chunks(), rows["doc"].combine_chunks(), rows["time"].combine_chunks()
            )
            outcome = writer.close()
            if outcome.pending or outcome.rejected:
                raise RuntimeError(
                    f"batch {batch_id}: {outcome.pending} pending, {len(outcome.rejected)} rejected"
                )

    reader = spark.readStream.schema(SCHEMA)
    if max_files_per_trigger:
        reader = reader.option("maxFilesPerTrigger", max_files_per_trigger)
    writer = reader.json(landing).writeStream.foreachBatch(post)
    if trigger == "available-now":
        writer = writer.trigger(availableNow=True)
    elif trigger == "processing":
        writer = writer.trigger(processingTime="1 second")
    query = writer.option("checkpointLocation", str(Path(work) / "checkpoint")).start()
    (Path(work) / "ready").write_text("ready\n")
    query.awaitTermination()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("landing")
    parser.add_argument("sink_url")
    parser.add_argument("work")
    parser.add_argument("--index", default="peer", help="the Elasticsearch and HEC index posted to")
    parser.add_argument("--trigger", choices=("processing", "default", "available-now"), default="processing")
    parser.add_argument("--max-files-per-trigger", type=int, default=0, help="0: Spark's default (all)")
    args = parser.parse_args()
    main(args.landing, args.sink_url, args.work, args.index, args.trigger, args.max_files_per_trigger)
