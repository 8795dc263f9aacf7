"""The one Definitions object of lakerelay, loaded by workspace.yaml, ``dg`` and the Dagster CLI.

The feeds, sinks, routes and exports are declared as components in ``pipelines/defs`` (see
``pipelines/components``); ``pipelines/topology.py`` joins them. Each domain (ingest, post, relay,
export) builds its share from the joined topology; they are merged here once, with the resources of
this deployment (``pipelines/deployment.py``: what the environment says).
"""

import dataclasses
import warnings
from pathlib import Path

import dagster as dg

from pipelines import deployment
from pipelines.continuous.defs import continuous_defs, with_continuous_freshness
from pipelines.export.assets import export_defs
from pipelines.export.spec import ExportSpec
from pipelines.feeds import EVENTS_FEED, FeedSpec
from pipelines.ingest.defs import ingest_defs
from pipelines.post.defs import post_defs
from pipelines.post.shared import shared_post_defs
from pipelines.relay import relay_defs
from pipelines.routes import RouteSpec, every_sink
from pipelines.topology import Topology, load_topology
from resources.sinks.resource import RestSinkResource
from sensors.failures import build_failure_sensor

# Dagster's own sensor factory passes a beta parameter; the warning says nothing about this project.
warnings.filterwarnings("ignore", message="Parameter `owners`", category=dg.BetaWarning)

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def build_defs(
    resources: dict,
    feeds: list[FeedSpec] = [EVENTS_FEED],  # noqa: B006 - read only
    routes: list[RouteSpec] | None = None,
    exports: list[ExportSpec] | None = None,
    layout: str | None = None,
) -> dg.Definitions:
    """Assets, jobs and sensors for ``feeds`` and ``routes`` (default: each feed to each sink resource
    given), with the given resources (tests pass their own); ``layout``: the jobs' layout
    (``deployment.job_layout()``: a job per feed and route, or ``shared`` jobs)."""
    status = deployment.sensors_default_status()
    interval = deployment.sensor_interval_seconds()
    layout = layout or deployment.job_layout()
    posting = shared_post_defs if layout == "shared" else post_defs
    if routes is None:
        sinks = {key: r.asset_kind for key, r in resources.items() if isinstance(r, RestSinkResource)}
        routes = every_sink(feeds, sinks)
    triggered = [feed for feed in feeds if feed.mode == "triggered"]
    merged = dg.Definitions.merge(
        ingest_defs(feeds, status, interval, layout),
        posting(routes, status, interval, deployment.retry_backoff_s()),
        relay_defs(triggered, routes, status, interval, layout),
        continuous_defs(feeds, routes, status, interval),
        export_defs(feeds, exports, storage=resources.get("export_storage"), layout=layout),
        dg.Definitions(sensors=[build_failure_sensor(*deployment.retry_backoff_s())], resources=resources),
    )
    return with_continuous_freshness(merged, routes)


def deployment_topology() -> Topology:
    """The components of ``pipelines/defs`` (or of the dg project ``LAKERELAY_DEFS_PROJECT`` names); or, while a deployment still names a feeds file
    (``LAKERELAY_FEEDS_FILE``, before components), its feeds, each routed to the sinks of the environment."""
    feeds_file = deployment.feeds_file()
    if feeds_file is None:
        topology = load_topology(deployment.defs_project_root(), deployment.sink_tuning())
        if deployment.exports_file():  # before components: the file's exports replace the declared ones
            return dataclasses.replace(topology, exports=None)
        return topology
    feeds = deployment.feeds(default=[EVENTS_FEED])
    sinks = deployment.sink_resources()
    # Exports None: LAKERELAY_EXPORTS_FILE's, or one per feed (pipelines/export/assets.py).
    return Topology(feeds, sinks, every_sink(feeds, {k: r.asset_kind for k, r in sinks.items()}), None)


def deployment_defs() -> dg.Definitions:
    topology = deployment_topology()
    lake = deployment.lake_resource()
    resources = {
        "lake": lake,
        "pyspark": deployment.spark_resource(),
        "export_storage": deployment.export_storage_resource(lake),  # the same S3 settings
        **topology.sinks,
    }
    return build_defs(resources, topology.feeds, topology.routes, topology.exports)


defs = deployment_defs()
