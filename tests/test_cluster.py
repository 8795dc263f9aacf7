"""The post job on a real cluster whose executors' Python has only the third-party packages, not lakerelay.

A standalone master + worker on 127.0.0.1 (`spark_cluster`, its own work dir) and a lake on S3
(moto): the run goes through `dagster job execute` as CI would, with the cluster, the executors'
Python and the lake set by environment alone. The executors import lakerelay from the zip the run
ships; a worker Python that lacks a package fails the run with that package's name.
"""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus
from test_post_job import write_feed_batch

from lakerelay.devtools.spark_standalone import StandaloneCluster

from fixtures_s3 import S3Settings
from helpers import dagster_cli_env, s3_lake

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parent.parent
DAGSTER = str(Path(sys.executable).parent / "dagster")
JOB = "post_events_to_elasticsearch"
RECORDS = 20_000


def cluster_env(tmp_path: Path, sink_url: str, s3: S3Settings, cluster: StandaloneCluster, python: Path):
    """What a user sets to point lakerelay at a cluster and an S3 lake: environment only."""
    return dagster_cli_env(
        tmp_path,
        sink_url,
        LAKERELAY_LAKE_URI=f"s3://{s3.bucket}/lake",
        LAKERELAY_LANDING_URI=f"s3://{s3.bucket}/landing",
        LAKERELAY_S3_ENDPOINT_URL=s3.endpoint_url,
        AWS_REGION=s3.region,
        AWS_ACCESS_KEY_ID=s3.access_key,
        AWS_SECRET_ACCESS_KEY=s3.secret_key,
        LAKERELAY_SPARK_MASTER=cluster.master_url,
        LAKERELAY_SPARK_EXECUTOR_PYTHON=str(python),
        LAKERELAY_SPARK_CONF=json.dumps(
            {"spark.executor.memory": "1g", "spark.cores.max": str(cluster.cores)}
        ),
        SPARK_LOCAL_IP="127.0.0.1",  # the driver listens on loopback, where the executors reach it
    )


def execute(env: dict[str, str], *config: str) -> tuple[subprocess.CompletedProcess, float]:
    started = time.perf_counter()
    result = subprocess.run(
        [DAGSTER, "job", "execute", "-m", "pipelines.definitions", "-j", JOB, *config],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return result, time.perf_counter() - started


def failure_descriptions(dagster_home: Path) -> list[str]:
    with DagsterInstance.from_config(str(dagster_home)) as instance:
        [run] = instance.get_runs(limit=1)
        assert run.status == DagsterRunStatus.FAILURE
        events = instance.all_logs(run.run_id, of_type=DagsterEventType.STEP_FAILURE)
        return [event.dagster_event.step_failure_data.error.message for event in events]


def test_post_on_a_standalone_cluster_without_lakerelay_on_the_workers(
    tmp_path: Path,
    sink_server,
    s3_settings: S3Settings,
    spark_cluster: StandaloneCluster,
    worker_python: Path,
) -> None:
    write_feed_batch(s3_lake(s3_settings), 1, RECORDS)
    env = cluster_env(tmp_path, sink_server.url, s3_settings, spark_cluster, worker_python)
    assert subprocess.run([str(worker_python), "-c", "import pipelines"], cwd=tmp_path).returncode != 0

    result, elapsed = execute(env)
    print(f"\npost of {RECORDS:,} records on the standalone cluster via dagster job execute: {elapsed:.1f}s")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert sink_server.es_count("events") == RECORDS
    assert len(set(sink_server.es_ids("events"))) == RECORDS
    logs = result.stdout + result.stderr
    assert "executors checked" in logs and str(worker_python) in logs
    # The tasks ran in the worker's executors, in the cluster's own work dir, on the shipped zip.
    [app] = [p for p in spark_cluster.work_dir.iterdir() if p.name.startswith("app-")][-1:]
    assert list(app.rglob("lakerelay_code_*.zip"))

    again, _ = execute(env)  # nothing new: a second run posts nothing and still succeeds
    assert again.returncode == 0, again.stderr[-3000:]
    assert sink_server.es_count("events") == RECORDS


def test_a_worker_python_without_a_package_fails_with_its_name_and_posts_nothing(
    tmp_path: Path,
    sink_server,
    s3_settings: S3Settings,
    spark_cluster: StandaloneCluster,
    worker_python_without_orjson: Path,
) -> None:
    write_feed_batch(s3_lake(s3_settings), 1, 2_000)
    env = cluster_env(tmp_path, sink_server.url, s3_settings, spark_cluster, worker_python_without_orjson)

    checked, elapsed = execute(env)
    print(f"\nrun refused by the executors' check: {elapsed:.1f}s")
    assert checked.returncode != 0
    [description] = failure_descriptions(Path(env["DAGSTER_HOME"]))
    assert "No module named 'orjson'" in description, description
    assert str(worker_python_without_orjson) in description
    assert "deploy/executor-requirements.txt" in description and "Nothing was posted" in description

    # Without the check, the executors' own error is the run's failure, not "see the executor log".
    run_config = tmp_path / "unchecked.yaml"
    run_config.write_text(
        json.dumps({"ops": {"sinks__events_in_elasticsearch": {"config": {"check_executors": False}}}})
    )
    unchecked, elapsed = execute(env, "-c", str(run_config))
    print(f"run failing in the executors: {elapsed:.1f}s")
    assert unchecked.returncode != 0 and "RUN_FAILURE" in unchecked.stdout + unchecked.stderr, (
        unchecked.stderr
    )
    description = failure_descriptions(Path(env["DAGSTER_HOME"]))[-1]
    assert "failed in Spark: ModuleNotFoundError: No module named 'orjson'" in description, description
    assert not sink_server.es_count("events")
