"""The post job: per (sink, feed), the sink's asset (one Spark op that posts new records) and its job.

What the op does is ``run.py``'s; its config is ``config.py``'s; what it reports is ``report.py``'s.
"""

from collections.abc import Iterator

import dagster as dg

from pipelines.feeds import FeedSpec
from pipelines.post.config import PostConfig
from pipelines.post.run import PostRun, run_post
from pipelines.run_defaults import INFO_LOGS
from resources.lake import LakeResource
from resources.sinks.resource import NEEDS_FIX, RestSinkResource

# Transient crashes (a lost executor, an S3 hiccup) are retried in the run; failures a retry cannot
# fix say so (dg.Failure(allow_retries=False)) and are healed by the table sensor's backoff instead.
POST_RETRY_POLICY = dg.RetryPolicy(max_retries=2, delay=10, backoff=dg.Backoff.EXPONENTIAL)


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
                PostRun(
                    context,
                    lake,
                    sink,
                    lambda: context.resources.pyspark.spark_session,  # Spark starts only once there is work
                    feed,
                    sink_asset_key(sink_key, feed),
                    config,
                )
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
