"""The post job: a Spark op that reads a feed's unsettled records, enriches them and posts them to one sink."""

import time
from collections.abc import Callable, Iterator

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
from pipelines.post.progress import acquire_progress, lease_label, progress_of, write_progress
from pipelines.post.read_stage import read_planned_rows
from pipelines.run_defaults import INFO_LOGS
from resources.executor_check import ExecutorEnvironmentError, prepare_executors
from resources.lake import LakeResource
from resources.lease import Lease, LeaseHeld, LeaseLost, LeaseRecord
from resources.sinks.resource import NEEDS_FIX, RestSinkResource
from resources.spark_errors import root_cause


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
    check_executors: bool = Field(
        default=True,
        description="Before posting, run one small Spark job whose tasks look up the packages the post "
        "stage needs, so an executor Python that lacks one fails the run with its name before a record is "
        "sent. Once per Spark application (per session on Spark Connect) and code version. Off: the code "
        "is shipped without looking whether the executors already have it.",
    )
    lease_ttl_s: float = Field(
        default=60.0,
        ge=2,
        description="Life of this run's lease on the sink's progress; the driver renews it every quarter "
        "of it. When the driver dies, its Spark tasks stop posting and another run may take over once "
        "this has passed since the last renewal.",
    )
    lease_wait_s: float = Field(
        default=120.0,
        ge=0,
        description="How long a run waits for another run's lease on the same sink and table to end "
        "before it fails without posting. Twice the default TTL: outlives a dead driver's lease.",
    )


# Transient crashes (a lost executor, an S3 hiccup) are retried in the run; failures a retry cannot
# fix say so (dg.Failure(allow_retries=False)) and are healed by the table sensor's backoff instead.
POST_RETRY_POLICY = dg.RetryPolicy(max_retries=2, delay=10, backoff=dg.Backoff.EXPONENTIAL)


def needs_fix(description: str) -> dg.Failure:
    """A failure that no retry can cure (credentials, TLS, a URL, an enrichment that does not fit)."""
    return dg.Failure(description=description, allow_retries=False, metadata={NEEDS_FIX: True})


def sink_asset_key(sink_key: str, feed: FeedSpec) -> dg.AssetKey:
    """The feed's documents in a sink: ``sinks/<feed>_in_<sink>``, a name the lineage view tells apart."""
    return dg.AssetKey(["sinks", f"{feed.name}_in_{sink_key}"])


def post_job_name(sink_key: str, feed: FeedSpec) -> str:
    return f"post_{feed.name}_to_{sink_key}"


def post_pool(sink_key: str, feed: FeedSpec) -> str:
    """The Dagster concurrency pool of one (sink, feed): the instance allows one slot per pool."""
    return f"lakerelay_post_{feed.name}_to_{sink_key}"


def build_post_asset(sink_key: str, feed: FeedSpec, kind: str = "rest") -> dg.AssetsDefinition:
    """The sink's documents of ``feed``, materialized by one Spark op that posts the new records."""

    @dg.multi_asset(
        name=f"spark_post_{feed.name}_to_{sink_key}",
        specs=[
            dg.AssetSpec(
                sink_asset_key(sink_key, feed),
                deps=[dg.AssetKey(feed.name)],
                # Materialized only when records were posted: an empty run changes nothing in the sink.
                skippable=True,
                group_name="sinks",
                kinds={kind, "spark"},
                description=f"Documents of feed {feed.name!r} in sink {sink_key!r}, posted by job "
                f"{post_job_name(sink_key, feed)} (its table sensor keeps it fresh).",
            )
        ],
        required_resource_keys={sink_key, "lake", "pyspark"},
        pool=post_pool(sink_key, feed),
        retry_policy=POST_RETRY_POLICY,
        description=f"Read unsettled records of table {feed.table_name!r}, enrich them in Spark and post them to {sink_key}.",
    )
    def post_asset(context: dg.AssetExecutionContext, config: PostConfig) -> Iterator[dg.MaterializeResult]:
        lake: LakeResource = context.resources.lake
        sink: RestSinkResource = getattr(context.resources, sink_key)
        try:
            run_post(
                context,
                lake,
                sink,
                lambda: context.resources.pyspark.spark_session,  # Spark starts only once there is work
                feed,
                sink_asset_key(sink_key, feed),
                config,
            )
        except dg.Failure as failure:
            if NEEDS_FIX in (failure.metadata or {}):
                # The table sensor reads this tag and waits its longest backoff instead of retrying soon.
                context.instance.add_run_tags(context.run_id, {NEEDS_FIX: (failure.description or "")[:200]})
            raise
        yield from ()  # run_post logged the materialization (with its metadata) when it posted

    return post_asset


def post_asset_job(sink_key: str, feed: FeedSpec) -> dg.JobDefinition:
    """``post_<feed>_to_<sink>``: in-process (one op, no step subprocess to start), tagged for sensors."""
    return dg.define_asset_job(
        post_job_name(sink_key, feed),
        # The op evaluates the dead-letter check itself; the check's own step would only repeat it.
        selection=dg.AssetSelection.assets(sink_asset_key(sink_key, feed))
        - dg.AssetSelection.checks_for_assets(sink_asset_key(sink_key, feed)),
        executor_def=dg.in_process_executor,
        config=INFO_LOGS,
        tags={"lakerelay/sink": sink_key, "lakerelay/feed": feed.name},
    )


def build_post_job(sink_key: str, feed: FeedSpec, kind: str = "rest") -> dg.JobDefinition:
    """The post job resolved on its own, for tests, benchmarks and in-process execution.

    Its resources are placeholders: pass the real ones to ``execute_in_process(resources=...)``.
    """
    placeholders = {key: dg.ResourceDefinition.none_resource() for key in (sink_key, "lake", "pyspark")}
    defs = dg.Definitions(
        assets=dg.with_resources([build_post_asset(sink_key, feed, kind)], placeholders),
        jobs=[post_asset_job(sink_key, feed)],
    )
    return defs.resolve_job_def(post_job_name(sink_key, feed))


def run_post(
    context: dg.OpExecutionContext,
    lake: LakeResource,
    sink: RestSinkResource,
    spark_session: Callable[[], SparkSession],
    feed: FeedSpec,
    asset_key: dg.AssetKey,
    config: PostConfig,
) -> None:
    """Post the feed's unsettled records as the one holder of the (sink, table) lease.

    The lease is taken before planning (the plan starts from the progress it carries), renewed from a
    driver thread while the run works, settled through (progress is written only while this run still
    holds it) and released at the end, success or failure. Dagster's pools normally keep two runs of
    one (sink, feed) apart; this is the guarantee when they do not.
    """
    lease = _acquire_post_lease(context, lake, sink, feed, config)
    try:
        with lease.keep_alive(
            on_error=lambda exc: context.log.warning(f"{lease.label}: renewing the lease failed: {exc}")
        ):
            _post_under_lease(context, lake, sink, spark_session, feed, asset_key, config, lease)
    except LeaseLost as lost:
        raise dg.Failure(
            description=(
                f"{lease.label}: run {context.run_id} lost its lease on the sink's progress and did not "
                f"write progress ({lost}). The run holding it now posts these batches; records this run "
                f"had posted may arrive again (ids make Elasticsearch overwrite them; Splunk HEC may "
                f"hold them twice). If this happens without a second run, the driver could not renew "
                f"within lease_ttl_s ({config.lease_ttl_s:g}s): raise it."
            )
        ) from None
    finally:
        try:
            lease.release()
        except Exception as exc:  # never mask the run's own error; the lease lapses by itself
            context.log.warning(
                f"{lease.label}: could not release the lease ({exc}); it lapses within {config.lease_ttl_s:g}s"
            )


def _acquire_post_lease(
    context: dg.OpExecutionContext,
    lake: LakeResource,
    sink: RestSinkResource,
    feed: FeedSpec,
    config: PostConfig,
) -> Lease:
    """This run's lease on (sink, table), waiting up to lease_wait_s for another run's to end."""
    label = lease_label(sink.sink_name, feed.table_name)

    def waiting(holder: LeaseRecord) -> None:
        context.log.info(
            f"{label} is being posted by run {holder.owner}: waiting up to "
            f"{config.lease_wait_s:g}s (lease_wait_s) for its lease to end"
        )

    try:
        lease = acquire_progress(
            lake,
            sink.sink_name,
            feed.table_name,
            context.run_id,
            config.lease_ttl_s,
            config.lease_wait_s,
            on_wait=waiting,
        )
    except LeaseHeld as held:
        # Not retried in the run: the holder is posting these very batches, and the table sensor asks
        # again if anything is left when it is done.
        raise dg.Failure(
            description=(
                f"{label} is being posted by run {held.owner} until {held.until} (its lease, renewed "
                f"while it runs); this run waited {config.lease_wait_s:g}s (lease_wait_s) and posted nothing."
            ),
            allow_retries=False,
        ) from None
    context.log.info(
        f"{label}: lease taken by run {context.run_id} (token {lease.token}, ttl {config.lease_ttl_s:g}s)"
    )
    return lease


def _post_under_lease(
    context: dg.OpExecutionContext,
    lake: LakeResource,
    sink: RestSinkResource,
    spark_session: Callable[[], SparkSession],
    feed: FeedSpec,
    asset_key: dg.AssetKey,
    config: PostConfig,
    lease: Lease,
) -> None:
    started = time.perf_counter()
    options = lake.storage_options()
    table_uri = lake.table_uri(feed.table_name)
    progress = progress_of(lease.state)  # what this run plans from: the truth while it holds the lease
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
                lease=lease,
            )
        context.log.info("nothing new to post")
        return
    # Seconds, not minutes: a wrong key or an unreachable sink is reported before Spark starts.
    sink.check_connection()
    expressions = enrichment_for(feed, plan.schema, config)

    spark = spark_session()
    slots = config.max_tasks or default_parallelism(spark)
    _prepare_executors(context, spark, slots, config.check_executors)
    frame, tasks = read_planned_rows(spark, plan, lake.filesystem_settings(), slots)
    settings = per_task_settings(sink.settings(), tasks)
    try:
        enriched = enrich(frame, expressions, feed.name)
    except EnrichmentError as exc:
        raise needs_fix(str(exc)) from None
    records = to_sink_records(enriched, sink.id_expression(), _time_column(sink, plan.schema))
    try:
        results = records.mapInArrow(make_poster(settings, lease.guard()), RESULT_DDL).toArrow()
    except Exception as exc:
        if lease.lost is not None:
            raise lease.lost from None
        context.log.error(f"the post stage failed in Spark: {root_cause(exc)}\n{str(exc)[:4000]}")
        description, fixable_by_retry = _explain_spark_failure(exc, sink)
        raise (dg.Failure(description=description) if fixable_by_retry else needs_fix(description)) from None

    if lease.lost is not None:  # the renewal found another holder: its tasks stopped, say why
        raise lease.lost
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
            # The run already waited delivery_timeout_s: the table sensor's backoff asks again later.
            allow_retries=False,
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
    write_progress(lake, sink.sink_name, feed.table_name, plan.delta_version, plan.batch_to, lease=lease)

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
    """The task slots Spark reports: ``local[N]`` gives N, a cluster its executor cores.

    On Spark Connect there is no SparkContext to ask: the server's ``spark.default.parallelism``
    if set, else N of its ``local[N]`` master, else (``local[*]``, a cluster) the partition count
    Spark gives a range without one, which is its default parallelism (one tiny job).
    """
    try:
        return max(1, int(spark.sparkContext.defaultParallelism))
    except Exception:
        pass
    # conf.get with a default never raises for an unset key (without one, Connect raises SQL_CONF_NOT_FOUND).
    value = spark.conf.get("spark.default.parallelism", None)
    if value and value.strip().isdigit():
        return max(1, int(value))
    master = (spark.conf.get("spark.master", None) or "").strip()
    if master.startswith("local[") and master.endswith("]"):
        slots = master[len("local[") : -1].split(",")[0].strip()  # local[N] or local[N,maxFailures]
        if slots.isdigit():
            return max(1, int(slots))
    try:
        measured = spark.range(4096).selectExpr("spark_partition_id() AS p").selectExpr("max(p) + 1 AS n")
        return max(1, int(measured.first()["n"]))
    except Exception:  # a server that will not say: two tasks, as many as local[2] has
        return 2


def _prepare_executors(context: dg.OpExecutionContext, spark: SparkSession, slots: int, check: bool) -> None:
    """Ship lakerelay's code to the executors and check their Python; a misfit is for a person to fix."""
    started = time.perf_counter()
    try:
        report = prepare_executors(spark, slots, check)
    except ExecutorEnvironmentError as exc:
        raise needs_fix(str(exc)) from None
    except Exception as exc:
        cause = root_cause(exc).rstrip(".")
        context.log.error(f"the executors' check failed in Spark: {cause}\n{str(exc)[:4000]}")
        raise needs_fix(
            f"Spark executors could not run the check of their Python: {cause}. Nothing was posted. What to "
            "do: see the step log for the executor's traceback; the executors' Python must be the driver's "
            "Python version with the packages of deploy/executor-requirements.txt (LAKERELAY_SPARK_EXECUTOR_PYTHON)."
        ) from None
    if report is not None:
        pythons = ", ".join(sorted({f"{p['python']} (Python {p['python_version']})" for p in report.pythons}))
        code = "shipped with this session" if report.shipped else "already installed there, not shipped"
        context.log.info(
            f"executors checked in {time.perf_counter() - started:.1f}s: {pythons} has the post stage's "
            f"packages; lakerelay's code {code}"
        )
        for mismatch in report.version_mismatches:
            context.log.warning(f"executor package version differs from the driver's: {mismatch}")


# Root causes that say the executors' Python is unfit, which no retry cures.
_ENVIRONMENT_ERRORS = ("ModuleNotFoundError:", "ImportError:", "[PYTHON_VERSION_MISMATCH]")


def _explain_spark_failure(exc: Exception, sink: RestSinkResource) -> tuple[str, bool]:
    """The failure's description, and whether a retry may cure it (False: the configuration must change)."""
    text = str(exc)
    for marker in ("SinkAuthError: ", "SinkTlsError: ", "SinkConfigError: ", "SinkRequestError: "):
        if marker in text:
            line = text[text.index(marker) + len(marker) :].splitlines()[0]
            return f"{line} Nothing was marked as posted; fix the configuration and re-run.", False
    cause = root_cause(text).rstrip(".")
    if any(marker in cause for marker in _ENVIRONMENT_ERRORS):
        # A retry meets the same executors: their Python must change first.
        return (
            f"posting to sink {sink.sink_name} failed in Spark: {cause}. Nothing was marked as posted. What to "
            "do: the executors' Python lacks what the post stage imports; install deploy/executor-requirements.txt "
            "in it on every worker (or set LAKERELAY_SPARK_EXECUTOR_PYTHON), then re-run.",
            False,
        )
    return (
        f"posting to sink {sink.sink_name} failed in Spark: {cause} (the step log has the "
        f"executor's traceback). Nothing was marked as posted; a re-run resends the same records.",
        True,
    )
