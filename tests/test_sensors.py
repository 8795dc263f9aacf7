"""Sensors evaluated the way the daemon does, with build_sensor_context, over real files and tables."""

import time
from pathlib import Path

import dagster as dg

from pipelines.feeds import EVENTS_FEED, FeedSpec
from pipelines.ingest.discovery import files_waiting
from pipelines.ingest.runner import ingest_feed
from pipelines.post.defs import table_sensor
from pipelines.post.progress import write_progress
from pipelines.relay import landing_sensor
from sensors.table import NEEDS_FIX_TAG

from helpers import json_lines, land_events, land_file, local_lake


@dg.job
def dummy_job() -> None:
    pass


def test_landing_sensor_requests_one_run_per_change_of_the_landing_zone(tmp_path: Path) -> None:
    lake = local_lake(tmp_path)
    sensor = landing_sensor(EVENTS_FEED, dummy_job.name)
    instance = dg.DagsterInstance.ephemeral()

    empty = sensor(dg.build_sensor_context(resources={"lake": lake}, instance=instance))
    assert isinstance(empty, dg.SkipReason)

    land_events(lake, files=2, records_per_file=10)
    first = sensor(dg.build_sensor_context(resources={"lake": lake}, instance=instance))
    assert len(first.run_requests) == 1

    again = sensor(dg.build_sensor_context(cursor=first.cursor, resources={"lake": lake}, instance=instance))
    assert isinstance(again, dg.SkipReason)

    land_events(lake, files=1, records_per_file=10, start_seq=20)
    after_new_file = sensor(
        dg.build_sensor_context(cursor=first.cursor, resources={"lake": lake}, instance=instance)
    )
    assert len(after_new_file.run_requests) == 1
    assert after_new_file.run_requests[0].run_key != first.run_requests[0].run_key

    # A relay run of the feed waiting to start lists the landing zone when it starts: no second run.
    instance.create_run_for_job(dummy_job, tags={"lakerelay/relay": "events"})
    land_events(lake, files=1, records_per_file=10, start_seq=30)
    waiting = sensor(
        dg.build_sensor_context(cursor=after_new_file.cursor, resources={"lake": lake}, instance=instance)
    )
    assert isinstance(waiting, dg.SkipReason) and "about to start" in waiting.skip_message


def test_table_sensor_requests_a_post_run_until_the_sink_settles_the_version(tmp_path: Path) -> None:
    lake = local_lake(tmp_path)
    sensor = table_sensor(EVENTS_FEED, "elasticsearch", "elasticsearch", dummy_job.name)
    with dg.DagsterInstance.ephemeral() as instance:

        def tick(cursor: str | None = None):
            return sensor(dg.build_sensor_context(cursor=cursor, resources={"lake": lake}, instance=instance))

        assert isinstance(tick(), dg.SkipReason)

        land_events(lake, files=2, records_per_file=10)
        ingest_feed(EVENTS_FEED, lake)
        requested = tick()
        assert [r.run_key for r in requested.run_requests] == ["elasticsearch:events:v0"]

        # Already requested: no second run for the same version while the first is under way.
        assert isinstance(tick(requested.cursor), dg.SkipReason)

        write_progress(lake, "elasticsearch", "events", delta_version=0, batch_id=1)
        settled = tick()
        assert isinstance(settled, dg.SkipReason)
        assert "settled" in settled.skip_message


@dg.op
def failing_post() -> None:
    raise dg.Failure("the sink is down")


@dg.job(tags={"lakerelay/feed": "events", "lakerelay/sink": "elasticsearch"})
def failing_post_job() -> None:
    failing_post()


def test_a_failed_post_is_requested_again_with_backoff_without_new_data(tmp_path: Path) -> None:
    lake = local_lake(tmp_path)
    land_events(lake, files=1, records_per_file=10)
    ingest_feed(EVENTS_FEED, lake)
    sensor = table_sensor(
        EVENTS_FEED, "elasticsearch", "es", failing_post_job.name, backoff_first_s=0.5, backoff_max_s=2.0
    )
    with dg.DagsterInstance.ephemeral() as instance:

        def tick(cursor: str | None):
            return sensor(dg.build_sensor_context(cursor=cursor, resources={"lake": lake}, instance=instance))

        def run(
            request: dg.RunRequest,
        ) -> None:  # a real run of the requested job, failing as a down sink does
            failing_post_job.execute_in_process(
                instance=instance,
                tags={**request.tags, "dagster/run_key": request.run_key},
                raise_on_error=False,
            )

        first = tick(None)
        [request] = first.run_requests
        run(request)
        waiting = tick(first.cursor)  # failed: back off before asking again
        assert not waiting.run_requests and "after 1 unsuccessful run" in waiting.skip_reason.skip_message
        time.sleep(0.6)
        second = tick(waiting.cursor)
        assert [r.run_key for r in second.run_requests] == ["elasticsearch:events:v0:retry1"]
        run(second.run_requests[0])
        backing_off = tick(second.cursor)
        assert "in 1s after 2 unsuccessful" in backing_off.skip_reason.skip_message  # 0.5 s doubled

        # A run that only a person can fix (tagged by the post op) waits the longest backoff.
        time.sleep(1.1)
        third = tick(backing_off.cursor)
        [request] = third.run_requests
        failing_post_job.execute_in_process(
            instance=instance,
            tags={
                **request.tags,
                "dagster/run_key": request.run_key,
                NEEDS_FIX_TAG: "HTTP 401 from the sink",
            },
            raise_on_error=False,
        )
        patient = tick(third.cursor)
        assert "in 2s after 3 unsuccessful" in patient.skip_reason.skip_message

        # Once the sink settles the version, the failures are forgotten.
        write_progress(lake, "es", "events", delta_version=0, batch_id=1)
        healed = tick(patient.cursor)
        assert not healed.run_requests and '"failures": 0' in healed.cursor


def test_no_post_is_requested_while_one_is_in_flight(tmp_path: Path) -> None:
    lake = local_lake(tmp_path)
    land_events(lake, files=1, records_per_file=10)
    ingest_feed(EVENTS_FEED, lake)
    sensor = table_sensor(EVENTS_FEED, "elasticsearch", "es", failing_post_job.name)
    with dg.DagsterInstance.ephemeral() as instance:
        # A run of this sink and feed that has not finished (created, not started: e.g. from the UI).
        queued = instance.create_run_for_job(
            failing_post_job, tags={"lakerelay/feed": "events", "lakerelay/sink": "elasticsearch"}
        )
        result = sensor(dg.build_sensor_context(resources={"lake": lake}, instance=instance))
        assert isinstance(result, dg.SkipReason) and queued.run_id in result.skip_message


def test_the_landing_sensor_counts_the_files_the_ingest_takes_through_its_filter(tmp_path: Path) -> None:
    lake = local_lake(tmp_path)
    feed = FeedSpec(name="f", source="f", path_glob="*.json")
    land_file(lake, "f", "a.csv", b"id\n1\n")  # outside the feed's glob
    land_file(lake, "f", "_staging.json", json_lines({"id": 0}))  # a writer's temporary name
    sensor = landing_sensor(feed, "relay_f")
    instance = dg.DagsterInstance.ephemeral()

    assert isinstance(
        sensor(dg.build_sensor_context(resources={"lake": lake}, instance=instance)), dg.SkipReason
    )
    taken = land_file(lake, "f", "b.json", json_lines({"id": 1}))
    [request] = sensor(dg.build_sensor_context(resources={"lake": lake}, instance=instance)).run_requests

    assert request.run_key == f"f::{taken}:1"
    assert ingest_feed(feed, lake).files == 1  # the file the sensor counted, and only it
    assert files_waiting(lake, feed).count == 0
