"""Posting's share of the Definitions: per feed and sink, the sink's asset (a Spark op), its job and table sensor."""

import time
from collections.abc import Callable

import dagster as dg

from pipelines.feeds import FeedSpec
from pipelines.post.checks import build_dead_letter_check
from pipelines.post.job import build_post_asset, post_asset_job, sink_asset_key
from pipelines.post.progress import read_progress
from pipelines.post.replay_job import build_replay_job
from resources.lake import LakeResource
from resources.sinks.resource import RestSinkResource
from sensors.table import BACKOFF_FIRST_S, BACKOFF_MAX_S, build_table_sensor


def table_sensor(
    feed: FeedSpec,
    sink_key: str,
    sink_name: str,
    job_name: str,
    minimum_interval_seconds: int = 30,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.STOPPED,
    backoff_first_s: float = BACKOFF_FIRST_S,
    backoff_max_s: float = BACKOFF_MAX_S,
    clock: Callable[[], float] = time.time,
) -> dg.SensorDefinition:
    """The table sensor of (``feed``, sink), requesting ``job_name``; the post domain's progress says
    which version the sink settled."""

    def settled_version(lake: LakeResource) -> int:
        return read_progress(lake, sink_name, feed.table_name).delta_version

    return build_table_sensor(
        feed.name,
        feed.table_name,
        sink_key,
        sink_name,
        job_name,
        settled_version,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        backoff_first_s=backoff_first_s,
        backoff_max_s=backoff_max_s,
        clock=clock,
    )


def post_defs(
    feeds: list[FeedSpec],
    sinks: dict[str, RestSinkResource],
    sensor_status: dg.DefaultSensorStatus,
    sensor_interval_s: int,
    backoff_s: tuple[float, float] = (15.0, 900.0),
) -> dg.Definitions:
    pairs = [(feed, key) for feed in feeds for key in sinks]
    jobs = {(feed.name, key): post_asset_job(key, feed) for feed, key in pairs}
    return dg.Definitions(
        assets=[build_post_asset(key, feed, type(sinks[key]).asset_kind) for feed, key in pairs],
        asset_checks=[build_dead_letter_check(sink_asset_key(key, feed)) for feed, key in pairs],
        jobs=[*jobs.values(), *(build_replay_job(key) for key in sinks)],
        sensors=[
            table_sensor(
                feed,
                key,
                sinks[key].sink_name,
                jobs[(feed.name, key)].name,
                minimum_interval_seconds=sensor_interval_s,
                default_status=sensor_status,
                backoff_first_s=backoff_s[0],
                backoff_max_s=backoff_s[1],
            )
            for feed, key in pairs
        ],
    )
