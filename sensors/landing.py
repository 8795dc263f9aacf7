"""The landing sensor: requests an ingest run when the landing zone holds files it has not seen."""

import hashlib
import json

import dagster as dg
from dagster._core.definitions.sensor_definition import ExecutableDefinition

from pipelines.feeds import FeedSpec
from pipelines.ingest.discovery import list_landing_files
from resources.lake import LakeResource


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
        description=f"Requests an ingest of feed {feed.name!r} when its landing zone changes.",
    )
    def landing_sensor(
        context: dg.SensorEvaluationContext, lake: LakeResource
    ) -> dg.SensorResult | dg.SkipReason:
        fs, root = lake.resolve(feed.landing_uri(lake.landing_uri))
        files = list_landing_files(fs, root)
        # The cursor is a fingerprint of the listing: cheap to store, and any new or changed file moves it.
        digest = hashlib.sha1()
        for f in files:
            digest.update(f"{f.path}\0{f.size}\0{f.mtime_ns}\n".encode())
        fingerprint = {"files": len(files), "digest": digest.hexdigest()[:16]}
        previous = json.loads(context.cursor) if context.cursor else None
        if not files:
            return dg.SkipReason(f"no files under {root}")
        if fingerprint == previous:
            return dg.SkipReason(f"no new files among {len(files)}")
        return dg.SensorResult(
            run_requests=[
                dg.RunRequest(
                    run_key=f"{feed.name}:{fingerprint['files']}:{fingerprint['digest']}",
                    tags={"lakerelay/feed": feed.name},
                )
            ],
            cursor=json.dumps(fingerprint),
        )

    return landing_sensor
