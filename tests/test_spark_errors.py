"""Failures diagnosed by cause, from the texts real failures raised: only what a person must fix is needs_fix."""

import json
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
from spark_error_texts import (
    CONNECT_SERVER_KILLED,
    CONNECT_SERVER_RESTARTED,
    CONNECT_SERVER_RESTARTED_MID_QUERY,
    DRIVER_PY4J_REFLECTION,
    DRIVER_REFUSED,
    DRIVER_SHUT_DOWN_DURING_COLLECT,
    DRIVER_STOPPED_CONTEXT,
    WORKER_DAEMON_EOF,
)
from test_executors import CLASSIC, CONNECT

from pipelines.post.failures import executor_check_failure, reported_failure, spark_failure
from pipelines.post.post_stage import TaskFailure
from resources.sinks.errors import SinkAuthError
from resources.sinks.resource import NEEDS_FIX
from resources.spark_errors import SparkFault, spark_fault

# pyspark's PYTHON_VERSION_MISMATCH as a worker raises it (no second minor version of Python here).
VERSION_MISMATCH = (
    "PythonException",
    """An exception was thrown from the Python worker:
Traceback (most recent call last):
  File "/x/pyspark.zip/pyspark/worker.py", line 2203, in main
    raise PySparkRuntimeError(
pyspark.errors.exceptions.base.PySparkRuntimeError: [PYTHON_VERSION_MISMATCH] Python in worker has different \
version: 3.10 than that in driver: 3.11, PySpark cannot run with different minor versions. Please check environment \
variables PYSPARK_PYTHON and PYSPARK_DRIVER_PYTHON are correctly set.""",
)


def raised(sample: tuple[str, str]) -> Exception:
    """An exception of the sample's type name (what pyspark raised) carrying its text."""
    kind, text = sample
    return type(kind, (Exception,), {})(text)


@pytest.mark.parametrize(
    ("sample", "fault"),
    [
        (("PythonException", CLASSIC), SparkFault.ENVIRONMENT),
        (("SparkConnectGrpcException", CONNECT), SparkFault.ENVIRONMENT),
        (VERSION_MISMATCH, SparkFault.ENVIRONMENT),
        (WORKER_DAEMON_EOF, SparkFault.WORKER_START),
        (DRIVER_SHUT_DOWN_DURING_COLLECT, SparkFault.DRIVER_GONE),
        (DRIVER_STOPPED_CONTEXT, SparkFault.DRIVER_GONE),
        (DRIVER_PY4J_REFLECTION, SparkFault.DRIVER_GONE),
        (DRIVER_REFUSED, SparkFault.DRIVER_GONE),
        (
            (
                "Py4JError",
                "org.apache.spark.api.python.PythonUtils.isEncryptionEnabled does not exist in the JVM",
            ),
            SparkFault.DRIVER_GONE,
        ),
        (CONNECT_SERVER_KILLED, SparkFault.CONNECT_UNREACHABLE),
        (CONNECT_SERVER_RESTARTED, SparkFault.CONNECT_SESSION_LOST),
        (CONNECT_SERVER_RESTARTED_MID_QUERY, SparkFault.CONNECT_SESSION_LOST),
        (("PythonException", "Traceback (most recent call last):\nValueError: bad value"), SparkFault.OTHER),
    ],
)
def test_a_spark_failure_is_diagnosed_by_its_cause(sample: tuple[str, str], fault: SparkFault) -> None:
    assert spark_fault(raised(sample)) is fault
    assert fault.needs_fix is (fault is SparkFault.ENVIRONMENT)


def _needs_fix(failure: dg.Failure) -> bool:
    return NEEDS_FIX in (failure.metadata or {})


@pytest.mark.parametrize(
    "sample", [WORKER_DAEMON_EOF, DRIVER_PY4J_REFLECTION, DRIVER_STOPPED_CONTEXT, DRIVER_REFUSED]
)
def test_a_slow_worker_or_a_dead_driver_is_retried_not_blamed_on_the_executors_python(sample) -> None:
    for failure in (executor_check_failure(raised(sample)), spark_failure(raised(sample), "es")):
        assert not _needs_fix(failure) and failure.allow_retries, failure.description
        assert "executor-requirements" not in (failure.description or "")
    assert "did not start" in (executor_check_failure(raised(WORKER_DAEMON_EOF)).description or "")


def test_a_missing_package_or_another_python_needs_a_fix_and_says_which() -> None:
    for sample in (("PythonException", CLASSIC), VERSION_MISMATCH):
        failure = spark_failure(raised(sample), "es")
        assert _needs_fix(failure) and not failure.allow_retries
        assert "deploy/executor-requirements.txt" in (failure.description or "")
    assert "No module named 'deltalake'" in (
        spark_failure(raised(("PythonException", CLASSIC)), "es").description or ""
    )
    assert _needs_fix(executor_check_failure(raised(VERSION_MISMATCH)))


def test_a_connect_server_that_went_away_fails_at_once_and_one_that_restarted_is_retried() -> None:
    gone = spark_failure(raised(CONNECT_SERVER_KILLED), "es")
    assert not gone.allow_retries and not _needs_fix(gone)  # its calls already waited; the sensor asks again
    assert "UNAVAILABLE: failed to connect to all addresses" in (gone.description or "")
    assert "python -m lakerelay.devtools.spark_connect start" in (gone.description or "")
    for sample in (CONNECT_SERVER_RESTARTED, CONNECT_SERVER_RESTARTED_MID_QUERY):
        restarted = spark_failure(raised(sample), "es")
        assert restarted.allow_retries and not _needs_fix(restarted)
        assert "no longer knows this run's session" in (restarted.description or "")


def test_a_sink_configuration_error_reported_by_a_task_needs_a_fix() -> None:
    # Reported as data by the task (test_post_task_failures shows it with a real sink answering 401).
    failure = reported_failure(TaskFailure(SinkAuthError.kind, "sink es: 401"), "es")
    assert _needs_fix(failure) and "sink es: 401" in (failure.description or "")
    assert not failure.allow_retries
    # A sink error's text in Spark's error no longer decides: only what no task could report does.
    text = spark_failure(
        raised(("PythonException", "x\nresources.sinks.writer.SinkAuthError: sink es: 401\n")), "es"
    )
    assert not _needs_fix(text)


@pytest.mark.integration
def test_a_local_driver_jvm_that_died_is_transient_and_the_next_session_starts_a_new_jvm(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In a subprocess (this one's Spark is shared): kill the JVM, run the executor check, ask for a session again."""
    monkeypatch.delenv("LAKERELAY_SPARK_REMOTE", raising=False)
    probe = Path(__file__).with_name("dead_driver_probe.py")
    done = subprocess.run(
        [sys.executable, str(probe)], capture_output=True, text=True, timeout=600, cwd=probe.parent.parent
    )
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"\ndead driver: {report['raised']}")
    assert report["fault"] == SparkFault.DRIVER_GONE.value and report["allow_retries"], report
    assert "driver (the JVM of this run) died" in report["description"]
    assert "executor-requirements" not in report["description"]
    assert report["new_session"] and report["new_jvm"] and report["rows"] == 7
