"""Sensors on the real Dagster daemon: files land, and the records reach both sinks with no one launching a run."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter
from dagster._core.instance.ref import InstanceRef

from helpers import dagster_cli_env, delta_table, land_events, local_lake

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parent.parent
UNFINISHED = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
]


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def test_sensors_on_the_daemon_move_new_files_to_both_sinks(tmp_path: Path, sink_server) -> None:
    lake = local_lake(tmp_path)
    env = dagster_cli_env(
        tmp_path, sink_server.url, LAKERELAY_SENSORS_RUNNING="1", LAKERELAY_SENSOR_INTERVAL_S="2"
    )
    dagster_home = Path(env["DAGSTER_HOME"])
    log = (tmp_path / "daemon.log").open("wb")
    daemon = subprocess.Popen(
        [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", "workspace.yaml"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        first = land_events(lake, files=3, records_per_file=200)
        wait_for(
            lambda: sink_server.es_count("events") == first and sink_server.hec_count("main") == first,
            240,
            "first files in both sinks",
        )

        second = land_events(lake, files=2, records_per_file=200, start_seq=first)
        total = first + second
        wait_for(
            lambda: sink_server.es_count("events") == total and sink_server.hec_count("main") == total,
            240,
            "new files in both sinks",
        )
        # A run saves its progress after its last post: let every run finish before stopping the daemon.
        with DagsterInstance.from_ref(InstanceRef.from_dir(str(dagster_home))) as instance:
            wait_for(
                lambda: not instance.get_runs(RunsFilter(statuses=UNFINISHED)), 120, "the runs to finish"
            )
    finally:
        # The daemon and the run workers it started share its session: stop them all.
        try:
            os.killpg(daemon.pid, signal.SIGTERM)
            daemon.wait(timeout=20)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait()
        log.close()

    assert delta_table(lake).num_rows == total
    assert len(set(sink_server.es_ids("events"))) == total
    with DagsterInstance.from_ref(InstanceRef.from_dir(str(dagster_home))) as instance:
        runs = instance.get_runs()
        assert runs
        assert [(r.job_name, r.status) for r in runs if r.status != DagsterRunStatus.SUCCESS] == []
        assert {r.job_name for r in runs} == {
            "ingest_events",
            "post_events_to_elasticsearch",
            "post_events_to_splunk",
        }
        assert all(r.tags.get("dagster/sensor_name") for r in runs)
