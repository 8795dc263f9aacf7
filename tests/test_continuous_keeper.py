"""The keeper sensor against a real Dagster instance with real runs (tiny jobs carrying the continuous
tags), its clock injected: one run alive, restarted with backoff after a failure or a kill, replaced on
a new code version."""

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
import pytest

from sensors.continuous import (
    CODE_VERSION_TAG,
    CONTINUOUS_TAG,
    REPLACED_TAG,
    build_keeper_sensor,
    write_heartbeat,
)

from helpers import local_lake

FEED = "events"


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as instance:
        yield instance


def tags(version: str, run_key: str = "") -> dict[str, str]:
    return {
        CONTINUOUS_TAG: FEED,
        CODE_VERSION_TAG: version,
        **({"dagster/run_key": run_key} if run_key else {}),
    }


def finished_run(instance: dg.DagsterInstance, version: str, fail: bool, run_key: str = "") -> dg.DagsterRun:
    @dg.op
    def relay() -> None:
        if fail:
            raise RuntimeError("crashed")

    @dg.job
    def continuous_events() -> None:
        relay()

    result = continuous_events.execute_in_process(
        instance=instance, tags=tags(version, run_key), raise_on_error=False
    )
    return result.dagster_run


@contextmanager
def running_run(instance: dg.DagsterInstance, version: str, run_key: str = "") -> Iterator[str]:
    """A STARTED run with the continuous tags that ends when it is asked to (status CANCELING) or at exit."""
    release = threading.Event()

    @dg.op
    def relay(context: dg.OpExecutionContext) -> None:
        while not release.wait(0.05):
            run = context.instance.get_run_by_id(context.run_id)
            if run.status == dg.DagsterRunStatus.CANCELING:
                return

    @dg.job
    def continuous_events() -> None:
        relay()

    thread = threading.Thread(
        target=lambda: continuous_events.execute_in_process(
            instance=instance, tags=tags(version, run_key), raise_on_error=False
        ),
        daemon=True,
    )
    thread.start()

    def started() -> dg.DagsterRun | None:
        runs = instance.get_runs(
            dg.RunsFilter(tags={CONTINUOUS_TAG: FEED}, statuses=[dg.DagsterRunStatus.STARTED])
        )
        return runs[0] if runs else None

    deadline = time.monotonic() + 60
    while started() is None:
        assert time.monotonic() < deadline, "the test run did not start"
        time.sleep(0.05)
    try:
        yield started().run_id
    finally:
        release.set()
        thread.join(60)


def tick(sensor: dg.SensorDefinition, instance: dg.DagsterInstance, lake, cursor: str | None):
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"lake": lake})
    result = sensor(context)
    if isinstance(result, dg.SkipReason):
        return [], cursor, result.skip_message
    skip = result.skip_reason.skip_message if result.skip_reason else ""
    return list(result.run_requests or []), result.cursor, skip


def test_requests_one_run_and_none_while_it_lives(tmp_path, instance):
    lake, clock = local_lake(tmp_path), Clock()
    sensor = build_keeper_sensor(FEED, "continuous_events", "v1", clock=clock)
    requests, cursor, _ = tick(sensor, instance, lake, None)
    assert len(requests) == 1 and requests[0].tags[CODE_VERSION_TAG] == "v1"
    with running_run(instance, "v1") as run_id:
        write_heartbeat(lake, FEED, run_id, clock.now)
        clock.now += 30
        requests, cursor, skip = tick(sensor, instance, lake, cursor)
        assert requests == [] and run_id in skip


def test_a_failed_run_is_replaced_after_a_growing_backoff(tmp_path, instance):
    lake, clock = local_lake(tmp_path), Clock()
    sensor = build_keeper_sensor(FEED, "continuous_events", "v1", backoff_first_s=15, clock=clock)
    requests, cursor, _ = tick(sensor, instance, lake, None)
    finished_run(instance, "v1", fail=True, run_key=requests[0].run_key)
    clock.now = time.time() + 5
    requests, cursor, skip = tick(sensor, instance, lake, cursor)
    assert requests == [] and "restarting" in skip
    clock.now += 15
    requests, cursor, _ = tick(sensor, instance, lake, cursor)
    assert len(requests) == 1
    finished_run(instance, "v1", fail=True, run_key=requests[0].run_key)
    clock.now = time.time() + 20  # the second failure in a row waits 30 s
    requests, cursor, skip = tick(sensor, instance, lake, cursor)
    assert requests == [] and "restarting" in skip
    clock.now += 15
    assert len(tick(sensor, instance, lake, cursor)[0]) == 1


def test_a_run_without_heartbeat_is_marked_failed_and_replaced(tmp_path, instance):
    lake, clock = local_lake(tmp_path), Clock()
    sensor = build_keeper_sensor(
        FEED, "continuous_events", "v1", backoff_first_s=15, stale_after_s=90, clock=clock
    )
    with running_run(instance, "v1") as run_id:
        write_heartbeat(lake, FEED, run_id, time.time())
        clock.now = time.time() + 60
        requests, cursor, skip = tick(sensor, instance, lake, None)
        assert requests == [] and run_id in skip
        clock.now += 60  # no beat for 120 s: the process is gone (a SIGKILL leaves the run STARTED)
        requests, cursor, skip = tick(sensor, instance, lake, cursor)
        assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.FAILURE
        assert requests == [] and "restarting" in skip
        clock.now += 15
        requests, cursor, _ = tick(sensor, instance, lake, cursor)
        assert len(requests) == 1


def test_a_new_code_version_terminates_the_run_then_replaces_it_at_once(tmp_path, instance):
    lake, clock = local_lake(tmp_path), Clock()
    sensor = build_keeper_sensor(FEED, "continuous_events", "v2", clock=clock)
    with running_run(instance, "v1") as run_id:
        write_heartbeat(lake, FEED, run_id, clock.now)
        requests, cursor, skip = tick(sensor, instance, lake, None)
        assert requests == [] and "terminating" in skip
        assert instance.get_run_by_id(run_id).tags[REPLACED_TAG] == "v2"
        deadline = time.monotonic() + 60
        while not instance.get_run_by_id(run_id).is_finished:  # it stops on its own, as the op does
            assert time.monotonic() < deadline, "the replaced run did not stop"
            time.sleep(0.05)
    requests, cursor, _ = tick(sensor, instance, lake, cursor)
    assert len(requests) == 1 and requests[0].tags[CODE_VERSION_TAG] == "v2"


def test_a_run_that_lived_longer_than_the_longest_backoff_starts_the_failure_count_anew(tmp_path, instance):
    lake, clock = local_lake(tmp_path), Clock()
    sensor = build_keeper_sensor(
        FEED, "continuous_events", "v1", backoff_first_s=15, backoff_max_s=900, clock=clock
    )
    requests, cursor, _ = tick(sensor, instance, lake, None)
    for _ in range(3):  # three crashes in a row: the next wait would be 60 s
        finished_run(instance, "v1", fail=True, run_key=requests[0].run_key)
        clock.now = time.time() + 3600
        requests, cursor, _ = tick(sensor, instance, lake, cursor)
        assert len(requests) == 1
    with running_run(instance, "v1", run_key=requests[0].run_key) as run_id:
        write_heartbeat(lake, FEED, run_id, time.time())
        clock.now = time.time() + 60
        requests, cursor, _ = tick(sensor, instance, lake, cursor)
        assert requests == [] and json.loads(cursor)["failures"] == 3  # alive for a minute: still counted
        clock.now = time.time() + 901
        write_heartbeat(lake, FEED, run_id, clock.now)
        requests, cursor, _ = tick(sensor, instance, lake, cursor)
        assert requests == [] and json.loads(cursor)["failures"] == 0
        instance.report_run_failed(instance.get_run_by_id(run_id), "crashed after 15 minutes")
        clock.now = time.time() + 16  # the first backoff again (15 s), not the fourth (120 s)
        requests, cursor, _ = tick(sensor, instance, lake, cursor)
        assert len(requests) == 1
