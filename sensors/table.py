"""The table sensor: requests a post run when a feed's Delta table is past a sink's settled version."""

import dagster as dg
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from pipelines.feeds import FeedSpec
from pipelines.post.progress import read_progress
from resources.lake import LakeResource


def build_table_sensor(
    feed: FeedSpec,
    sink_key: str,
    sink_name: str,
    job: dg.JobDefinition,
    minimum_interval_seconds: int = 30,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.STOPPED,
) -> dg.SensorDefinition:
    @dg.sensor(
        name=f"{feed.name}_to_{sink_key}_sensor",
        job=job,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        description=f"Requests job {job.name} when table {feed.table_name!r} has commits sink {sink_name!r} has not settled.",
    )
    def table_sensor(
        context: dg.SensorEvaluationContext, lake: LakeResource
    ) -> dg.SensorResult | dg.SkipReason:
        try:
            version = DeltaTable(
                lake.table_uri(feed.table_name), storage_options=lake.storage_options()
            ).version()
        except TableNotFoundError:
            return dg.SkipReason(f"table {feed.table_name} does not exist yet")
        settled = read_progress(lake, sink_name, feed.table_name).delta_version
        requested = int(context.cursor) if context.cursor else -1
        if version <= settled:
            return dg.SkipReason(f"sink {sink_name} has settled version {version}")
        if version <= requested:
            return dg.SkipReason(f"a run for version {requested} was already requested")
        return dg.SensorResult(
            run_requests=[
                dg.RunRequest(
                    run_key=f"{sink_key}:{feed.name}:v{version}",
                    tags={"lakerelay/delta_version": str(version)},
                )
            ],
            cursor=str(version),
        )

    return table_sensor
