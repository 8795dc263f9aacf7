"""The landing sensor: requests an ingest run when files arrive after the ones already seen.

The ingest domain answers what waits (``files_waiting``, passed in): an incremental listing after the
ingest's own cursor, so a tick costs the files not yet ingested, not the whole landing zone. Names
that arrive out of order are picked up by the ingest's periodic full listing; the sensor requests a
run when that is due. It knows nothing of the cursor's storage or the feed's filters.
"""

import time
from collections.abc import Callable
from typing import Protocol

import dagster as dg

from resources.lake import LakeResource
from sensors.table import FEED_TAG, RELAY_TAG

# Runs that have not listed the landing zone yet (queued behind a running one, or starting).
NOT_YET_STARTED = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
]


class LandingBacklog(Protocol):
    """What the ingest domain says waits in a feed's landing zone (``pipelines.ingest.discovery``)."""

    @property
    def count(self) -> int: ...  # files the next ingest would take

    @property
    def last_path(self) -> str: ...  # the greatest of them

    @property
    def start_after(self) -> str: ...  # the ingest's listing cursor ("" before its first run)

    @property
    def root(self) -> str: ...

    @property
    def full_listing_due(self) -> bool: ...  # the ingest's full listing (out-of-order names) is due

    @property
    def backfill_interval_s(self) -> float: ...


def build_landing_sensor(
    feed_name: str,
    job_name: str,
    files_waiting: Callable[[LakeResource], LandingBacklog],
    minimum_interval_seconds: int = 30,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.STOPPED,
) -> dg.SensorDefinition:
    """Requests job ``job_name`` (in this code location) for feed ``feed_name`` when ``files_waiting``
    reports files the ingest has not taken, or a full listing that is due."""

    @dg.sensor(
        name=f"{feed_name}_landing_sensor",
        job_name=job_name,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        description=f"Requests an ingest of feed {feed_name!r} when new files land.",
    )
    def landing_sensor(
        context: dg.SensorEvaluationContext, lake: LakeResource
    ) -> dg.SensorResult | dg.SkipReason:
        waiting = files_waiting(lake)
        if waiting.count:
            # The cursor and the last path in the key: a run that left a backlog (max_batches) moves
            # the cursor, so the rest is requested again.
            run_key = f"{feed_name}:{waiting.start_after}:{waiting.last_path}:{waiting.count}"
            if run_key == context.cursor:
                return dg.SkipReason(f"{waiting.count} pending files already requested (run key {run_key})")
            queued = context.instance.get_runs(
                dg.RunsFilter(tags={RELAY_TAG: feed_name}, statuses=NOT_YET_STARTED), limit=1
            )
            if queued:
                # It lists the landing zone when it starts: these files are its, no second run needed.
                return dg.SkipReason(f"run {queued[0].run_id} is about to start and will take these files")
            return dg.SensorResult(
                run_requests=[
                    dg.RunRequest(run_key=run_key, tags={FEED_TAG: feed_name, RELAY_TAG: feed_name})
                ],
                cursor=run_key,
            )
        if waiting.full_listing_due:
            # The ingest run does the full listing that finds out-of-order and overwritten files.
            bucket = int(time.time() // max(1.0, waiting.backfill_interval_s))
            return dg.RunRequest(run_key=f"{feed_name}:backfill:{bucket}", tags={FEED_TAG: feed_name})
        return dg.SkipReason(f"no files under {waiting.root} after {waiting.start_after or 'the start'}")

    return landing_sensor
