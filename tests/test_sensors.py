"""Sensors evaluated the way the daemon does, with build_sensor_context, over real files and tables."""

import json
import time
from functools import partial
from pathlib import Path

import dagster as dg

from pipelines.feeds import EVENTS_FEED, FeedSpec
from pipelines.ingest.discovery import files_waiting
from pipelines.ingest.runner import ingest_feed
from pipelines.post.defs import table_sensor
from pipelines.post.progress import write_progress
from pipelines.relay import landing_sensor
from pipelines.routes import RouteSpec
from resources.run_tags import NEEDS_FIX as NEEDS_FIX_TAG
from sensors.landing import NOT_STARTED_TIMEOUT_S, build_landing_sensor
from sensors.table import BACKOFF_FIRST_S, REQUEST_GRACE_S

from helpers import json_lines, land_events, land_file, local_lake


@dg.job
def dummy_job() -> None:
    pass


class FakeClock:
    """Epoch seconds that move only when a test says so (no sleeps); starts at the real time so that
    run records' creation times compare with it."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dg.op
def failing_ingest() -> None:
    raise dg.Failure("the landing zone is unreachable")


@dg.job(tags={"lakerelay/feed": "events", "lakerelay/relay": "events"})
def failing_relay_job() -> None:
    failing_ingest()


def run_as_requested(instance: dg.DagsterInstance, request: dg.RunRequest, job: dg.JobDefinition) -> None:
    """A real run of ``job`` carrying the request's run key and tags, as the daemon launches it."""
    job.execute_in_process(
        instance=instance, tags={**request.tags, "dagster/run_key": request.run_key}, raise_on_error=False
    )


def landing_sensor_with(clock: FakeClock, job_name: str) -> dg.SensorDefinition:
    return build_landing_sensor(
        EVENTS_FEED.name, job_name, partial(files_waiting, feed=EVENTS_FEED), clock=clock
    )


def test_landing_sensor_requests_one_run_per_change_of_the_landing_zone(tmp_path: Path) -> None:
    lake = local_lake(tmp_path)
    sensor = landing_sensor(EVENTS_FEED, dummy_job.name)
    instance = dg.DagsterInstance.ephemeral()

    def tick(cursor: str | None = None):
        return sensor(dg.build_sensor_context(cursor=cursor, resources={"lake": lake}, instance=instance))

    empty = tick()
    assert isinstance(empty, dg.SkipReason)

    land_events(lake, files=2, records_per_file=10)
    first = tick()
    assert len(first.run_requests) == 1
    assert isinstance(tick(first.cursor), dg.SkipReason)  # requested, the daemon is creating the run

    ingest_feed(EVENTS_FEED, lake)  # the run it requested takes the files
    run_as_requested(instance, first.run_requests[0], dummy_job)
    land_events(lake, files=1, records_per_file=10, start_seq=20)
    after_new_file = tick(first.cursor)
    assert len(after_new_file.run_requests) == 1
    assert after_new_file.run_requests[0].run_key != first.run_requests[0].run_key

    # A relay run of the feed waiting to start lists the landing zone when it starts: no second run.
    instance.create_run_for_job(
        dummy_job, tags={**after_new_file.run_requests[0].tags, "dagster/run_key": "x"}
    )
    land_events(lake, files=1, records_per_file=10, start_seq=30)
    waiting = tick(after_new_file.cursor)
    assert isinstance(waiting, dg.SkipReason)
    assert "requested" in waiting.skip_message or "about to start" in waiting.skip_message


def test_a_failed_or_canceled_ingest_is_requested_again_with_backoff_without_new_files(
    tmp_path: Path,
) -> None:
    lake = local_lake(tmp_path)
    land_events(lake, files=1, records_per_file=10)
    clock = FakeClock()
    sensor = landing_sensor_with(clock, failing_relay_job.name)
    with dg.DagsterInstance.ephemeral() as instance:

        def tick(cursor: str | None):
            return sensor(dg.build_sensor_context(cursor=cursor, resources={"lake": lake}, instance=instance))

        first = tick(None)
        [request] = first.run_requests
        run_as_requested(instance, request, failing_relay_job)
        backing_off = tick(first.cursor)  # failed, no file landed since: back off, then ask again
        assert not backing_off.run_requests
        assert f"in {BACKOFF_FIRST_S:.0f}s after 1 unsuccessful" in backing_off.skip_reason.skip_message
        clock.advance(BACKOFF_FIRST_S - 1)
        assert not tick(backing_off.cursor).run_requests
        clock.advance(1)
        second = tick(backing_off.cursor)
        [retry] = second.run_requests
        assert retry.run_key == f"{request.run_key}:retry1"

        # Canceled (from the UI, or by the run queue): the next wait is twice as long.
        canceled = instance.create_run_for_job(
            failing_relay_job, tags={**retry.tags, "dagster/run_key": retry.run_key}
        )
        instance.report_run_canceled(canceled)
        longer = tick(second.cursor)
        assert f"in {2 * BACKOFF_FIRST_S:.0f}s after 2 unsuccessful" in longer.skip_reason.skip_message

        # New files during the backoff wait for it too: the cause is probably still there.
        land_events(lake, files=1, records_per_file=10, start_seq=10)
        assert not tick(longer.cursor).run_requests
        clock.advance(2 * BACKOFF_FIRST_S)
        third = tick(longer.cursor)
        [request] = third.run_requests
        assert request.run_key.endswith(":retry2")

        # It succeeds and takes every file: nothing waits, the failures are forgotten.
        ingest_feed(EVENTS_FEED, lake)
        run_as_requested(instance, request, dummy_job)
        healed = tick(third.cursor)
        assert not healed.run_requests and '"failures": 0' in healed.cursor


def test_a_dropped_ingest_run_is_requested_again(tmp_path: Path) -> None:
    lake = local_lake(tmp_path)
    land_events(lake, files=1, records_per_file=10)
    clock = FakeClock()
    sensor = landing_sensor_with(clock, dummy_job.name)
    with dg.DagsterInstance.ephemeral() as instance:

        def tick(cursor: str | None):
            return sensor(dg.build_sensor_context(cursor=cursor, resources={"lake": lake}, instance=instance))

        # Requested, but the daemon never created the run (a code server too slow to answer).
        first = tick(None)
        clock.advance(REQUEST_GRACE_S - 1)
        assert "requested" in tick(first.cursor).skip_message
        clock.advance(2)
        lost = tick(first.cursor)
        assert "after 1 unsuccessful" in lost.skip_reason.skip_message
        clock.advance(BACKOFF_FIRST_S)
        second = tick(lost.cursor)
        [retry] = second.run_requests

        # Created and queued, then deleted before it started.
        queued = instance.create_run_for_job(dummy_job, tags={**retry.tags, "dagster/run_key": retry.run_key})
        assert "is taking these files" in tick(second.cursor).skip_message
        instance.delete_run(queued.run_id)
        clock.advance(REQUEST_GRACE_S)  # until then, a missing run may be one the daemon is creating
        deleted = tick(second.cursor)
        assert "after 2 unsuccessful" in deleted.skip_reason.skip_message
        clock.advance(2 * BACKOFF_FIRST_S)
        third = tick(deleted.cursor)
        [retry] = third.run_requests

        # Created and never started: nothing will ever move it, so it does not hold the files forever.
        instance.create_run_for_job(dummy_job, tags={**retry.tags, "dagster/run_key": retry.run_key})
        assert "is taking these files" in tick(third.cursor).skip_message
        clock.advance(NOT_STARTED_TIMEOUT_S + 1)
        stuck = tick(third.cursor)
        assert "after 3 unsuccessful" in stuck.skip_reason.skip_message
        clock.advance(4 * BACKOFF_FIRST_S)
        [last] = tick(stuck.cursor).run_requests
        assert last.run_key.endswith(":retry3")


def test_the_landing_sensor_reads_the_cursor_it_wrote_before_healing(tmp_path: Path) -> None:
    lake = local_lake(tmp_path)
    land_events(lake, files=1, records_per_file=10)
    clock = FakeClock()
    sensor = landing_sensor_with(clock, dummy_job.name)
    instance = dg.DagsterInstance.ephemeral()
    waiting = files_waiting(lake, EVENTS_FEED)
    old_cursor = f"events:{waiting.start_after}:{waiting.last_path}:{waiting.count}"  # a plain run key
    run_as_requested(instance, dg.RunRequest(run_key=old_cursor, tags={}), dummy_job)
    result = sensor(dg.build_sensor_context(cursor=old_cursor, resources={"lake": lake}, instance=instance))
    # The run of that key succeeded, yet its files still wait: asked again after a backoff.
    assert "after 1 unsuccessful" in result.skip_reason.skip_message
    assert json.loads(result.cursor)["run_key"] == old_cursor


def test_table_sensor_requests_a_post_run_until_the_sink_settles_the_version(tmp_path: Path) -> None:
    lake = local_lake(tmp_path)
    sensor = table_sensor(RouteSpec(EVENTS_FEED, "elasticsearch"), dummy_job.name)
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


@dg.job(tags={"lakerelay/feed": "events", "lakerelay/route": "es"})
def failing_post_job() -> None:
    failing_post()


def test_a_failed_post_is_requested_again_with_backoff_without_new_data(tmp_path: Path) -> None:
    lake = local_lake(tmp_path)
    land_events(lake, files=1, records_per_file=10)
    ingest_feed(EVENTS_FEED, lake)
    clock = FakeClock()
    sensor = table_sensor(
        RouteSpec(EVENTS_FEED, "elasticsearch", name="es"),
        failing_post_job.name,
        backoff_first_s=0.5,
        backoff_max_s=2.0,
        clock=clock,
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
        clock.advance(0.6)
        second = tick(waiting.cursor)
        assert [r.run_key for r in second.run_requests] == ["es:events:v0:retry1"]
        run(second.run_requests[0])
        backing_off = tick(second.cursor)
        assert "in 1s after 2 unsuccessful" in backing_off.skip_reason.skip_message  # 0.5 s doubled

        # A run that only a person can fix (tagged by the post op) waits the longest backoff.
        clock.advance(1.1)
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
    sensor = table_sensor(RouteSpec(EVENTS_FEED, "elasticsearch", name="es"), failing_post_job.name)
    with dg.DagsterInstance.ephemeral() as instance:
        # A run of this sink and feed that has not finished (created, not started: e.g. from the UI).
        queued = instance.create_run_for_job(
            failing_post_job, tags={"lakerelay/feed": "events", "lakerelay/route": "es"}
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


def test_cursors_read_as_a_person_reads_them_and_older_ones_still_parse() -> None:
    from sensors.fleet import fleet_cursor_text, read_fleet_cursor
    from sensors.table import TableSensorCursor

    cursor = TableSensorCursor(version=2, run_key="k:events:v2", failures=1, retry_at=1_765_000_000.25)
    text = fleet_cursor_text({"events/elasticsearch": cursor.dump()})
    assert '"retry_at": "2025-12-06T05:46:40.250000+00:00"' in text  # an instant, not an epoch
    assert '"events/elasticsearch": {' in text  # nested JSON, not an escaped string
    assert TableSensorCursor.parse(read_fleet_cursor(text)["events/elasticsearch"]) == cursor
    # Cursors written before: per-target strings holding epochs.
    older = '{"events/elasticsearch": "{\\"failures\\": 1, \\"requested_at\\": 0.0, \\"retry_at\\": 1765000000.25, \\"run_key\\": \\"k\\", \\"version\\": 2}"}'
    parsed = TableSensorCursor.parse(read_fleet_cursor(older)["events/elasticsearch"])
    assert (parsed.version, parsed.retry_at, parsed.requested_at) == (2, 1_765_000_000.25, 0.0)
