"""The continuous run of a feed: one job, one op, in the run's own process, one run at a time (its pool).

The op keeps the run's Spark session warm and runs the loop (``loop.py``) in a thread; its own thread
passes the coalesced materializations to Dagster as they come and watches for termination. Dagster
1.13 terminates a run by setting its status to CANCELING, then (the run worker's cancellation thread)
sending SIGINT, which reaches the op as ``DagsterExecutionInterruptedError``; ``dagster job execute``
has no such thread, so the op also reads its run's status every second. Either way the loop finishes
the micro-batch in flight, the last report is written, and the op ends: raising the interruption
again when there was one, so the run is shown as canceled.
"""

import logging
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
from pydantic import Field
from pyspark.sql import SparkSession

from pipelines.continuous.loop import LoopSteps, run_loop
from pipelines.continuous.posting import RoutePosting
from pipelines.continuous.quiet import QuietLog, log_to_stderr
from pipelines.continuous.report import REPORT_INTERVAL_S, CoalescedReport
from pipelines.continuous.watchers import FolderWatcher, PollWatcher, QueueWatcher, Watcher
from pipelines.feeds import FeedSpec
from pipelines.ingest.discovery import files_waiting
from pipelines.ingest.runner import ingest_feed
from pipelines.post.config import PostConfig
from pipelines.post.run import default_parallelism
from pipelines.routes import RouteSpec
from pipelines.run_defaults import INFO_LOGS
from resources.executor_check import prepare_executors
from resources.lake import LakeResource
from resources.run_tags import CODE_VERSION_TAG, CONTINUOUS_TAG, FEED_TAG
from sensors.continuous import HEARTBEAT_EVERY_S, write_heartbeat

STATUS_CHECK_S = 1.0
STOP_STATUSES = (dg.DagsterRunStatus.CANCELING, dg.DagsterRunStatus.CANCELED)


class ContinuousConfig(dg.Config):
    report_interval_s: float = Field(
        default=REPORT_INTERVAL_S,
        gt=0,
        description="Materializations of the table and sink assets at most this often (cumulative counts, lag).",
    )
    max_batches: int = Field(
        default=10, gt=0, description="Delta commits per micro-batch at most (each of the feed's batch size)."
    )
    poll_interval_s: float = Field(
        default=1.0,
        gt=0,
        description="S3 without notification_queue: how often the landing zone is listed for new files.",
    )
    retry_max_s: float = Field(
        default=60.0, gt=0, description="Longest wait between retries of a failing ingest or sink."
    )
    post: PostConfig = Field(
        default_factory=PostConfig, description="How each micro-batch is posted (the post jobs' settings)."
    )


def continuous_job_name(feed: FeedSpec) -> str:
    return f"continuous_{feed.name}"


def continuous_pool(feed: FeedSpec) -> str:
    return f"lakerelay_continuous_{feed.name}"


def build_continuous_job(feed: FeedSpec, routes: list[RouteSpec], code_version: str) -> dg.JobDefinition:
    """``continuous_<feed>``: the always-on run of ``feed`` posting on its ``routes``."""
    route_names = [route.name for route in routes]

    @dg.op(
        name=f"continuous_relay_{feed.name}",
        out={},
        required_resource_keys={"lake", "pyspark", *(route.sink for route in routes)},
        pool=continuous_pool(feed),
        description=f"Ingest files of feed {feed.name!r} as they land and post them on its routes "
        f"({', '.join(route_names) or 'none'}), until terminated.",
    )
    def continuous_op(
        context: dg.OpExecutionContext, config: ContinuousConfig
    ) -> Iterator[dg.AssetMaterialization]:
        yield from run_continuous(context, feed, routes, config)

    @dg.job(
        name=continuous_job_name(feed),
        executor_def=dg.in_process_executor,
        config=INFO_LOGS,
        tags={
            FEED_TAG: feed.name,
            CONTINUOUS_TAG: feed.name,
            CODE_VERSION_TAG: code_version,
            # The keeper sensor restarts a failed continuous run (with backoff); Dagster's run retries
            # would start another beside its replacement.
            "dagster/max_retries": "0",
        },
        description=f"The always-on relay of feed {feed.name!r}; its keeper sensor keeps one run alive.",
    )
    def continuous_job() -> None:
        continuous_op()

    return continuous_job


def run_continuous(
    context: dg.OpExecutionContext, feed: FeedSpec, routes: list[RouteSpec], config: ContinuousConfig
) -> Iterator[dg.AssetMaterialization]:
    lake: LakeResource = context.resources.lake
    sink_keys = [route.name for route in routes]  # the report's and the loop's keys: one per route
    log_to_stderr()
    log = QuietLog(context.log)
    stop = threading.Event()
    events: queue.Queue = queue.Queue()
    report = CoalescedReport(
        dg.AssetKey(feed.name),
        {route.name: route.asset_key for route in routes},
        interval_s=config.report_interval_s,
    )
    failure: list[BaseException] = []
    ready = threading.Event()

    def spark_session():  # the run's one session, started at the run's start and kept warm
        return context.resources.pyspark.spark_session

    def work() -> None:
        watcher: Watcher | None = None
        posting: RoutePosting | None = None
        try:
            warm_up(spark_session(), config.post)
            watcher = make_watcher(feed, lake, stop, config)
            posting = RoutePosting(context, lake, routes, spark_session, config.post)
            ready.set()
            steps = LoopSteps(
                ingest=lambda: ingest_feed(feed, lake, max_batches=config.max_batches, log=log),
                post=posting,
                max_batches=config.max_batches,
                settle_s=max(0.25, feed.settle_time_s()),
            )
            context.log.info(
                f"continuous relay of feed {feed.name!r} to {', '.join(sink_keys)}: waiting for files "
                f"({type(watcher).__name__}); assets reported every {config.report_interval_s:g}s"
            )
            done = run_loop(steps, watcher, report, stop, events.put, log, config.retry_max_s)
            context.log.info(f"continuous relay of feed {feed.name!r} stopped after {done} micro-batches")
        except BaseException as exc:  # the op's thread raises it: the run fails, the keeper restarts it
            failure.append(exc)
        finally:
            if posting is not None:
                posting.close()  # the routes' leases, held since their first post
            if watcher is not None:
                watcher.close()

    worker = threading.Thread(target=work, name=f"continuous-{feed.name}", daemon=True)
    worker.start()
    interrupted: BaseException | None = None
    last_beat, beat_ready = 0.0, False
    while worker.is_alive():
        try:
            if time.time() - last_beat >= HEARTBEAT_EVERY_S:
                last_beat = time.time()
                beat_ready = ready.is_set()
                _beat(context, lake, feed, last_beat, beat_ready)
            elif ready.is_set() and not beat_ready:  # say so at once: the bench and people wait for it
                last_beat, beat_ready = time.time(), True
                _beat(context, lake, feed, last_beat, True)
            yield from _drain(events, STATUS_CHECK_S)
            if not stop.is_set() and _cancel_requested(context):
                context.log.info("termination requested: finishing the micro-batch in flight, then stopping")
                stop.set()
        except (dg.DagsterExecutionInterruptedError, KeyboardInterrupt) as exc:
            if interrupted is None:
                context.log.info("interrupted: finishing the micro-batch in flight, then stopping")
            interrupted = interrupted or exc
            stop.set()
    yield from _drain(events, 0)
    if failure:
        raise failure[0]
    if interrupted is not None:
        raise interrupted


def make_watcher(
    feed: FeedSpec, lake: LakeResource, stop: threading.Event, config: ContinuousConfig
) -> Watcher:
    """inotify for a local folder; SQS for S3 with ``notification_queue``; else a listing probe."""
    landing = feed.landing_uri(lake.landing_uri)
    backfill_s = feed.backfill_interval_s()
    if "://" not in landing or landing.startswith("file://"):
        folder = Path(landing.removeprefix("file://"))
        folder.mkdir(parents=True, exist_ok=True)
        return FolderWatcher(str(folder), backfill_s)
    if feed.notification_queue and landing.startswith("s3://"):
        settings = lake.filesystem_settings()
        import boto3  # only S3 feeds with notifications pay for it

        sqs = boto3.Session().client(
            "sqs",
            region_name=settings.region,
            endpoint_url=settings.endpoint_url,
            aws_access_key_id=settings.access_key,
            aws_secret_access_key=settings.secret_key,
            aws_session_token=settings.session_token,
        )
        prefix = landing.removeprefix("s3://").partition("/")[2]
        return QueueWatcher(sqs, feed.notification_queue, prefix, backfill_s, log=logging.getLogger(__name__))
    return PollWatcher(lambda: files_waiting(lake, feed).count > 0, config.poll_interval_s, backfill_s, stop)


def _drain(events: queue.Queue, timeout_s: float) -> Iterator[dg.AssetMaterialization]:
    """The materializations the loop reported, waiting up to ``timeout_s`` for the first."""
    try:
        batch = events.get(timeout=timeout_s) if timeout_s else events.get_nowait()
    except queue.Empty:
        return
    while True:
        yield from batch
        try:
            batch = events.get_nowait()
        except queue.Empty:
            return


def warm_up(spark: SparkSession, post: PostConfig) -> None:
    """What the first micro-batch would otherwise pay: the session, and the executors' code and check."""
    slots = post.max_tasks or default_parallelism(spark)
    prepare_executors(spark, slots, post.check_executors)

    def stage_worker(batches):  # nested: pickled by value; it imports only what the stages import
        # Either stage may land in any warmed worker: each imports both, and reads a parquet slice
        # from memory (pyarrow's parquet reader, loaded as the reader's first file would load it).
        import io

        import pyarrow as pa
        import pyarrow.parquet as pq

        import pipelines.post.post_stage
        import pipelines.post.read_stage  # noqa: F401
        from resources.worker_heap import freeze_imported_heap

        for batch in batches:
            buffer = io.BytesIO()
            pq.write_table(pa.Table.from_batches([batch]), buffer)
            yield from pq.ParquetFile(pa.BufferReader(buffer.getvalue())).iter_batches()
        freeze_imported_heap()

    # A post's task runs two Arrow functions, each in its own Python worker (the reader, then the
    # poster), and a micro-batch posts every route at once: one task per slot with both gives the
    # 2 x slots workers the posts use, started and with the stages' modules imported now. Without it,
    # the first micro-batch paid for them: 12-15 s on a busy 2-core machine, while files kept landing.
    # The records between them are shaped as a post shapes them (a JSON document per row), so the
    # server's JVM has loaded and compiled that path too.
    rows = spark.range(slots * 100, numPartitions=slots).mapInArrow(stage_worker, "id long")
    records = rows.selectExpr(
        "cast(id as string) AS _id",
        "cast(to_json(struct(id, cast(id as string) AS text, timestamp_seconds(id) AS at)) as binary) AS _doc",
        "cast(id as double) AS _time",
    )
    records.mapInArrow(stage_worker, "_id string, _doc binary, _time double").collect()


def _beat(
    context: dg.OpExecutionContext, lake: LakeResource, feed: FeedSpec, now: float, ready: bool
) -> None:
    """The heartbeat the keeper sensor reads; a storage hiccup only delays it."""
    try:
        write_heartbeat(lake, feed.name, context.run_id, now, ready)
    except Exception as exc:
        context.log.warning(f"could not write the continuous run's heartbeat: {exc}")


def _cancel_requested(context: dg.OpExecutionContext) -> bool:
    run = context.instance.get_run_by_id(context.run_id)
    return run is not None and run.status in STOP_STATUSES
