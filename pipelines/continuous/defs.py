"""Continuous mode's share of the Definitions: per feed with ``mode: continuous``, its job and keeper
sensor; and the FreshnessPolicy of its route assets (``with_continuous_freshness``). (Its routes are
left out of the routes table sensor by ``post/defs.py``.)"""

import hashlib
import warnings
from pathlib import Path

import dagster as dg

from pipelines import deployment
from pipelines.continuous.job import build_continuous_job, continuous_job_name
from pipelines.continuous.report import FRESHNESS
from pipelines.feeds import FeedSpec
from pipelines.routes import RouteSpec
from sensors.continuous import build_keeper_sensor

_PROJECT = Path(__file__).resolve().parents[2]
_CODE_FOLDERS = ("pipelines", "resources", "sensors")


def code_version() -> str:
    """A digest of lakerelay's Python source: a continuous run on other code is replaced by the keeper."""
    digest = hashlib.sha256()
    for folder in _CODE_FOLDERS:
        for path in sorted((_PROJECT / folder).rglob("*.py")):
            digest.update(str(path.relative_to(_PROJECT)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def continuous_feeds(feeds: list[FeedSpec]) -> list[FeedSpec]:
    return [feed for feed in feeds if feed.mode == "continuous"]


def continuous_defs(
    feeds: list[FeedSpec],
    routes: list[RouteSpec],
    sensor_status: dg.DefaultSensorStatus,
    sensor_interval_s: int,
) -> dg.Definitions:
    """The continuous job and keeper sensor of each of ``feeds`` in continuous mode (others: nothing)."""
    version = code_version()
    chosen = continuous_feeds(feeds)
    backoff_first_s, backoff_max_s = deployment.retry_backoff_s()  # the table sensors' backoff
    return dg.Definitions(
        jobs=[
            build_continuous_job(feed, [r for r in routes if r.feed.name == feed.name], version)
            for feed in chosen
        ],
        sensors=[
            build_keeper_sensor(
                feed.name,
                continuous_job_name(feed),
                version,
                minimum_interval_seconds=sensor_interval_s,
                default_status=sensor_status,
                backoff_first_s=backoff_first_s,
                backoff_max_s=backoff_max_s,
            )
            for feed in chosen
        ],
    )


def with_continuous_freshness(defs: dg.Definitions, routes: list[RouteSpec]) -> dg.Definitions:
    """``defs`` with a FreshnessPolicy on the route assets of continuous feeds: the continuous run
    reports each about once a minute while it keeps up, so one not reported for minutes is late."""
    keys = {route.asset_key for route in routes if route.feed.mode == "continuous"}
    if not keys:
        return defs
    with warnings.catch_warnings():  # "in preview": the call is the documented way to change specs
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return defs.map_asset_specs(
            func=lambda spec: (
                spec.replace_attributes(freshness_policy=FRESHNESS) if spec.key in keys else spec
            )
        )
