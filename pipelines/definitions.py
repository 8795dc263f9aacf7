"""The one Definitions object of lakerelay, loaded by workspace.yaml and the Dagster CLI."""

import warnings

import dagster as dg

from pipelines import deployment
from pipelines.export_assets import build_export_asset, build_export_check
from pipelines.feeds import EVENTS_FEED, FeedSpec
from pipelines.ingest.asset import build_ingest_asset
from pipelines.post.job import build_post_job, sink_asset_spec
from sensors.failures import build_failure_sensor
from sensors.landing import build_landing_sensor
from sensors.table import build_table_sensor

# Dagster's own sensor factory passes a beta parameter; the warning says nothing about this project.
warnings.filterwarnings("ignore", message="Parameter `owners`", category=dg.BetaWarning)

FEEDS = [EVENTS_FEED]
SINK_KEYS = ["elasticsearch", "splunk"]


def build_defs(resources: dict, feeds: list[FeedSpec] = FEEDS) -> dg.Definitions:
    """Assets, jobs and sensors for ``feeds``, with the given resources (tests pass their own)."""
    sinks = {key: resources[key] for key in SINK_KEYS if key in resources}
    ingest_jobs = {
        feed.name: dg.define_asset_job(
            f"ingest_{feed.name}",
            selection=dg.AssetSelection.assets(feed.name),
            tags={"lakerelay/feed": feed.name},
        )
        for feed in feeds
    }
    export_jobs = [
        dg.define_asset_job(f"export_{feed.name}", selection=dg.AssetSelection.assets(f"{feed.name}_export"))
        for feed in feeds
    ]
    post_jobs = {(feed.name, key): build_post_job(key, feed) for feed in feeds for key in sinks}

    status = deployment.sensors_default_status()
    interval = deployment.sensor_interval_seconds()
    sensors = [
        build_landing_sensor(
            feed, ingest_jobs[feed.name], minimum_interval_seconds=interval, default_status=status
        )
        for feed in feeds
    ]
    sensors += [
        build_table_sensor(
            feed, key, sinks[key].sink_name, post_jobs[(feed.name, key)], default_status=status
        )
        for feed in feeds
        for key in sinks
    ]
    sensors.append(build_failure_sensor([*ingest_jobs.values(), *post_jobs.values(), *export_jobs]))

    return dg.Definitions(
        assets=[
            *(build_ingest_asset(feed) for feed in feeds),
            *(build_export_asset(feed.name, feed.table_name, dg.AssetKey(feed.name)) for feed in feeds),
            *(sink_asset_spec(key, feed) for feed in feeds for key in sinks),
        ],
        asset_checks=[build_export_check(feed.name) for feed in feeds],
        jobs=[*ingest_jobs.values(), *post_jobs.values(), *export_jobs],
        sensors=sensors,
        resources=resources,
    )


defs = build_defs(
    {
        "lake": deployment.lake_resource(),
        "pyspark": deployment.spark_resource(),
        "export_storage": deployment.export_storage_resource(),
        **deployment.sink_resources(),
    }
)
