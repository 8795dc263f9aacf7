"""Running one post: lease, plan, Spark (read, enrich, post), settle (dead letters, progress), report.

A plan is posted group by group (``_GroupPoster``): one Spark job per group of at most
``group_records`` rows, ``max_tasks`` at a time, each settled through the fence as it completes, so a
crash or a takeover re-sends at most the groups in flight. A run first resumes a partly settled plan.

The op of ``job.py`` calls ``run_post``; the totals, failures and metadata it reports are built in
``report.py``, and failures of the Spark stage are explained by ``failures.py``.
"""

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field

import dagster as dg
import pyarrow as pa
from deltalake.exceptions import TableNotFoundError
from py4j.protocol import Py4JError
from pyspark.errors import PySparkAttributeError, PySparkException
from pyspark.sql import DataFrame, SparkSession

from pipelines.delta_once import refused_by_delta
from pipelines.feeds import FeedSpec
from pipelines.post.checks import DEAD_LETTER_CHECK
from pipelines.post.config import PostConfig
from pipelines.post.dead_letters import DEAD_LETTER_TABLE, append_dead_letters
from pipelines.post.destination import Destination, plan_destination
from pipelines.post.enrich import (
    EnrichmentError,
    default_enrichment_for,
    enrich,
    select_where,
    to_sink_records,
)
from pipelines.post.failures import executor_check_failure, needs_fix, reported_failure, spark_failure
from pipelines.post.liveness import beacon_host
from pipelines.post.plan import PostPlan, ReadUnit, cut_groups, group_rows_for, plan_post
from pipelines.post.post_stage import (
    RESULT_SPARK_SCHEMA,
    TaskFailure,
    make_poster,
    per_task_settings,
    task_failure,
)
from pipelines.post.progress import (
    PartialProgress,
    SinkProgress,
    abandon_partial,
    acquire_progress,
    lease_label,
    progress_of,
    settle_group,
    write_progress,
)
from pipelines.post.read_stage import read_units
from pipelines.post.report import PostedPlan, PostTotals, pending_failure, unaccounted_failure
from resources.executor_check import ExecutorEnvironmentError, prepare_executors
from resources.lake import LakeResource
from resources.lease import Lease, LeaseGuard, LeaseHeld, LeaseLost, LeaseRecord
from resources.sinks.resource import RestSinkResource
from resources.sinks.settings import SinkSettings
from resources.sinks.template import TemplateError
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
    where: str | None = None  # the route's Spark SQL predicate on enriched records; None posts all


def run_post(run: PostRun) -> list[PostedPlan]:
    """Post the feed's unsettled records as the one holder of the (sink, table) lease; the plans it
    posted and settled (none when there was nothing new), for the asset's materialization.

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
            return _post_under_lease(run, lease)
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


# For a caller that holds the lease across posts (the continuous run: pipelines/continuous/held.py):
# run_post's steps without taking and releasing the lease each time, and with one poster kept, so
# Spark is made ready (connection check, executors, beacon) once, not per post.


def take_post_lease(run: PostRun) -> Lease:
    """``run``'s lease on (sink, table), taken as ``run_post`` takes it (waiting up to lease_wait_s)."""
    return _acquire_post_lease(run.context, run.lake, run.sink, run.feed, run.config)


def group_poster(run: PostRun, lease: Lease) -> "_GroupPoster":
    """A poster for posts under ``lease``, to keep while the lease is held and Spark works."""
    return _GroupPoster(run, lease)


def post_held(run: PostRun, lease: Lease, poster: "_GroupPoster") -> list[PostedPlan]:
    """One post under a lease the caller holds and renews: plan from its progress, post, settle; the
    plans it posted. The caller releases the lease; ``LeaseLost`` is raised as it is (the caller takes
    a new lease).
    """
    return _post_under_lease(run, lease, poster)


def _post_under_lease(run: PostRun, lease: Lease, poster: "_GroupPoster | None" = None) -> list[PostedPlan]:
    context, lake, sink, feed = run.context, run.lake, run.sink, run.feed
    options = lake.storage_options()
    table_uri = lake.table_uri(feed.table_name)
    progress = progress_of(lease.state)  # what this run plans from: the truth while it holds the lease
    poster = poster or _GroupPoster(run, lease)
    poster.posted.clear()  # a kept poster (continuous run) reports each post's plans on their own
    if progress.partial is not None:
        resumed = _resumed_plan(run, lease, table_uri, options, progress)
        if resumed is not None:
            poster.post(resumed, progress.partial)
        progress = progress_of(lease.state)
    try:
        plan = plan_post(table_uri, options, feed.app_id, progress.batch_id)
    except TableNotFoundError:
        context.log.info(f"table {feed.table_name} does not exist yet (no ingest has run): nothing to post")
        return poster.posted
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
        return poster.posted
    poster.post(plan, None)
    return poster.posted


def _resumed_plan(
    run: PostRun, lease: Lease, table_uri: str, options: dict[str, str], progress: SinkProgress
) -> PostPlan | None:
    """The plan another run settled in part, as it was: same version, batches and groups.

    None (and the partial progress dropped, so its groups are posted again) when that version can no
    longer be read or no longer cuts into the same groups.
    """
    partial = progress.partial
    assert partial is not None
    problem = ""
    try:
        plan = plan_post(
            table_uri,
            options,
            run.feed.app_id,
            progress.batch_id,
            version=partial.delta_version,
            batch_to=partial.batch_to,
        )
        groups = len(cut_groups(plan.file_rows or (None,) * len(plan.files), partial.group_rows))
        if groups == partial.groups:
            run.context.log.info(
                f"sink {run.sink.sink_name}: resuming the plan of version {partial.delta_version} up to batch "
                f"{partial.batch_to}: {len(partial.settled_groups())} of {partial.groups} groups of "
                f"{partial.group_rows} rows were settled by an earlier run"
            )
            return plan
        problem = f"it now cuts into {groups} groups, not {partial.groups}"
    except Exception as exc:
        if not (refused_by_delta(exc) or isinstance(exc, OSError)):
            raise  # not the version being gone or unreadable: a bug to fix, not a reason to re-send
        # Vacuumed or unreadable: re-sending beats never sending.
        problem = f"{type(exc).__name__}: {exc}"
    run.context.log.warning(
        f"sink {run.sink.sink_name}: the partly settled plan of version {partial.delta_version} cannot be "
        f"resumed ({problem}); its batches are posted again from batch {progress.batch_id}"
    )
    abandon_partial(lease, run.sink.sink_name, run.feed.table_name)
    return None


class _GroupPoster:
    """Posts plans group by group, one Spark job per group, and settles each group as it completes.

    At most ``slots`` groups are submitted at a time, so a crash, kill or takeover re-sends at most
    ``slots`` groups: a stalled driver submits no new group, and its dead letters and progress move
    only through the fence. Spark starts on the first plan with records.
    """

    def __init__(self, run: PostRun, lease: Lease) -> None:
        self.run = run
        self.lease = lease
        self._spark: SparkSession | None = None
        self.slots = 1
        self.posted: list[PostedPlan] = []  # each plan of the current post settled whole, in order
        # (schema, expressions, where) → the destination and columns of the shaped records: resolved
        # once per shape, as each resolution is a round trip on Spark Connect (a kept poster reuses it).
        self._shapes: dict[tuple, tuple[Destination, list[str]]] = {}

    def _spark_ready(self) -> SparkSession:
        if self._spark is None:
            run = self.run
            # Seconds, not minutes: a wrong key or an unreachable sink is reported before Spark starts.
            run.sink.check_connection()
            spark = run.spark_session()
            self.slots = run.config.max_tasks or default_parallelism(spark)
            _prepare_executors(run.context, spark, self.slots, run.config.check_executors)
            host = beacon_host(spark)
            if host is not None:
                self.lease.open_beacon(host)
            self._spark = spark
        return self._spark

    def post(self, plan: PostPlan, partial: PartialProgress | None) -> None:
        started = time.perf_counter()
        sink, feed = self.run.sink, self.run.feed
        job = self._plan_groups(plan, partial)
        settled = job.partial.settled_groups()
        todo = [g for g in range(len(job.groups)) if g not in settled]
        self.run.context.log.info(
            f"sink {sink.sink_name}: {len(todo)} groups of up to {job.partial.group_rows} records to post "
            f"({len(settled)} settled already), {self.slots} at a time; progress moves as each settles"
        )
        results = self._post_groups(job, todo)
        if not todo:  # every group was settled by the run that was interrupted: close the plan
            write_progress(
                self.run.lake,
                sink.sink_name,
                feed.table_name,
                plan.delta_version,
                plan.batch_to,
                lease=self.lease,
            )
            return
        totals = PostTotals.of(pa.concat_tables(results))
        if totals.pending:
            raise pending_failure(sink.sink_name, totals, plan)
        if (unaccounted := unaccounted_failure(sink.sink_name, totals)) is not None:
            raise unaccounted
        self._report(plan, totals, time.perf_counter() - started)

    def _plan_groups(self, plan: PostPlan, partial: PartialProgress | None) -> "_PlanGroups":
        """The plan cut into groups (as ``partial`` cut it, when resuming), its records' shape resolved."""
        run = self.run
        spark = self._spark_ready()
        expressions = enrichment_for(run.feed, plan.schema, run.config)
        file_rows = plan.file_rows or (None,) * len(plan.files)
        if partial is None:
            group_rows = group_rows_for(plan, self.slots, run.config.group_records)
            partial = PartialProgress(
                plan.delta_version, plan.batch_to, group_rows, len(cut_groups(file_rows, group_rows))
            )
        groups = cut_groups(file_rows, partial.group_rows)
        fs, where = run.lake.filesystem_settings(), run.where

        def shaped(units: list[ReadUnit], resolve: bool = True) -> DataFrame:
            frame = read_units(spark, plan, fs, units)
            return select_where(enrich(frame, expressions, run.feed.name, resolve), where, resolve)

        destination, columns = self._shape((plan.schema, tuple(expressions), where), shaped, list(groups[0]))
        return _PlanGroups(
            plan=plan,
            partial=partial,
            groups=groups,
            shaped=shaped,
            destination=destination,
            columns=columns,
            settings=per_task_settings(destination.settings, self.slots),
            guard=self.lease.guard(),
            id_expression=run.sink.id_expression(),
            time_column=_time_column(run.sink, plan.schema),
        )

    def _shape(
        self, key: tuple, shaped: Callable[..., DataFrame], units: list[ReadUnit]
    ) -> tuple[Destination, list[str]]:
        """The destination and columns of the shaped records, resolved once per ``key`` (schema,
        expressions, where) before any group posts: a misfit is for a person to fix."""
        if key not in self._shapes:
            try:
                dtypes = shaped(units).dtypes
                destination = plan_destination(self.run.sink.settings(), self.run.feed.name, dtypes)
            except (EnrichmentError, TemplateError) as exc:
                raise needs_fix(str(exc)) from None
            self._shapes[key] = (destination, [name for name, _ in dtypes])
        return self._shapes[key]

    def _post_group(self, job: "_PlanGroups", group: int) -> pa.Table | None:
        """Post one group, then settle it from this same thread before it takes the next group.

        So at most ``slots`` groups are ever unsettled: the bound a kill or a takeover re-sends.
        """
        if job.stop.is_set():
            return None
        try:
            frame = job.shaped(list(job.groups[group]), resolve=False)  # the shape was resolved already
            records = to_sink_records(
                frame, job.id_expression, job.time_column, job.destination.columns, job.columns
            )
            table = records.mapInArrow(make_poster(job.settings, job.guard), RESULT_SPARK_SCHEMA).toArrow()
        except Exception as exc:  # whatever Spark raised: explained from its text by failures.py
            job.stop.set()
            raise _SparkStageError(exc) from exc
        if (reported := task_failure(table)) is not None:  # the sink refused a task: its kind is data
            job.stop.set()
            raise _SparkStageError(reported)
        totals = PostTotals.of(table)
        if totals.pending or totals.accepted + totals.dead != totals.records_in:
            job.stop.set()  # reported by post(); groups still running settle if they can
            return table
        with job.settle_lock:
            self._settle(job, group, totals)
        return table

    def _settle(self, job: "_PlanGroups", group: int, totals: PostTotals) -> None:
        """Dead letters first, then the group's progress: a settled group's rejections are never lost."""
        lake, sink, feed, plan = self.run.lake, self.run.sink, self.run.feed, job.plan
        if totals.dead:
            append_dead_letters(
                lake.table_uri(DEAD_LETTER_TABLE),
                lake.storage_options(),
                sink.sink_name,
                feed.table_name,
                plan.delta_version,
                plan.batch_to,
                totals.rejected,
                group=group,
            )
        settle_group(self.lease, sink.sink_name, feed.table_name, job.partial, group)

    def _post_groups(self, job: "_PlanGroups", todo: list[int]) -> list[pa.Table]:
        """Post ``todo``'s groups, ``slots`` at a time; their result rows, or the first failure raised."""
        results: list[pa.Table] = []
        spark_error: Exception | TaskFailure | None = None
        other_error: BaseException | None = None
        with ThreadPoolExecutor(max(1, min(self.slots, len(todo))), thread_name_prefix="post-group") as pool:
            futures = [pool.submit(self._post_group, job, g) for g in todo]
            try:
                for future in as_completed(futures):
                    try:
                        table = future.result()
                    except _SparkStageError as exc:
                        spark_error = spark_error or exc.cause
                        continue
                    except Exception as exc:  # LeaseLost, or storage while settling: re-raised below
                        job.stop.set()
                        other_error = other_error or exc
                        continue
                    if table is not None:
                        results.append(table)
            except (
                BaseException
            ):  # interrupted (the run was terminated): its tasks stop now, not at the end of their groups
                job.stop.set()
                self.lease.close_beacon()
                raise
        if self.lease.lost is not None:  # the renewal found another holder: its tasks stopped, say why
            raise self.lease.lost
        if other_error is not None:
            raise other_error
        if isinstance(spark_error, TaskFailure):
            raise reported_failure(spark_error, self.run.sink.sink_name)
        if spark_error is not None:
            self.run.context.log.error(
                f"the post stage failed in Spark: {root_cause(spark_error)}\n{str(spark_error)[:4000]}"
            )
            raise spark_failure(spark_error, self.run.sink.sink_name, self._spark) from None
        return results

    def _report(self, plan: PostPlan, totals: PostTotals, elapsed: float) -> None:
        context, sink, config = self.run.context, self.run.sink, self.run.config
        dead = totals.dead
        self.posted.append(PostedPlan(totals, plan, elapsed))
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


@dataclass(frozen=True)
class _PlanGroups:
    """One plan being posted group by group: its groups, the shape of its records, what the groups share."""

    plan: PostPlan
    partial: PartialProgress
    groups: list[tuple[ReadUnit, ...]]
    shaped: Callable[..., DataFrame]  # (units, resolve=True): the units' records, enriched and filtered
    destination: Destination
    columns: list[str]
    settings: SinkSettings  # each task's share of the sink's settings
    guard: LeaseGuard
    id_expression: str | None
    time_column: str | None
    stop: threading.Event = field(default_factory=threading.Event)  # a group fell short: start no more
    settle_lock: threading.Lock = field(default_factory=threading.Lock)


class _SparkStageError(Exception):
    """A group's Spark job failed, or one of its tasks reported a failure (as opposed to settling it):
    explained by ``failures.py``."""

    def __init__(self, cause: Exception | TaskFailure) -> None:
        super().__init__(str(cause))
        self.cause = cause


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
    except PySparkAttributeError:  # Spark Connect has no SparkContext
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
        row = measured.first()
        return max(1, int(row["n"])) if row is not None else 2
    except (PySparkException, Py4JError):  # a server that will not say: two tasks, as many as local[2] has
        return 2


def _prepare_executors(context: dg.OpExecutionContext, spark: SparkSession, slots: int, check: bool) -> None:
    """Ship lakerelay's code to the executors and check their Python; a misfit is for a person to fix."""
    started = time.perf_counter()
    try:
        report = prepare_executors(spark, slots, check)
    except ExecutorEnvironmentError as exc:
        raise needs_fix(str(exc)) from None
    except (
        Exception
    ) as exc:  # whatever Spark raised, explained; only a missing package or another Python needs a person
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
