"""Sensors on the real Dagster daemon: files land, and the records reach both sinks with no one launching a run."""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter
from deltalake import DeltaTable

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


@contextmanager
def running_daemon(env: dict[str, str], log_path: Path) -> Iterator[subprocess.Popen]:
    """``dagster-daemon run`` over the workspace, stopped with every run worker it started."""
    with log_path.open("wb") as log:
        daemon = subprocess.Popen(
            [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", "workspace.yaml"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield daemon
        finally:
            # The daemon and the run workers it started share its session: stop them all.
            try:
                os.killpg(daemon.pid, signal.SIGTERM)
                daemon.wait(timeout=20)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                os.killpg(daemon.pid, signal.SIGKILL)
                daemon.wait()


def test_sensors_on_the_daemon_move_new_files_to_both_sinks(
    tmp_path: Path, sink_server, spark_connect_url: str
) -> None:
    lake = local_lake(tmp_path)
    env = dagster_cli_env(
        tmp_path,
        sink_server.url,
        LAKERELAY_SENSORS_RUNNING="1",
        LAKERELAY_SENSOR_INTERVAL_S="1",
        LAKERELAY_SPARK_REMOTE=spark_connect_url,  # the always-on mode: a long-lived Spark
    )
    dagster_home = Path(env["DAGSTER_HOME"])
    with running_daemon(env, tmp_path / "daemon.log"):
        first = land_events(lake, files=3, records_per_file=200)
        wait_for(
            lambda: sink_server.es_count("events") == first and sink_server.hec_count("main") == first,
            240,
            "first files in both sinks",
        )

        # Files landing one after another, while runs are under way.
        second = 0
        for n in range(4):
            second += land_events(lake, files=1, records_per_file=200, start_seq=first + second, seed=11 + n)
            time.sleep(2)
        total = first + second
        wait_for(
            lambda: sink_server.es_count("events") == total and sink_server.hec_count("main") == total,
            240,
            "new files in both sinks",
        )
        # A run saves its progress after its last post: let every run finish before stopping the daemon.
        with DagsterInstance.from_config(str(dagster_home)) as instance:
            wait_for(
                lambda: not instance.get_runs(RunsFilter(statuses=UNFINISHED)), 120, "the runs to finish"
            )

    assert delta_table(lake).num_rows == total
    assert len(set(sink_server.es_ids("events"))) == total
    with DagsterInstance.from_config(str(dagster_home)) as instance:
        runs = instance.get_runs()
        assert runs
        assert [(r.job_name, r.status) for r in runs if r.status != DagsterRunStatus.SUCCESS] == []
        # Files land -> one relay run ingests and posts; the table sensors only catch up what it left.
        assert "relay_events" in {r.job_name for r in runs}
        assert {r.job_name for r in runs} <= {
            "relay_events",
            "post_events_to_elasticsearch",
            "post_events_to_splunk",
        }
        assert all(r.tags.get("dagster/sensor_name") for r in runs)


def test_a_sink_that_was_down_while_files_landed_gets_every_record_once_with_no_one_acting(
    tmp_path: Path, sink_server
) -> None:
    lake = local_lake(tmp_path)
    env = dagster_cli_env(
        tmp_path,
        sink_server.url,
        LAKERELAY_SENSORS_RUNNING="1",
        LAKERELAY_SENSOR_INTERVAL_S="2",
        LAKERELAY_SINK_DELIVERY_TIMEOUT_S="2",
        LAKERELAY_RETRY_BACKOFF_S="2",
        LAKERELAY_RETRY_BACKOFF_MAX_S="4",
    )
    dagster_home = Path(env["DAGSTER_HOME"])
    # Down: every write is answered 503 (nothing stored), health checks still answer.
    sink_server.set_faults({"request_503_rate": 1.0})
    with (
        running_daemon(env, tmp_path / "daemon.log"),
        DagsterInstance.from_config(str(dagster_home)) as instance,
    ):
        total = land_events(lake, files=2, records_per_file=200)
        wait_for(
            lambda: instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.FAILURE])), 240, "a failed post"
        )
        assert sink_server.es_count("events") == 0 and sink_server.hec_count("main") == 0
        sink_server.set_faults({})  # back; no new file lands and nobody launches a run
        wait_for(
            lambda: sink_server.es_count("events") == total and sink_server.hec_count("main") == total,
            300,
            "every record in both sinks after the outage",
        )
        wait_for(lambda: not instance.get_runs(RunsFilter(statuses=UNFINISHED)), 120, "the runs to finish")
        runs = instance.get_runs()

    ids = sink_server.es_ids("events")
    assert len(ids) == len(set(ids)) == total
    events = sink_server.hec_events("main")
    assert len(events) == len({e["event"]["event_id"] for e in events}) == total  # HEC too: once each
    failed = [r for r in runs if r.status == DagsterRunStatus.FAILURE]
    healed = [r for r in runs if r.status == DagsterRunStatus.SUCCESS and r.job_name.startswith("post_")]
    assert failed and {r.job_name for r in healed} == {
        "post_events_to_elasticsearch",
        "post_events_to_splunk",
    }
    # Requested again for the version the failed relay run had ingested: no new data was needed.
    version = DeltaTable(lake.table_uri("events"), storage_options=lake.storage_options()).version()
    assert {r.tags["lakerelay/delta_version"] for r in healed} == {str(version)}
