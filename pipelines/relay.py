"""The always-on path of a feed: one run that ingests new landing files, then posts them on each of its routes.

The landing sensor requests ``relay_<feed>`` (with the ``shared`` job layout: ``relay_feeds``, selecting
the feed's assets) when files land, so a record reaches the sinks without
waiting for a second run to be launched and a second sensor tick. The post jobs and their table
sensors stay: they retry a sink that failed and catch up whatever else moved the table.
"""

from collections.abc import Callable
from functools import partial

import dagster as dg

from pipelines.feeds import FeedSpec
from pipelines.ingest.discovery import files_waiting
from pipelines.routes import RouteSpec
from pipelines.run_defaults import INFO_LOGS
from resources.run_tags import FEED_TAG, RELAY_TAG
from sensors.fleet import Target, build_fleet_sensor
from sensors.landing import build_landing_evaluation, build_landing_sensor


def relay_job_name(feed: FeedSpec) -> str:
    return f"relay_{feed.name}"


def relay_job(feed: FeedSpec, routes: list[RouteSpec]):  # -> the unresolved job of dg.define_asset_job
    sinks = [route.asset_key for route in routes]
    return dg.define_asset_job(
        relay_job_name(feed),
        selection=dg.AssetSelection.assets(dg.AssetKey(feed.name), *sinks),
        # In the run's own process: no step subprocess per op, and one Spark for every post.
        executor_def=dg.in_process_executor,
        config=INFO_LOGS,
        tags={FEED_TAG: feed.name, RELAY_TAG: feed.name},
        description=f"Ingest new files of feed {feed.name!r}, then post them on its routes "
        f"({', '.join(route.name for route in routes) or 'none'}).",
    )


def landing_sensor(
    feed: FeedSpec,
    job_name: str,
    minimum_interval_seconds: int = 30,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.STOPPED,
) -> dg.SensorDefinition:
    """``feed``'s landing sensor, requesting ``job_name``; the ingest domain says what waits."""
    return build_landing_sensor(
        feed.name,
        job_name,
        partial(files_waiting, feed=feed),
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
    )


SHARED_RELAY_JOB = "relay_feeds"


def relay_defs(
    feeds: list[FeedSpec],
    routes: list[RouteSpec],
    sensor_status: dg.DefaultSensorStatus,
    sensor_interval_s: int,
    layout: str = "per_route",
) -> dg.Definitions:
    """Per feed its relay job (``layout`` ``shared``: one ``relay_feeds`` job, each run selecting one
    feed's assets); one landing sensor for every feed (``sensors/fleet.py``)."""
    routes_of = {feed.name: [r for r in routes if r.feed.name == feed.name] for feed in feeds}
    if layout == "shared":
        jobs = [shared_relay_job(feeds, routes)] if feeds else []
        targets = [
            Target(
                feed.name,
                SHARED_RELAY_JOB,
                landing_evaluation(feed, SHARED_RELAY_JOB),
                asset_selection=(dg.AssetKey(feed.name), *(r.asset_key for r in routes_of[feed.name])),
            )
            for feed in feeds
        ]
    else:
        jobs = [relay_job(feed, routes_of[feed.name]) for feed in feeds]
        targets = [
            Target(feed.name, relay_job_name(feed), landing_evaluation(feed, relay_job_name(feed)))
            for feed in feeds
        ]
    sensor = build_fleet_sensor(
        "feeds_landing_sensor",
        f"For each of the {len(feeds)} feeds: launches its relay job (ingest new files, then post them on the "
        "feed's routes) when files land; again with backoff after a failed, canceled or dropped run while "
        "its files still wait.",
        targets,
        jobs,
        sensor_interval_s,
        sensor_status,
    )
    return dg.Definitions(jobs=jobs, sensors=[sensor] if feeds else [])


def shared_relay_job(feeds: list[FeedSpec], routes: list[RouteSpec]):  # -> unresolved, as relay_job
    """``relay_feeds``: every feed's ingest and route assets; the landing sensor's run of a feed selects
    that feed and its routes (its tags, from the sensor, say which feed)."""
    fed = {feed.name for feed in feeds}
    sinks = [route.asset_key for route in routes if route.feed.name in fed]
    return dg.define_asset_job(
        SHARED_RELAY_JOB,
        selection=dg.AssetSelection.assets(*(dg.AssetKey(feed.name) for feed in feeds), *sinks),
        executor_def=dg.in_process_executor,
        config=INFO_LOGS,
        description="Ingest new files of a feed, then post them on its routes; each run selects one feed's "
        "assets (the landing sensor's runs do).",
    )


def landing_evaluation(feed: FeedSpec, job_name: str) -> Callable:
    return build_landing_evaluation(feed.name, job_name, partial(files_waiting, feed=feed))
