"""A code location for the daemon test of the landing sensor (tests/test_landing_daemon.py).

Its relay job fails on its first run before it moves the ingest's cursor (as when the landing zone
cannot be read), then ingests. Nothing else lands: only the sensor's healing can finish the work.
"""

import os
from functools import partial
from pathlib import Path

import dagster as dg

from pipelines.feeds import EVENTS_FEED
from pipelines.ingest.discovery import files_waiting
from pipelines.ingest.runner import ingest_feed
from resources.lake import LakeResource
from sensors.landing import build_landing_sensor

HOME = Path(os.environ["LAKERELAY_HOME"])
FIRST_RUN_MARKER = HOME / "first-run-failed"


@dg.op
def flaky_ingest(lake: LakeResource) -> None:
    if not FIRST_RUN_MARKER.exists():
        FIRST_RUN_MARKER.touch()
        raise dg.Failure("the landing zone is unreachable (injected into the first run only)")
    ingest_feed(EVENTS_FEED, lake)


@dg.job(tags={"lakerelay/feed": EVENTS_FEED.name, "lakerelay/relay": EVENTS_FEED.name})
def flaky_relay() -> None:
    flaky_ingest()


defs = dg.Definitions(
    jobs=[flaky_relay],
    sensors=[
        build_landing_sensor(
            EVENTS_FEED.name,
            flaky_relay.name,
            partial(files_waiting, feed=EVENTS_FEED),
            minimum_interval_seconds=1,
            default_status=dg.DefaultSensorStatus.RUNNING,
            backoff_first_s=2,
            backoff_max_s=4,
        )
    ],
    resources={"lake": LakeResource(lake_uri=str(HOME / "lake"), landing_uri=str(HOME / "landing"))},
)
