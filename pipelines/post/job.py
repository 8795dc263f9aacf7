"""The post job: per route (a feed to a sink), the route's asset (one Spark op that posts new records) and its job.

What the op does is ``run.py``'s; its config is ``config.py``'s; what it reports is ``report.py``'s.
"""

from collections.abc import Iterator
from typing import Any

import dagster as dg

from pipelines.post.checks import dead_letter_check_spec, dead_letter_result
from pipelines.post.config import PostConfig
from pipelines.post.report import post_metadata
from pipelines.post.run import PostRun, run_post
from pipelines.routes import RouteSpec
from pipelines.run_defaults import INFO_LOGS
from resources.lake import LakeResource
from resources.run_tags import FEED_TAG, NEEDS_FIX, ROUTE_TAG, SINK_TAG
from resources.sinks.resource import RestSinkResource

# Transient crashes (a lost executor, an S3 hiccup) are retried in the run; failures a retry cannot
# fix say so (dg.Failure(allow_retries=False)) and are healed by the table sensor's backoff instead.
POST_RETRY_POLICY = dg.RetryPolicy(max_retries=2, delay=10, backoff=dg.Backoff.EXPONENTIAL)


def route_sink(route: RouteSpec, resources: Any) -> RestSinkResource:
    """The route's sink resource (from ``resources``, the op's) as the route posts to it.

    A route named after its sink keeps the resource's own sink_name (the same name when the sink is
    declared as a component); a route of its own name settles progress under that name.
    """
    declared: RestSinkResource = getattr(resources, route.sink)
    return declared.for_route(
        declared.sink_name if route.name == route.sink else route.name, route.destination
    )


def build_post_asset(route: RouteSpec) -> dg.AssetsDefinition:
    """The route's documents in its sink, materialized by one Spark op that posts the new records."""
    feed, sink_key = route.feed, route.sink

    @dg.asset(
        key=route.asset_key,
        deps=[dg.AssetKey(feed.name)],
        # Materialized only when records were posted: an empty run changes nothing in the sink.
        output_required=False,
        check_specs=[dead_letter_check_spec(route.asset_key)],
        group_name="sinks",
        kinds={route.sink_kind, "spark"},
        description=route.description
        or f"Documents of feed {feed.name!r} in sink {sink_key!r}: job {route.job_name} reads the records "
        "its table sensor finds unsettled, enriches them in Spark and posts them"
        + (f" where {route.where}" if route.where else "")
        + ".",
        required_resource_keys={sink_key, "lake", "pyspark"},
        pool=route.pool,
        retry_policy=POST_RETRY_POLICY,
    )
    def post_asset(
        context: dg.AssetExecutionContext, config: PostConfig
    ) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
        lake: LakeResource = context.resources.lake
        sink = route_sink(route, context.resources)
        try:
            posted = run_post(
                PostRun(
                    context.op_execution_context,
                    lake,
                    sink,
                    lambda: context.resources.pyspark.spark_session,  # Spark starts only once there is work
                    route.posted_feed(),
                    route.asset_key,
                    config,
                    where=route.where,
                )
            )
        except dg.Failure as failure:
            if NEEDS_FIX in (failure.metadata or {}):
                # The table sensor reads this tag and waits its longest backoff instead of retrying soon.
                context.instance.add_run_tags(context.run_id, {NEEDS_FIX: (failure.description or "")[:200]})
            raise
        if not posted:
            yield dead_letter_result(0, 0, config.dead_letter_max_rate)
            return
        dead = sum(p.totals.dead for p in posted)
        records = sum(p.totals.records_in for p in posted)
        yield dg.MaterializeResult(
            metadata=post_metadata(posted, config, sink.destination_uri(), sink.asset_kind),
            check_results=[dead_letter_result(dead, records, config.dead_letter_max_rate)],
        )

    return post_asset


def post_asset_job(route: RouteSpec):  # define_asset_job's type is not exported by dagster
    """``post_<feed>_to_<route>``: in-process (one op, no step subprocess to start), tagged for sensors."""
    return dg.define_asset_job(
        route.job_name,
        selection=dg.AssetSelection.assets(route.asset_key),
        executor_def=dg.in_process_executor,
        config=INFO_LOGS,
        tags={SINK_TAG: route.sink, ROUTE_TAG: route.name, FEED_TAG: route.feed.name},
    )
