"""The post job: a Spark op that reads a feed's unsettled records, enriches them and posts them to one sink."""

import time
from collections.abc import Callable

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
from deltalake.exceptions import TableNotFoundError
from pydantic import Field
from pyspark.sql import SparkSession

from pipelines.feeds import FeedSpec
from pipelines.post.capacity import plan_capacity
from pipelines.post.checks import DEAD_LETTER_CHECK, dead_letter_evaluation
from pipelines.post.dead_letters import DEAD_LETTER_TABLE, append_dead_letters
from pipelines.post.enrich import EnrichmentError, default_enrichment_for, enrich, to_sink_records
from pipelines.post.plan import plan_post
from pipelines.post.post_stage import RESULT_DDL, make_poster, per_task_settings
from pipelines.post.progress import read_progress, write_progress
from pipelines.post.read_stage import read_planned_rows
from resources.lake import LakeResource
from resources.sinks.resource import RestSinkResource


class PostConfig(dg.Config):
    max_tasks: int | None = Field(
        default=None,
        gt=0,
        description=(
            "Spark tasks posting in parallel; data files are split into row ranges to feed them. "
            "Default: Spark's default parallelism (local[N]: N; a cluster: its executor cores). Each "
            "task already keeps max_in_flight requests open, so more tasks than cores only add contention."
        ),
    )
    target_records_per_s: float = Field(
        default=50_000, gt=0, description="Throughput the capacity planner sizes tasks and cores for."
    )
    api_time_fraction: float = Field(
        default=0.75,
        gt=0,
        le=1,
        description="Capacity planner's line G: share of a core's time spent calling the API.",
    )
    dead_letter_max_rate: float = Field(
        default=0.01,
        ge=0,
        le=1,
        description="The dead_letter_rate asset check fails when dead-lettered / records exceeds this.",
    )
    enrich_expressions: list[str] | None = Field(
        default=None,
        description="Spark SQL select expressions added to every record before posting, for this run. "
        "Default: the feed's `enrich` list from the feeds file, else the default enrichment (each of its "
        "expressions only where the table has the columns it reads). [] posts records as they are.",
    )


def sink_asset_key(sink_key: str, feed: FeedSpec) -> dg.AssetKey:
    """The asset standing for a feed's documents in a sink (an index), so the UI shows the lineage."""
    return dg.AssetKey(["sinks", sink_key, feed.name])


def sink_asset_spec(sink_key: str, feed: FeedSpec) -> dg.AssetSpec:
    return dg.AssetSpec(
        sink_asset_key(sink_key, feed),
        deps=[dg.AssetKey(feed.name)],
        group_name="sinks",
        kinds={"elasticsearch" if "elastic" in sink_key else "splunk" if "splunk" in sink_key else "rest"},
        description=f"Documents of feed {feed.name!r} in sink {sink_key!r}, posted by job post_{feed.name}_to_{sink_key}.",
    )


def build_post_job(sink_key: str, feed: FeedSpec) -> dg.JobDefinition:
    """A job with one Spark op that posts ``feed``'s new records through the sink resource ``sink_key``."""

    @dg.op(
        name=f"spark_post_{feed.name}_to_{sink_key}",
        required_resource_keys={sink_key, "lake", "pyspark"},
        tags={"kind": "spark"},
        description=f"Read unsettled records of table {feed.table_name!r}, enrich them in Spark and post them to {sink_key}.",
    )
    def post_op(context: dg.OpExecutionContext, config: PostConfig) -> None:
        lake: LakeResource = context.resources.lake
        sink: RestSinkResource = getattr(context.resources, sink_key)
        run_post(
            context,
            lake,
            sink,
            lambda: context.resources.pyspark.spark_session,  # Spark starts only once there is work
            feed,
            sink_asset_key(sink_key, feed),
            config,
        )

    @dg.job(
        name=f"post_{feed.name}_to_{sink_key}", tags={"lakerelay/sink": sink_key, "lakerelay/feed": feed.name}
    )
    def post_job() -> None:
        post_op()

    return post_job


def run_post(
    context: dg.OpExecutionContext,
    lake: LakeResource,
    sink: RestSinkResource,
    spark_session: Callable[[], SparkSession],
    feed: FeedSpec,
    asset_key: dg.AssetKey,
    config: PostConfig,
) -> None:
    started = time.perf_counter()
    options = lake.storage_options()
    table_uri = lake.table_uri(feed.table_name)
    progress = read_progress(lake, sink.sink_name, feed.table_name)
    try:
        plan = plan_post(table_uri, options, feed.app_id, progress.batch_id)
    except TableNotFoundError:
        context.log.info(f"table {feed.table_name} does not exist yet (no ingest has run): nothing to post")
        return
    context.log.info(
        f"sink {sink.sink_name}: settled through batch {progress.batch_id} (version {progress.delta_version}); "
        f"table {feed.table_name} is at version {plan.delta_version}, batch {plan.batch_to}; {len(plan.files)} files to read"
    )
    if plan.empty:
        if plan.delta_version != progress.delta_version:
            write_progress(
                lake,
                sink.sink_name,
                feed.table_name,
                plan.delta_version,
                max(plan.batch_to, progress.batch_id),
            )
        context.log.info("nothing new to post")
        return
    # Seconds, not minutes: a wrong key or an unreachable sink is reported before Spark starts.
    sink.check_connection()
    expressions = enrichment_for(feed, plan.schema, config)

    spark = spark_session()
    frame, tasks = read_planned_rows(
        spark, plan, lake.filesystem_settings(), config.max_tasks or default_parallelism(spark)
    )
    settings = per_task_settings(sink.settings(), tasks)
    try:
        enriched = enrich(frame, expressions, feed.name)
    except EnrichmentError as exc:
        raise dg.Failure(description=str(exc)) from None
    records = to_sink_records(enriched, sink.id_expression(), _time_column(sink, plan.schema))
    try:
        results = records.mapInArrow(make_poster(settings), RESULT_DDL).toArrow()
    except Exception as exc:
        raise dg.Failure(description=_explain_spark_failure(exc, sink)) from None

    stats = results.filter(pc.equal(results["kind"], "stats"))
    rejected = results.filter(pc.equal(results["kind"], "dead_letter"))
    total = {
        name: int(pc.sum(stats[name]).as_py() or 0)
        for name in (
            "records_in",
            "accepted",
            "retried",
            "pending",
            "requests",
            "attempts",
            "records_sent",
            "bytes",
        )
    }
    dead = rejected.num_rows
    if total["pending"]:
        reasons = [r for r in stats["reason"].to_pylist() if r]
        raise dg.Failure(
            description=(
                f"sink {sink.sink_name}: {total['pending']} of {total['records_in']} records are still pending: "
                f"{reasons[0] if reasons else 'transient failures'}. {total['accepted']} were accepted and "
                f"{dead} rejected; nothing is dead-lettered for a transient failure and progress was not "
                f"advanced, so the next run resumes these batches (ids make resends overwrite in "
                f"Elasticsearch; Splunk HEC may receive the accepted ones again). If the sink stays down, "
                f"check it; raise delivery_timeout_s to wait longer."
            ),
            metadata={
                "records": total["records_in"],
                "accepted": total["accepted"],
                "rejected": dead,
                "pending": total["pending"],
                "retried_records": total["retried"],
                "attempts": total["attempts"],
                "batch_from_exclusive": plan.batch_from,
                "batch_to": plan.batch_to,
            },
        )
    if total["accepted"] + dead != total["records_in"]:
        raise dg.Failure(
            description=(
                f"sink {sink.sink_name}: {total['records_in']} records read but {total['accepted']} accepted and {dead} "
                f"dead-lettered; progress not advanced, the next run re-posts this batch (ids make it idempotent)."
            )
        )
    # No rows, no commit: an empty Delta commit per clean run would only slow runs and the log down.
    written = (
        append_dead_letters(
            lake.table_uri(DEAD_LETTER_TABLE),
            options,
            sink.sink_name,
            feed.table_name,
            plan.delta_version,
            plan.batch_to,
            rejected,
        )
        if dead
        else 0
    )
    write_progress(lake, sink.sink_name, feed.table_name, plan.delta_version, plan.batch_to)

    elapsed = time.perf_counter() - started
    latencies = pa.array([v for row in stats["latencies_ms"].to_pylist() for v in (row or [])], pa.float64())
    dead_letter_rate = dead / total["records_in"] if total["records_in"] else 0.0
    metadata = {
        "records": total["records_in"],
        "accepted": total["accepted"],
        "dead_lettered": dead,
        "dead_letter_rate": round(dead_letter_rate, 6),
        "dead_letter_max_rate": config.dead_letter_max_rate,
        "dead_letter_rows_written": written,
        "pending": total["pending"],
        "retried_records": total["retried"],
        "requests": total["requests"],
        "attempts": total["attempts"],
        "ack_timeouts": int(pc.sum(stats["ack_timeouts"]).as_py() or 0),
        "bytes_sent": total["bytes"],
        "tasks": stats.num_rows,
        "concurrency_peak": int(pc.max(stats["concurrency_peak"]).as_py() or 0),
        "concurrency_decreases": int(pc.sum(stats["concurrency_decreases"]).as_py() or 0),
        "duration_s": round(elapsed, 3),
        "records_per_s": round(total["records_in"] / elapsed, 1) if elapsed else 0.0,
        "delta_version": plan.delta_version,
        "batch_from_exclusive": plan.batch_from,
        "batch_to": plan.batch_to,
        "files_read": len(plan.files),
    }
    if len(latencies):
        for q in (0.5, 0.95, 0.99):
            metadata[f"latency_p{int(q * 100)}_ms"] = round(float(pc.quantile(latencies, q=q)[0].as_py()), 2)
        capacity = plan_capacity(
            config.target_records_per_s,
            total["requests"],
            total["records_sent"],
            float(pc.mean(latencies).as_py()) / 1000,
            total["records_in"],
            float(pc.sum(stats["elapsed_s"]).as_py() or 0.0),
            config.api_time_fraction,
        )
        if capacity is not None:
            metadata.update(capacity.metadata())
            metadata["capacity_plan"] = dg.MetadataValue.md(capacity.markdown())
    context.log_event(dg.AssetMaterialization(asset_key=asset_key, metadata=metadata))
    context.log_event(
        dead_letter_evaluation(asset_key, dead, total["records_in"], config.dead_letter_max_rate)
    )
    if dead_letter_rate > config.dead_letter_max_rate:
        context.log.warning(
            f"sink {sink.sink_name}: {dead} of {total['records_in']} records dead-lettered "
            f"({dead_letter_rate:.2%} > {config.dead_letter_max_rate:.2%}); see table {DEAD_LETTER_TABLE} "
            f"(asset check {DEAD_LETTER_CHECK})"
        )
    context.log.info(
        f"sink {sink.sink_name}: {total['accepted']} accepted, {dead} dead-lettered of {total['records_in']} records "
        f"in {elapsed:.1f}s; progress now batch {plan.batch_to} (version {plan.delta_version})"
    )


def enrichment_for(feed: FeedSpec, schema: pa.Schema, config: PostConfig) -> list[str]:
    """This run's expressions: run config, else the feed's ``enrich``, else the default for its columns."""
    if config.enrich_expressions is not None:
        return list(config.enrich_expressions)
    if feed.enrich is not None:
        return list(feed.enrich)
    return default_enrichment_for(schema)


def _time_column(sink: RestSinkResource, schema: pa.Schema) -> str | None:
    """The sink's event-time column when the table has it as a timestamp (HEC's ``time``)."""
    name = getattr(sink, "time_field", None)
    index = schema.get_field_index(name) if name else -1
    return name if index >= 0 and pa.types.is_timestamp(schema.field(index).type) else None


def default_parallelism(spark: SparkSession) -> int:
    """The task slots Spark reports: ``local[N]`` gives N, a cluster its executor cores."""
    try:
        return max(1, int(spark.sparkContext.defaultParallelism))
    except Exception:  # Spark Connect has no SparkContext; the server's setting, if any, says it
        value = spark.conf.get("spark.default.parallelism", None)
        return max(1, int(value)) if value else 2


def _explain_spark_failure(exc: Exception, sink: RestSinkResource) -> str:
    text = str(exc)
    for marker in ("SinkAuthError: ", "SinkTlsError: ", "SinkConfigError: ", "SinkRequestError: "):
        if marker in text:
            line = text[text.index(marker) + len(marker) :].splitlines()[0]
            return f"{line} Nothing was marked as posted; fix the configuration and re-run."
    return (
        f"posting to sink {sink.sink_name} failed in Spark: {text.splitlines()[0][:500]} "
        f"(see the step log for the full error). Nothing was marked as posted; a re-run resends the same records."
    )
