"""Posting's share of the Definitions with the ``shared`` job layout (``LAKERELAY_JOB_LAYOUT``): the
same assets, checks and replay jobs as ``defs.py``, but one ``post_routes`` job for every route instead
of one per route; the routes table sensor's run of a route selects that route's asset.

Why: the daemon fetches the snapshot of every job again each minute (each job carries its own copy
of the run config schema, ~20-90 KB), so 150 routes were 150 snapshots to fetch and hash while nothing
happened. One job keeps that cost flat in routes.
"""

from functools import partial

import dagster as dg

from pipelines.post.job import build_post_asset
from pipelines.post.progress import read_progress
from pipelines.post.replay_job import build_replay_job
from pipelines.routes import RouteSpec
from pipelines.run_defaults import INFO_LOGS
from resources.lake import LakeResource
from sensors.fleet import Target, build_fleet_sensor
from sensors.table import BACKOFF_FIRST_S, BACKOFF_MAX_S, build_table_evaluation

SHARED_POST_JOB = "post_routes"


def shared_post_job(routes: list[RouteSpec]):  # -> the unresolved job of dg.define_asset_job
    keys = [route.asset_key for route in routes]
    return dg.define_asset_job(
        SHARED_POST_JOB,
        selection=dg.AssetSelection.assets(*keys),
        executor_def=dg.in_process_executor,
        config=INFO_LOGS,
        description="Post a route's unsettled records to its sink; each run selects the routes it posts "
        "(the routes table sensor's runs select one, tagged with its feed, sink and route).",
    )


def shared_post_defs(
    routes: list[RouteSpec],
    sensor_status: dg.DefaultSensorStatus,
    sensor_interval_s: int,
    backoff_s: tuple[float, float] = (BACKOFF_FIRST_S, BACKOFF_MAX_S),
) -> dg.Definitions:
    """Per route its asset (with its check); one ``post_routes`` job and one table sensor for every route."""
    if not routes:
        return dg.Definitions()
    job = shared_post_job(routes)
    sensed = [route for route in routes if route.feed.mode != "continuous"]
    targets = [
        Target(
            f"{route.feed.name}/{route.name}",
            SHARED_POST_JOB,
            build_table_evaluation(
                route.feed.name,
                route.feed.table_name,
                route.sink,
                route.name,
                SHARED_POST_JOB,
                partial(settled_version, route),
                backoff_first_s=backoff_s[0],
                backoff_max_s=backoff_s[1],
            ),
            asset_selection=(route.asset_key,),
        )
        for route in sensed
    ]
    sensor = build_fleet_sensor(
        "routes_table_sensor",
        f"For each of the {len(sensed)} routes: requests job {SHARED_POST_JOB} for the route's asset when "
        "its feed's table has commits the route has not settled and no post of it is in flight; again with "
        "backoff after a failed run.",
        targets,
        [job],
        sensor_interval_s,
        sensor_status,
    )
    return dg.Definitions(
        assets=[build_post_asset(route) for route in routes],
        jobs=[job, *(build_replay_job(key) for key in sorted({route.sink for route in routes}))],
        sensors=[sensor] if sensed else [],
    )


def settled_version(route: RouteSpec, lake: LakeResource) -> int:
    return read_progress(lake, route.name, route.feed.table_name).delta_version
