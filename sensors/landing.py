"""The landing sensor: requests an ingest run when files arrive after the ones already seen.

Each tick lists incrementally — only names after the ingest's listing cursor — so a tick costs the
files not yet ingested, not the whole landing zone. Names that arrive out of
order are picked up by the ingest's periodic full listing; the sensor requests a run when that is due.
"""

import time

import dagster as dg
from dagster._core.definitions.sensor_definition import ExecutableDefinition

from pipelines.feeds import FeedSpec
from pipelines.ingest.discovery import ListingFilter, list_landing_files
from resources.lake import LakeResource
from sensors.table import RELAY_TAG

# Runs that have not listed the landing zone yet (queued behind a running one, or starting).
NOT_YET_STARTED = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
]


def build_landing_sensor(
    feed: FeedSpec,
    job: ExecutableDefinition,
    minimum_interval_seconds: int = 30,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.STOPPED,
) -> dg.SensorDefinition:
    @dg.sensor(
        name=f"{feed.name}_landing_sensor",
        job=job,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        description=f"Requests an ingest of feed {feed.name!r} when new files land.",
    )
    def landing_sensor(
        context: dg.SensorEvaluationContext, lake: LakeResource
    ) -> dg.SensorResult | dg.SkipReason:
        fs, root = lake.resolve(feed.landing_uri(lake.landing_uri))
        ingest_cursor = lake.read_state("listing", f"{feed.name}.json") or {}
        # Files after the ingest's cursor are the ones not yet ingested: new arrivals plus any backlog a
        # run left for later (max_batches), so a partial run is followed by another request.
        start_after = ingest_cursor.get("start_after") or None
        pending = list_landing_files(
            fs,
            root,
            start_after=start_after,
            keep=ListingFilter(feed.recursive, feed.path_glob, feed.modified_after_ns()),
            lake=lake,
        )
        if pending:
            run_key = f"{feed.name}:{start_after or ''}:{pending[-1].path}:{len(pending)}"
            if run_key == context.cursor:
                return dg.SkipReason(f"{len(pending)} pending files already requested (run key {run_key})")
            waiting = context.instance.get_runs(
                dg.RunsFilter(tags={RELAY_TAG: feed.name}, statuses=NOT_YET_STARTED), limit=1
            )
            if waiting:
                # It lists the landing zone when it starts: these files are its, no second run needed.
                return dg.SkipReason(f"run {waiting[0].run_id} is about to start and will take these files")
            return dg.SensorResult(
                run_requests=[
                    dg.RunRequest(run_key=run_key, tags={"lakerelay/feed": feed.name, RELAY_TAG: feed.name})
                ],
                cursor=run_key,
            )
        last_full = ingest_cursor.get("last_full_listing_at")
        if last_full is not None and time.time() - last_full >= feed.backfill_interval_s():
            # The ingest run does the full listing that finds out-of-order and overwritten files.
            bucket = int(time.time() // max(1.0, feed.backfill_interval_s()))
            return dg.RunRequest(run_key=f"{feed.name}:backfill:{bucket}", tags={"lakerelay/feed": feed.name})
        return dg.SkipReason(f"no files under {root} after {start_after or 'the start'}")

    return landing_sensor
