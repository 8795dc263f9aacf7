"""The deployment's settings come from the environment: wrong values stop with a message naming the variable."""

import pytest

from pipelines import deployment


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


def test_sink_tuning_from_the_environment_reaches_the_resources(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAKERELAY_SINK_MAX_RECORDS_PER_CALL", "250")
    monkeypatch.setenv("LAKERELAY_SINK_MAX_IN_FLIGHT", "2")
    sinks = deployment.sink_resources()
    assert sinks["elasticsearch"].max_records_per_call == 250
    assert sinks["splunk"].max_in_flight == 2
    monkeypatch.setenv("LAKERELAY_SINK_MAX_IN_FLIGHT", "two")
    with pytest.raises(ValueError, match="LAKERELAY_SINK_MAX_IN_FLIGHT='two' must be a whole number"):
        deployment.sink_resources()
