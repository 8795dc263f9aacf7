"""Ingest benchmark: lakerelay vs pyarrow+delta-rs vs Spark's file source, and discovery scaling.

    python -m bench.ingest [--files 40 --records-per-file 5000 --scaling-ingested 100000]

Every contender reads the same generated JSON-lines files. The last line holds ``key=value`` pairs:
``vs_arrow`` (lakerelay rows/s ÷ pyarrow.json + write_deltalake rows/s), ``vs_spark_file_source``
(lakerelay ÷ Spark ``readStream.json`` → parquet, availableNow, in its own local SparkSession) and
``discovery_scaling`` (time to find and plan 100 new files among N ingested ÷ among 1,000).
"""

import argparse
import logging
import shutil
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.json as pj
from deltalake import write_deltalake

from lakerelay.devtools.sample_events import write_landing_zone
from pipelines.delta_once import append_once
from pipelines.feeds import EVENTS_FEED, FeedSpec
from pipelines.ingest.context import IngestContext, IngestReport
from pipelines.ingest.discovery import digests
from pipelines.ingest.ledger import FileLedger
from pipelines.ingest.maintenance import maintain_feed
from pipelines.ingest.planning import discover_new_files
from pipelines.ingest.reader import METADATA_SCHEMA
from pipelines.ingest.runner import ingest_feed
from resources.lake import LakeResource


def bench_lakerelay(landing: Path, work: Path) -> float:
    lake = LakeResource(lake_uri=str(work / "lake"), landing_uri=str(landing.parent))
    started = time.perf_counter()
    report = ingest_feed(EVENTS_FEED, lake)
    elapsed = time.perf_counter() - started
    return report.rows / elapsed


def bench_arrow(landing: Path, work: Path) -> float:
    started = time.perf_counter()
    tables = [pj.read_json(path) for path in sorted(landing.glob("*.json"))]
    table = pa.concat_tables(tables)
    write_deltalake(str(work / "arrow_table"), table, mode="append")
    elapsed = time.perf_counter() - started
    return table.num_rows / elapsed


def bench_spark(landing: Path, work: Path, rows: int) -> float:
    from pyspark.sql import SparkSession

    from pipelines.deployment import spark_config
    from resources.spark import prepare_classic_environment

    prepare_classic_environment(spark_config())  # this Python for the workers, loopback for the JVM
    spark = (
        SparkSession.builder.master("local[2]")
        .appName("bench-ingest")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.shuffle.partitions", "4")
        .getOrCreate()
    )
    try:
        # The schema comes from a batch read outside the timing (a streaming source needs one up front).
        schema = spark.read.json(str(next(landing.glob("*.json")))).schema
        started = time.perf_counter()
        query = (
            spark.readStream.schema(schema)
            .json(str(landing))
            .writeStream.format("parquet")
            .option("checkpointLocation", str(work / "spark_checkpoint"))
            .trigger(availableNow=True)
            .start(str(work / "spark_out"))
        )
        query.awaitTermination()
        elapsed = time.perf_counter() - started
        written = spark.read.parquet(str(work / "spark_out")).count()
        assert written == rows, f"Spark wrote {written} rows, expected {rows}"
    finally:
        spark.stop()
    return rows / elapsed


def _tiny_files(root: Path, first: int, count: int, per_folder: int = 1000) -> None:
    """One-record files in folders of ``per_folder`` (a dated layout: landing/<folder>/<file>)."""
    for i in range(first, first + count):
        folder = root / f"part-{i // per_folder:05d}"
        if i % per_folder == 0 or i == first:
            folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f-{i:07d}.json").write_bytes(b'{"event_id": "evt-%d"}\n' % i)


def discovery_seconds(
    work: Path, ingested: int, maintained: bool, late_names: bool = False, new: int = 100, repeats: int = 7
) -> float:
    """Median time to list, look up and plan ``new`` files after ``ingested`` were ingested.

    ``late_names``: the feed's default mode, which also lists the names before the cursor (late
    names); it grows with the zone by design, so it is reported beside ``discovery_scaling`` (the
    listing after the cursor, which must not grow with what was ingested) rather than inside it.
    """
    feed = FeedSpec(name="scale", source="scale", find_late_names=late_names)
    lake = LakeResource(
        lake_uri=str(work / f"lake-{ingested}-{maintained}-{late_names}"),
        landing_uri=str(work / f"landing-{ingested}"),
    )
    root = Path(lake.landing_uri) / "scale"
    shutil.rmtree(root, ignore_errors=True)
    _tiny_files(root, 0, ingested)
    # The state an ingest of ``ingested`` files leaves behind: ledger entries planned in batches of
    # 1,000, the batch numbers committed to the table, and the listing cursor after the last file.
    ledger = FileLedger.for_feed(feed, lake)
    ctx = IngestContext(
        feed,
        lake,
        {},
        lake.table_uri("scale"),
        lake.resolve(lake.landing_uri)[0],
        IngestReport(),
        logging.getLogger(),
    )
    listed = discover_new_files(ctx, ledger, {}, True, time.time())[1]
    batches = [listed[i : i + 1000] for i in range(0, len(listed), 1000)]
    for number, chunk in enumerate(batches, start=1):
        ledger.plan(number, chunk)
    append_once(ctx.table_uri, {}, METADATA_SCHEMA.empty_table(), feed.app_id, len(batches))
    if maintained:
        maintain_feed(feed, lake, retention_hours=168)  # what the daily maintenance schedule does
    # What the last ingest run leaves: the cursor after its last file and, for late names, the
    # fingerprints of the files before it.
    cursor = {"start_after": listed[-1].path, "last_full_listing_at": time.time()}
    if late_names:
        cursor["known_digests"] = digests(listed)
    timings = []
    next_batch = len(batches)
    for repeat in range(repeats):
        _tiny_files(root, ingested + repeat * new, new)
        started = time.perf_counter()
        _full, found, fresh = discover_new_files(ctx, ledger, cursor, None, time.time())
        next_batch += 1
        assert ledger.plan(next_batch, fresh)
        timings.append(time.perf_counter() - started)
        assert len(fresh) == new, (len(found), len(fresh))
        cursor = {**cursor, "start_after": fresh[-1].path}
        if late_names:
            cursor["known_digests"] = digests([*listed, *fresh])
            listed = [*listed, *fresh]
    return sorted(timings)[len(timings) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=40)
    parser.add_argument("--records-per-file", type=int, default=5000)
    parser.add_argument("--scaling-ingested", type=int, default=100_000)
    parser.add_argument("--skip-spark", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lakerelay-bench-ingest-"))
    try:
        landing = work / "landing" / "events"
        rows = write_landing_zone(landing, args.files, args.records_per_file)
        size_mb = sum(p.stat().st_size for p in landing.glob("*.json")) / 1e6
        print(f"data: {args.files} files, {rows} rows, {size_mb:.1f} MB of JSON lines")
        # Alternating rounds, best of each: the machine may be shared, and the best round is the one
        # least disturbed by other work.
        arrow_rounds, lakerelay_rounds = [], []
        for round_number in range(args.rounds):
            arrow_rounds.append(bench_arrow(landing, work / f"arrow-{round_number}"))
            lakerelay_rounds.append(bench_lakerelay(landing, work / f"lakerelay-{round_number}"))
        arrow, lakerelay = max(arrow_rounds), max(lakerelay_rounds)
        print(
            f"pyarrow.json + write_deltalake: {arrow:,.0f} rows/s (rounds: {[round(r) for r in arrow_rounds]})"
        )
        print(
            f"lakerelay ingest_feed:          {lakerelay:,.0f} rows/s (rounds: {[round(r) for r in lakerelay_rounds]})"
        )
        spark = float("nan") if args.skip_spark else bench_spark(landing, work, rows)
        print(f"Spark readStream.json→parquet:  {spark:,.0f} rows/s")
        scaling = {}
        for maintained in (True, False):
            small = discovery_seconds(work, 1_000, maintained)
            large = discovery_seconds(work, args.scaling_ingested, maintained)
            scaling[maintained] = large / small
            print(
                f"find+plan 100 new files ({'after' if maintained else 'without'} maintenance): among 1,000 "
                f"{small * 1000:.1f} ms, among {args.scaling_ingested:,} {large * 1000:.1f} ms"
            )
        late_small = discovery_seconds(work, 1_000, True, late_names=True)
        late_large = discovery_seconds(work, args.scaling_ingested, True, late_names=True)
        late_ms_per_1000 = (late_large - late_small) * 1000 / ((args.scaling_ingested - 1_000) / 1000)
        print(
            f"find+plan 100 new files, late names on (the default): among 1,000 {late_small * 1000:.1f} ms, "
            f"among {args.scaling_ingested:,} {late_large * 1000:.1f} ms"
        )
        print(
            f"vs_arrow={lakerelay / arrow:.2f} vs_spark_file_source={lakerelay / spark:.2f} "
            f"discovery_scaling={scaling[True]:.2f} discovery_scaling_without_maintenance={scaling[False]:.2f} "
            f"late_names_ms_per_1000_files={late_ms_per_1000:.1f}"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
