"""Posting's share of the Definitions: per route, its asset (a Spark op), job, check and table sensor."""

import time
from collections.abc import Callable
from functools import partial

import dagster as dg

from pipelines.post.job import build_post_asset, post_asset_job
from pipelines.post.progress import read_progress
from pipelines.post.replay_job import build_replay_job
from pipelines.routes import RouteSpec
from resources.lake import LakeResource
from sensors.fleet import Target, build_fleet_sensor
from sensors.table import BACKOFF_FIRST_S, BACKOFF_MAX_S, build_table_evaluation, build_table_sensor


def table_sensor(
    route: RouteSpec,
    job_name: str | None = None,
    minimum_interval_seconds: int = 30,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.STOPPED,
    backoff_first_s: float = BACKOFF_FIRST_S,
    backoff_max_s: float = BACKOFF_MAX_S,
    clock: Callable[[], float] = time.time,
) -> dg.SensorDefinition:
    """The table sensor of ``route``, requesting ``job_name`` (default: the route's post job); the post
    domain's progress says which version the route settled."""
    feed = route.feed

    def settled_version(lake: LakeResource) -> int:
        return read_progress(lake, route.name, feed.table_name).delta_version

    return build_table_sensor(
        feed.name,
        feed.table_name,
        route.sink,
        route.name,
        job_name or route.job_name,
        settled_version,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        backoff_first_s=backoff_first_s,
        backoff_max_s=backoff_max_s,
        clock=clock,
    )


def post_defs(
    routes: list[RouteSpec],
    sensor_status: dg.DefaultSensorStatus,
    sensor_interval_s: int,
    backoff_s: tuple[float, float] = (BACKOFF_FIRST_S, BACKOFF_MAX_S),
) -> dg.Definitions:
    """Per route its asset (with its check) and job; one table sensor for every route (``sensors/fleet.py``)."""
    sink_keys = sorted({route.sink for route in routes})
    jobs = [post_asset_job(route) for route in routes]
    sensed = [route for route in routes if route.feed.mode != "continuous"]
    return dg.Definitions(
        assets=[build_post_asset(route) for route in routes],
        jobs=[*jobs, *(build_replay_job(key) for key in sink_keys)],
        # A continuous feed's run posts on its routes itself: a post the sensor requested would only
        # take a route's lease from it (its jobs stay, to run by hand).
        sensors=[routes_sensor(sensed, jobs, sensor_interval_s, sensor_status, backoff_s)] if sensed else [],
    )


def routes_sensor(
    routes: list[RouteSpec],
    jobs: list,
    sensor_interval_s: int,
    sensor_status: dg.DefaultSensorStatus,
    backoff_s: tuple[float, float],
) -> dg.SensorDefinition:
    """``routes_table_sensor``: each tick, every route whose feed's table is ahead of what it settled
    gets its post job requested (again with backoff after a failure); one route's failure holds back
    no other."""
    targets = [
        Target(
            f"{route.feed.name}/{route.name}",
            route.job_name,
            build_table_evaluation(
                route.feed.name,
                route.feed.table_name,
                route.sink,
                route.name,
                route.job_name,
                partial(_settled_version, route),
                backoff_first_s=backoff_s[0],
                backoff_max_s=backoff_s[1],
            ),
        )
        for route in routes
    ]
    return build_fleet_sensor(
        "routes_table_sensor",
        f"For each of the {len(routes)} routes: requests its post job when its feed's table has commits the "
        "route has not settled and no post of it is in flight; again with backoff after a failed run.",
        targets,
        jobs,
        sensor_interval_s,
        sensor_status,
    )


def _settled_version(route: RouteSpec, lake: LakeResource) -> int:
    return read_progress(lake, route.name, route.feed.table_name).delta_version
