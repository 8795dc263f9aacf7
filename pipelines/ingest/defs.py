"""Ingestion's share of the Definitions: per feed, the ingest asset and its job; for all feeds, the
maintenance assets with one job and daily schedule. (The landing sensor starts the relay job: pipelines/relay.py.)"""

import dagster as dg

from pipelines import deployment
from pipelines.feeds import FeedSpec
from pipelines.ingest.asset import build_ingest_asset
from pipelines.ingest.maintenance import build_maintenance_asset, maintenance_asset_key
from pipelines.run_defaults import INFO_LOGS
from resources.run_tags import FEED_TAG

SHARED_INGEST_JOB = "ingest_feeds"


def ingest_defs(
    feeds: list[FeedSpec],
    sensor_status: dg.DefaultSensorStatus,
    sensor_interval_s: int,
    layout: str = "per_route",
) -> dg.Definitions:
    """``layout`` ``per_route``: an ``ingest_<feed>`` job per feed; ``shared``: one ``ingest_feeds`` job
    for all (a run selects the feeds it ingests; by hand: ``dg launch --assets <feed>``)."""
    per_feed = [(f"ingest_{feed.name}", [feed], {FEED_TAG: feed.name}) for feed in feeds]
    shared = [(SHARED_INGEST_JOB, feeds, {})] if feeds else []
    jobs = {
        name: dg.define_asset_job(
            name,
            selection=dg.AssetSelection.assets(*(feed.name for feed in selected)),
            tags=tags,
            # One op per feed: running them in the run's process saves starting a step subprocess.
            executor_def=dg.in_process_executor,
            config=INFO_LOGS,
        )
        for name, selected, tags in (shared if layout == "shared" else per_feed)
    }
    # One maintenance job and schedule for every feed: their cost does not grow with the feeds. A
    # schedule, not AutomationCondition.on_cron: its sensor would evaluate every maintenance asset each
    # 30 s tick (daemon CPU growing with the feeds), on_cron waits for an ingest after the cron tick (a
    # vacuum is due without one), and its runs are not this job (no INFO_LOGS).
    maintenance_jobs = [
        dg.define_asset_job(
            "maintain_feeds",
            selection=dg.AssetSelection.assets(*(maintenance_asset_key(f) for f in feeds)),
            config=INFO_LOGS,
        )
    ]
    schedule_status = (
        dg.DefaultScheduleStatus.RUNNING
        if sensor_status == dg.DefaultSensorStatus.RUNNING
        else dg.DefaultScheduleStatus.STOPPED
    )
    return dg.Definitions(
        assets=[build_ingest_asset(feed) for feed in feeds] + [build_maintenance_asset(feeds)],
        jobs=list(jobs.values()) + maintenance_jobs,
        schedules=[
            dg.ScheduleDefinition(
                name=f"{job.name}_schedule",
                job=job,
                cron_schedule=deployment.maintenance_cron(),
                default_status=schedule_status,
                execution_timezone="UTC",
            )
            for job in maintenance_jobs
        ],
    )
