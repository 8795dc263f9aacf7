"""The one Definitions object of lakerelay, loaded by workspace.yaml and the Dagster CLI.

Each domain (ingest, post, export) builds its own Definitions; they are merged here once, with the
resources of this deployment.
"""

import warnings

import dagster as dg

from pipelines import deployment
from pipelines.continuous.defs import continuous_defs, with_continuous_freshness, without_table_sensors
from pipelines.export.assets import export_defs
from pipelines.feeds import EVENTS_FEED, FeedSpec
from pipelines.ingest.defs import ingest_defs
from pipelines.post.defs import post_defs
from pipelines.relay import relay_defs
from sensors.failures import build_failure_sensor

# Dagster's own sensor factory passes a beta parameter; the warning says nothing about this project.
warnings.filterwarnings("ignore", message="Parameter `owners`", category=dg.BetaWarning)

FEEDS = deployment.feeds(default=[EVENTS_FEED])
SINK_KEYS = ["elasticsearch", "splunk"]


def build_defs(resources: dict, feeds: list[FeedSpec] = FEEDS) -> dg.Definitions:
    """Assets, jobs and sensors for ``feeds``, with the given resources (tests pass their own)."""
    status = deployment.sensors_default_status()
    interval = deployment.sensor_interval_seconds()
    sinks = {key: resources[key] for key in SINK_KEYS if key in resources}
    triggered = [feed for feed in feeds if feed.mode == "triggered"]
    merged = dg.Definitions.merge(
        ingest_defs(feeds, status, interval),
        without_table_sensors(
            post_defs(feeds, sinks, status, interval, deployment.retry_backoff_s()), feeds, list(sinks)
        ),
        relay_defs(triggered, list(sinks), status, interval),
        continuous_defs(feeds, list(sinks), status, interval),
        export_defs(feeds, storage=resources.get("export_storage")),
        dg.Definitions(sensors=[build_failure_sensor()], resources=resources),
    )
    return with_continuous_freshness(merged, feeds, list(sinks))


_lake = deployment.lake_resource()
defs = build_defs(
    {
        "lake": _lake,
        "pyspark": deployment.spark_resource(),
        "export_storage": deployment.export_storage_resource(_lake),  # the same S3 settings
        **deployment.sink_resources(),
    }
)
