"""Ingestion's share of the Definitions: an asset, a job and a landing sensor per feed."""

import dagster as dg

from pipelines.feeds import FeedSpec
from pipelines.ingest.asset import build_ingest_asset
from sensors.landing import build_landing_sensor


def ingest_defs(
    feeds: list[FeedSpec], sensor_status: dg.DefaultSensorStatus, sensor_interval_s: int
) -> dg.Definitions:
    jobs = {
        feed.name: dg.define_asset_job(
            f"ingest_{feed.name}",
            selection=dg.AssetSelection.assets(feed.name),
            tags={"lakerelay/feed": feed.name},
        )
        for feed in feeds
    }
    return dg.Definitions(
        assets=[build_ingest_asset(feed) for feed in feeds],
        jobs=list(jobs.values()),
        sensors=[
            build_landing_sensor(
                feed,
                jobs[feed.name],
                minimum_interval_seconds=sensor_interval_s,
                default_status=sensor_status,
            )
            for feed in feeds
        ],
    )
