"""Posting's share of the Definitions: per feed and sink, a Spark job, the sink's asset and a table sensor."""

import dagster as dg

from pipelines.feeds import FeedSpec
from pipelines.post.checks import build_dead_letter_check
from pipelines.post.job import build_post_job, sink_asset_key, sink_asset_spec
from pipelines.post.replay_job import build_replay_job
from resources.sinks.resource import RestSinkResource
from sensors.table import build_table_sensor


def post_defs(
    feeds: list[FeedSpec],
    sinks: dict[str, RestSinkResource],
    sensor_status: dg.DefaultSensorStatus,
    sensor_interval_s: int,
) -> dg.Definitions:
    pairs = [(feed, key) for feed in feeds for key in sinks]
    jobs = {(feed.name, key): build_post_job(key, feed) for feed, key in pairs}
    return dg.Definitions(
        assets=[sink_asset_spec(key, feed) for feed, key in pairs],
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
            )
            for feed, key in pairs
        ],
    )
