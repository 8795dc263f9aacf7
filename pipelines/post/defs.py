"""Posting's share of the Definitions: per feed and sink, the sink's asset (a Spark op), its job and table sensor."""

import dagster as dg

from pipelines.feeds import FeedSpec
from pipelines.post.checks import build_dead_letter_check
from pipelines.post.job import build_post_asset, post_asset_job, sink_asset_key
from pipelines.post.replay_job import build_replay_job
from resources.sinks.resource import RestSinkResource
from sensors.table import build_table_sensor


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
            build_table_sensor(
                feed,
                key,
                sinks[key].sink_name,
                jobs[(feed.name, key)],
                minimum_interval_seconds=sensor_interval_s,
                default_status=sensor_status,
                backoff_first_s=backoff_s[0],
                backoff_max_s=backoff_s[1],
            )
            for feed, key in pairs
        ],
    )
