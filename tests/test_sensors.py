"""Sensors evaluated the way the daemon does, with build_sensor_context, over real files and tables."""

from pathlib import Path

import dagster as dg

from pipelines.feeds import EVENTS_FEED
from pipelines.ingest.runner import ingest_feed
from pipelines.post.progress import write_progress
from sensors.landing import build_landing_sensor
from sensors.table import build_table_sensor

from helpers import land_events, local_lake


@dg.job
def dummy_job() -> None:
    pass


def test_landing_sensor_requests_one_run_per_change_of_the_landing_zone(tmp_path: Path) -> None:
    lake = local_lake(tmp_path)
    sensor = build_landing_sensor(EVENTS_FEED, dummy_job)

    empty = sensor(dg.build_sensor_context(resources={"lake": lake}))
    assert isinstance(empty, dg.SkipReason)

    land_events(lake, files=2, records_per_file=10)
    first = sensor(dg.build_sensor_context(resources={"lake": lake}))
    assert len(first.run_requests) == 1

    again = sensor(dg.build_sensor_context(cursor=first.cursor, resources={"lake": lake}))
    assert isinstance(again, dg.SkipReason)

    land_events(lake, files=1, records_per_file=10, start_seq=20)
    after_new_file = sensor(dg.build_sensor_context(cursor=first.cursor, resources={"lake": lake}))
    assert len(after_new_file.run_requests) == 1
    assert after_new_file.run_requests[0].run_key != first.run_requests[0].run_key


def test_table_sensor_requests_a_post_run_until_the_sink_settles_the_version(tmp_path: Path) -> None:
    lake = local_lake(tmp_path)
    sensor = build_table_sensor(EVENTS_FEED, "elasticsearch", "elasticsearch", dummy_job)

    assert isinstance(sensor(dg.build_sensor_context(resources={"lake": lake})), dg.SkipReason)

    land_events(lake, files=2, records_per_file=10)
    ingest_feed(EVENTS_FEED, lake)
    requested = sensor(dg.build_sensor_context(resources={"lake": lake}))
    assert [r.run_key for r in requested.run_requests] == ["elasticsearch:events:v0"]

    # Already requested: no second run for the same version while the first is under way.
    assert isinstance(
        sensor(dg.build_sensor_context(cursor=requested.cursor, resources={"lake": lake})), dg.SkipReason
    )

    write_progress(lake, "elasticsearch", "events", delta_version=0, batch_id=1)
    settled = sensor(dg.build_sensor_context(resources={"lake": lake}))
    assert isinstance(settled, dg.SkipReason)
    assert "settled" in settled.skip_message
