"""deploy/dagster.yaml, copied verbatim into a DAGSTER_HOME, on a real PostgreSQL: what a user checks.

A run from the CLI and the sensor-driven relay on the daemon are recorded in PostgreSQL (runs, events,
sensor ticks, materializations), seen through Dagster's API and in the tables themselves.
"""

import shutil
import subprocess
import sys
import time
from pathlib import Path

import psycopg2
import pytest
from dagster import AssetKey, DagsterEventType, DagsterInstance, DagsterRunStatus, RunsFilter
from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage
from test_daemon import UNFINISHED, running_daemon, wait_for

from lakerelay.devtools.postgres import PostgresServer

from helpers import dagster_cli_env, delta_table, land_events, local_lake

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "deploy" / "dagster.yaml"
DAGSTER = str(Path(sys.executable).parent / "dagster")
SINK_ASSETS = [AssetKey(["sinks", "events_in_elasticsearch"]), AssetKey(["sinks", "events_in_splunk"])]


def instance_env(
    tmp_path: Path, db: PostgresServer, sink_url: str, monkeypatch: pytest.MonkeyPatch, **extra: str
) -> dict[str, str]:
    """A DAGSTER_HOME holding the template as it is, and the variables it names (also set here, for
    the instance this test opens itself)."""
    home = tmp_path / "dagster"
    home.mkdir()
    shutil.copyfile(TEMPLATE, home / "dagster.yaml")  # before dagster_cli_env: it keeps an existing one
    variables = {
        **db.env,
        "LAKERELAY_DAGSTER_ARTIFACTS_DIR": str(tmp_path / "dagster-artifacts"),
        "LAKERELAY_DAGSTER_COMPUTE_LOGS_DIR": str(tmp_path / "dagster-logs"),
    }
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    env = dagster_cli_env(tmp_path, sink_url, **variables, **extra)
    assert (home / "dagster.yaml").read_bytes() == TEMPLATE.read_bytes()
    return env


def open_instance(env: dict[str, str]) -> DagsterInstance:
    return DagsterInstance.from_config(env["DAGSTER_HOME"])


def cli(args: list[str], env: dict[str, str]) -> str:
    result = subprocess.run([DAGSTER, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (
        f"dagster {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    )
    return result.stdout + result.stderr


def query(db: PostgresServer, sql: str, *params: object) -> list[tuple]:
    """Straight from PostgreSQL, as a user checking the database (not Dagster's view of it) would."""
    with psycopg2.connect(db.url) as connection, connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    connection.close()
    return rows


def test_a_cli_run_is_recorded_in_postgres(
    tmp_path: Path, postgres_db: PostgresServer, sink_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    lake = local_lake(tmp_path)
    written = land_events(lake, files=4, records_per_file=250)
    env = instance_env(tmp_path, postgres_db, sink_server.url, monkeypatch)

    started = time.perf_counter()
    info = cli(["instance", "info"], env)
    print(f"\ndagster instance info: {time.perf_counter() - started:.1f}s")
    for storage in ("PostgresRunStorage", "PostgresEventLogStorage", "PostgresScheduleStorage"):
        assert f": {storage}" in info, info

    started = time.perf_counter()
    cli(["job", "execute", "-m", "pipelines.definitions", "-j", "ingest_events"], env)
    print(f"dagster job execute -j ingest_events: {time.perf_counter() - started:.1f}s")
    assert delta_table(lake).num_rows == written

    with open_instance(env) as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
        # By name, as the run coordinator below: Dagster exports no compute log manager class publicly.
        assert type(instance.compute_log_manager).__name__ == "LocalComputeLogManager"
        pools = instance.get_concurrency_config().pool_config
        assert (pools.default_pool_limit, str(pools.pool_granularity.value)) == (1, "run")
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        [run] = instance.get_runs()
        assert (run.job_name, run.status) == ("ingest_events", DagsterRunStatus.SUCCESS)
        materialization = instance.get_latest_materialization_event(AssetKey("events"))
        assert materialization is not None and materialization.run_id == run.run_id
    # The run's captured stdout/stderr, where the template sends them (the UI serves them from there).
    assert list((tmp_path / "dagster-logs" / run.run_id / "compute_logs").glob("*.err"))

    assert query(postgres_db, "SELECT pipeline_name, status FROM runs WHERE run_id = %s", run.run_id) == [
        ("ingest_events", "SUCCESS")
    ]
    events = dict(
        query(
            postgres_db,
            "SELECT dagster_event_type, count(*) FROM event_logs WHERE run_id = %s GROUP BY 1",
            run.run_id,
        )
    )
    # Stored under the enum's values, which keep the old names (PIPELINE_START for RUN_START).
    expected = {DagsterEventType.RUN_START, DagsterEventType.STEP_SUCCESS, DagsterEventType.RUN_SUCCESS}
    assert {e.value for e in expected} <= events.keys(), events
    assert events[DagsterEventType.ASSET_MATERIALIZATION.value] == 1
    assert query(
        postgres_db,
        "SELECT count(*) FROM event_logs WHERE dagster_event_type = %s AND asset_key = %s",
        DagsterEventType.ASSET_MATERIALIZATION.value,
        AssetKey("events").to_string(),
    ) == [(1,)]


def test_sensor_runs_on_the_daemon_are_recorded_in_postgres(
    tmp_path: Path,
    postgres_db: PostgresServer,
    sink_server,
    spark_connect_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lake = local_lake(tmp_path)
    env = instance_env(
        tmp_path,
        postgres_db,
        sink_server.url,
        monkeypatch,
        LAKERELAY_SENSORS_RUNNING="1",
        LAKERELAY_SENSOR_INTERVAL_S="1",
        LAKERELAY_SPARK_REMOTE=spark_connect_url,  # the always-on mode: a long-lived Spark
    )
    started = time.perf_counter()
    with running_daemon(env, tmp_path / "daemon.log"), open_instance(env) as instance:
        written = land_events(lake, files=3, records_per_file=200)
        wait_for(
            lambda: sink_server.es_count("events") == written and sink_server.hec_count("main") == written,
            240,
            "the landed records in both sinks",
        )
        print(f"\nlanded -> both sinks through the daemon: {time.perf_counter() - started:.1f}s")
        # A run saves its progress after its last post: let every run finish before stopping the daemon.
        wait_for(lambda: not instance.get_runs(RunsFilter(statuses=UNFINISHED)), 120, "the runs to finish")
        print(f"every run finished: {time.perf_counter() - started:.1f}s")

    assert delta_table(lake).num_rows == written
    assert len(set(sink_server.es_ids("events"))) == written
    with open_instance(env) as instance:
        runs = instance.get_runs()
        assert [(r.job_name, r.status) for r in runs if r.status != DagsterRunStatus.SUCCESS] == []
        # Launched by the sensors, not by a person: the landing sensor's relay run ingests and posts.
        assert all(r.tags.get("dagster/sensor_name") for r in runs), [(r.job_name, r.tags) for r in runs]
        relay = [r for r in runs if r.job_name == "relay_events"]
        assert relay and {r.tags["dagster/sensor_name"] for r in relay} == {"feeds_landing_sensor"}
        by_sensor = {r.run_id for r in runs}
        ingest = instance.get_latest_materialization_event(AssetKey("events"))
        assert ingest is not None and ingest.run_id in by_sensor
        for key in SINK_ASSETS:
            event = instance.get_latest_materialization_event(key)
            assert event is not None and event.run_id in by_sensor, key
        # The sensor's ticks, and the one that requested the relay run.
        # (The instance's own tick API; Dagster exports no InstigatorType or TickStatus, so by name and value.)
        [landing] = [s for s in instance.all_instigator_state() if s.name == "feeds_landing_sensor"]
        ticks = instance.get_ticks(landing.instigator_origin_id, landing.selector_id)
        requested = {run_id for t in ticks if t.status.value == "SUCCESS" for run_id in t.run_ids}
        assert {r.run_id for r in relay} <= requested

    # The same, in PostgreSQL's own tables.
    statuses = dict(query(postgres_db, "SELECT status, count(*) FROM runs GROUP BY 1"))
    assert statuses == {"SUCCESS": len(runs)}, statuses
    tagged = query(
        postgres_db,
        "SELECT count(DISTINCT run_id) FROM run_tags WHERE key = 'dagster/sensor_name'",
    )
    assert tagged == [(len(runs),)]
    [(sensor_ticks,)] = query(
        postgres_db, "SELECT count(*) FROM job_ticks WHERE type = 'SENSOR' AND status = 'SUCCESS'"
    )
    assert sensor_ticks >= len(relay)
    materialized = dict(
        query(
            postgres_db,
            "SELECT asset_key, count(*) FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION' "
            "GROUP BY 1",
        )
    )
    for key in [AssetKey("events"), *SINK_ASSETS]:
        assert materialized.get(key.to_string(), 0) >= 1, (key, materialized)
    print(f"runs {len(runs)} ({sorted(r.job_name for r in runs)}), successful sensor ticks {sensor_ticks}")
