"""The landing sensor on the real Dagster daemon: a relay run that failed before it took its files is
requested again with backoff, with no new file landing and no one acting."""

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter
from deltalake.exceptions import TableNotFoundError
from test_daemon import UNFINISHED, wait_for

from resources.lake import LakeResource

from helpers import dagster_cli_env, delta_table, land_events, local_lake

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parent.parent
CODE_LOCATION = Path(__file__).resolve().parent / "daemon_flaky_relay.py"


@contextmanager
def daemon_over(code_location: Path, env: dict[str, str], log_path: Path) -> Iterator[None]:
    """``dagster-daemon run`` over one Python file, stopped with every run worker it started."""
    with log_path.open("wb") as log:
        daemon = subprocess.Popen(
            [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-f", str(code_location)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield
        finally:
            try:  # the daemon and its run workers share its session
                os.killpg(daemon.pid, signal.SIGTERM)
                daemon.wait(timeout=20)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                os.killpg(daemon.pid, signal.SIGKILL)
                daemon.wait()


def test_the_daemon_requests_a_failed_relay_run_again_without_new_files(tmp_path: Path) -> None:
    lake = local_lake(tmp_path)
    total = land_events(lake, files=3, records_per_file=50)  # nothing lands after this
    env = dagster_cli_env(tmp_path, "http://127.0.0.1:9")  # no sink: the job only ingests
    dagster_home = Path(env["DAGSTER_HOME"])
    with (
        daemon_over(CODE_LOCATION, env, tmp_path / "daemon.log"),
        DagsterInstance.from_config(str(dagster_home)) as instance,
    ):
        wait_for(lambda: rows_in(lake) == total, 240, "every landed record in the table")
        wait_for(lambda: not instance.get_runs(RunsFilter(statuses=UNFINISHED)), 120, "the runs to finish")
        runs = sorted(instance.get_runs(), key=lambda r: r.tags["dagster/run_key"])

    first, *retries = runs
    assert first.status == DagsterRunStatus.FAILURE and retries
    # Nothing landed after the first request: every later run is a retry of it, the last one good.
    assert all(
        r.tags["dagster/run_key"].startswith(first.tags["dagster/run_key"] + ":retry") for r in retries
    )
    assert retries[-1].status == DagsterRunStatus.SUCCESS
    assert retries[0].tags["dagster/run_key"].endswith(":retry1")


def rows_in(lake: LakeResource) -> int:
    try:
        return delta_table(lake).num_rows
    except TableNotFoundError:  # the first good run has not committed yet
        return 0
