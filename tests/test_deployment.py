"""The deployment's settings come from the environment: wrong values stop with a message naming the variable."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines import deployment

ROOT = Path(__file__).resolve().parent.parent


def test_a_non_numeric_setting_names_the_variable_and_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAKERELAY_SENSOR_INTERVAL_S", "thirty")
    with pytest.raises(
        ValueError, match=r"LAKERELAY_SENSOR_INTERVAL_S='thirty' must be a whole number; fix or unset it"
    ):
        deployment.sensor_interval_seconds()


def test_a_flag_accepts_the_usual_spellings_and_refuses_others(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAKERELAY_SENSORS_RUNNING", "yes")
    assert deployment.sensors_default_status().name == "RUNNING"
    monkeypatch.setenv("LAKERELAY_SENSORS_RUNNING", "off")
    assert deployment.sensors_default_status().name == "STOPPED"
    monkeypatch.setenv("LAKERELAY_SENSORS_RUNNING", "maybe")
    with pytest.raises(ValueError, match="LAKERELAY_SENSORS_RUNNING='maybe' must be true or false"):
        deployment.sensors_default_status()


def test_sink_settings_from_the_environment_reach_the_resources_as_env_vars(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LAKERELAY_SINK_MAX_RECORDS_PER_CALL", "250")
    monkeypatch.setenv("LAKERELAY_SINK_MAX_IN_FLIGHT", "2")
    monkeypatch.setenv("LAKERELAY_ES_URL", "http://search.internal:9200")
    monkeypatch.setenv("LAKERELAY_SINK_DELIVERY_TIMEOUT_S", "45.5")
    sinks = deployment.sink_resources()
    # What the Launchpad shows: the variable a field comes from, not a value copied at load time.
    assert sinks["elasticsearch"].url.env_var_name == "LAKERELAY_ES_URL"
    assert sinks["splunk"].url == "http://127.0.0.1:8088"  # unset: the laptop default
    es = deployment.resolved(sinks["elasticsearch"])
    splunk = deployment.resolved(sinks["splunk"])
    assert (es.url, es.max_records_per_call, es.delivery_timeout_s) == (
        "http://search.internal:9200",
        250,
        45.5,
    )
    assert (splunk.url, splunk.max_in_flight) == ("http://127.0.0.1:8088", 2)
    monkeypatch.setenv("LAKERELAY_SINK_MAX_IN_FLIGHT", "two")
    with pytest.raises(ValueError, match="LAKERELAY_SINK_MAX_IN_FLIGHT='two' must be a whole number"):
        deployment.sink_resources()


def test_loading_the_definitions_leaves_the_environment_alone(tmp_path: Path) -> None:
    """Spark's environment (its workers' Python, the JVM's bind address) is set when a session starts."""
    script = (
        "import json, os; before = dict(os.environ); import pipelines.definitions; "
        "print(json.dumps(sorted(set(os.environ.items()) ^ set(before.items()))))"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYSPARK_PYTHON", "SPARK_LOCAL_IP")}
    env["LAKERELAY_HOME"] = str(tmp_path)
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True, cwd=ROOT
    )
    changed = {name for name, _ in json.loads(done.stdout.strip().splitlines()[-1])}
    # The one exception, on purpose: deltalake's and polars' jemalloc read their options once, when
    # the library loads, so the export package sets them (if unset) before either can be imported.
    assert changed <= {"_RJEM_MALLOC_CONF"}
