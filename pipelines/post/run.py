"""Running one post: lease, plan, Spark (read, enrich, post), settle (dead letters, progress), report.

The op of ``job.py`` calls ``run_post``; the totals, failures and metadata it reports are built in
``report.py``, and failures of the Spark stage are explained by ``failures.py``.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass

import dagster as dg
import pyarrow as pa
from deltalake.exceptions import TableNotFoundError
from pyspark.sql import SparkSession

from pipelines.feeds import FeedSpec
from pipelines.post.checks import DEAD_LETTER_CHECK, dead_letter_evaluation
from pipelines.post.config import PostConfig
from pipelines.post.dead_letters import DEAD_LETTER_TABLE, append_dead_letters
from pipelines.post.enrich import EnrichmentError, default_enrichment_for, enrich, to_sink_records
from pipelines.post.failures import executor_check_failure, needs_fix, spark_failure
from pipelines.post.plan import plan_post
from pipelines.post.post_stage import RESULT_DDL, make_poster, per_task_settings
from pipelines.post.progress import acquire_progress, lease_label, progress_of, write_progress
from pipelines.post.read_stage import read_planned_rows
from pipelines.post.report import PostTotals, pending_failure, post_metadata, unaccounted_failure
from resources.executor_check import ExecutorEnvironmentError, prepare_executors
from resources.lake import LakeResource
from resources.lease import Lease, LeaseHeld, LeaseLost, LeaseRecord
from resources.sinks.resource import RestSinkResource
from resources.spark_errors import root_cause


@dataclass(frozen=True)
class PostRun:
    """What one post run works with: its context, resources, feed, sink asset and config."""

    context: dg.OpExecutionContext
    lake: LakeResource
    sink: RestSinkResource
    spark_session: Callable[[], SparkSession]
    feed: FeedSpec
    asset_key: dg.AssetKey
    config: PostConfig


def run_post(run: PostRun) -> None:
    """Post the feed's unsettled records as the one holder of the (sink, table) lease.

    The lease is taken before planning (the plan starts from the progress it carries), renewed from a
    driver thread while the run works, settled through (progress is written only while this run still
    holds it) and released at the end, success or failure. Dagster's pools normally keep two runs of
    one (sink, feed) apart; this is the guarantee when they do not.
    """
    context, config = run.context, run.config
    lease = _acquire_post_lease(context, run.lake, run.sink, run.feed, config)
    try:
        with lease.keep_alive(
            on_error=lambda exc: context.log.warning(f"{lease.label}: renewing the lease failed: {exc}")
        ):
            _post_under_lease(run, lease)
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


def _post_under_lease(run: PostRun, lease: Lease) -> None:
    started = time.perf_counter()
    context, lake, sink, feed, config = run.context, run.lake, run.sink, run.feed, run.config
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

    spark = run.spark_session()
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
        raise spark_failure(exc, sink.sink_name, spark) from None

    if lease.lost is not None:  # the renewal found another holder: its tasks stopped, say why
        raise lease.lost

    totals = PostTotals.of(results)
    if totals.pending:
        raise pending_failure(sink.sink_name, totals, plan)
    if (unaccounted := unaccounted_failure(sink.sink_name, totals)) is not None:
        raise unaccounted
    dead = totals.dead
    # No rows, no commit: an empty Delta commit per clean run would only slow runs and the log down.
    written = (
        append_dead_letters(
            lake.table_uri(DEAD_LETTER_TABLE),
            options,
            sink.sink_name,
            feed.table_name,
            plan.delta_version,
            plan.batch_to,
            totals.rejected,
        )
        if dead
        else 0
    )
    write_progress(lake, sink.sink_name, feed.table_name, plan.delta_version, plan.batch_to, lease=lease)

    elapsed = time.perf_counter() - started
    metadata = post_metadata(totals, plan, config, written, elapsed)
    context.log_event(dg.AssetMaterialization(asset_key=run.asset_key, metadata=metadata))
    context.log_event(
        dead_letter_evaluation(run.asset_key, dead, totals.records_in, config.dead_letter_max_rate)
    )
    dead_letter_rate = dead / totals.records_in if totals.records_in else 0.0
    if dead_letter_rate > config.dead_letter_max_rate:
        context.log.warning(
            f"sink {sink.sink_name}: {dead} of {totals.records_in} records dead-lettered "
            f"({dead_letter_rate:.2%} > {config.dead_letter_max_rate:.2%}); see table {DEAD_LETTER_TABLE} "
            f"(asset check {DEAD_LETTER_CHECK})"
        )
    context.log.info(
        f"sink {sink.sink_name}: {totals.accepted} accepted, {dead} dead-lettered of {totals.records_in} "
        f"records in {elapsed:.1f}s; progress now batch {plan.batch_to} (version {plan.delta_version})"
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
    except Exception as exc:  # only a missing package or another Python version needs a person
        context.log.error(f"the executors' check failed in Spark: {root_cause(exc)}\n{str(exc)[:4000]}")
        raise executor_check_failure(exc, spark) from None
    if report is not None:
        pythons = ", ".join(sorted({f"{p['python']} (Python {p['python_version']})" for p in report.pythons}))
        code = "shipped with this session" if report.shipped else "already installed there, not shipped"
        context.log.info(
            f"executors checked in {time.perf_counter() - started:.1f}s: {pythons} has the post stage's "
            f"packages; lakerelay's code {code}"
        )
        for mismatch in report.version_mismatches:
            context.log.warning(f"executor package version differs from the driver's: {mismatch}")
