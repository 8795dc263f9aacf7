"""Maintenance and export cleanup run on schedules: crons and status from the environment, one job
each for every feed and dataset, and those jobs run on a real instance."""

import dataclasses
from pathlib import Path

import dagster as dg
import pytest

from pipelines.definitions import build_defs
from pipelines.feeds import EVENTS_FEED
from resources.export_storage import LocalExportStorage
from resources.lake import LakeResource

FEEDS = [EVENTS_FEED, dataclasses.replace(EVENTS_FEED, name="audit", source="audit")]


def housekeeping_defs(tmp_path: Path) -> dg.Definitions:
    return build_defs(
        {
            "lake": LakeResource(lake_uri=str(tmp_path / "lake"), landing_uri=str(tmp_path / "landing")),
            "export_storage": LocalExportStorage(root=str(tmp_path / "exports")),
        },
        FEEDS,
        routes=[],
    )


@pytest.mark.parametrize("running", [True, False])
def test_the_schedules_take_their_crons_and_status_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, running: bool
) -> None:
    monkeypatch.setenv("LAKERELAY_MAINTENANCE_CRON", "15 2 * * 0")
    monkeypatch.setenv("LAKERELAY_EXPORT_CLEANUP_CRON", "45 4 * * *")
    monkeypatch.setenv("LAKERELAY_SENSORS_RUNNING", "1" if running else "0")
    defs = housekeeping_defs(tmp_path)
    maintenance = defs.resolve_schedule_def("maintain_feeds_schedule")
    cleanup = defs.resolve_schedule_def("export_cleanup_schedule")
    assert (maintenance.cron_schedule, cleanup.cron_schedule) == ("15 2 * * 0", "45 4 * * *")
    assert maintenance.execution_timezone == cleanup.execution_timezone == "UTC"
    expected = dg.DefaultScheduleStatus.RUNNING if running else dg.DefaultScheduleStatus.STOPPED
    assert maintenance.default_status == cleanup.default_status == expected
    assert (maintenance.job_name, cleanup.job_name) == ("maintain_feeds", "export_cleanup")


def test_the_scheduled_jobs_maintain_every_feed_and_clean_every_dataset(tmp_path: Path) -> None:
    defs = housekeeping_defs(tmp_path)
    with dg.instance_for_test() as instance:
        for job_name in ("maintain_feeds", "export_cleanup"):
            result = defs.resolve_job_def(job_name).execute_in_process(instance=instance)
            assert result.success
        materialized = {
            key.to_user_string()
            for key in defs.resolve_asset_graph().get_all_asset_keys()
            if instance.get_latest_materialization_event(key) is not None
        }
    assert materialized == {
        "events_maintenance",
        "audit_maintenance",
        "events_export_cleanup",
        "audit_export_cleanup",
    }
