"""The post job on a real Spark Connect server, through the resource the deployment builds from `spark.remote`.

The server is pyspark's own, started once per test session (`spark_connect_url`); the job's Spark
work runs there, in its local[2], with a Python for its workers that has the executor requirements
and not lakerelay (`worker_python`): every run ships lakerelay's code to its session. A classic local session
of the same pytest process (`spark_resource`) may exist alongside: the resource never goes through
the classic builder for Connect, so the two do not interfere.
"""

import time
from pathlib import Path

import pytest
import requests
from connect_client_probe import post_each_row
from test_post_job import write_feed_batch

from lakerelay.devtools.spark_connect import free_port
from pipelines import deployment
from pipelines.feeds import EVENTS_FEED
from resources.executor_check import check_executors
from resources.executor_code import code_digest
from resources.lake import LakeResource
from resources.sinks.resource import ElasticsearchSinkResource

from helpers import local_lake, post_job


def run_post(lake: LakeResource, sink: ElasticsearchSinkResource, spark, raise_on_error: bool = True):
    return post_job("elasticsearch", EVENTS_FEED).execute_in_process(
        resources={"lake": lake, "pyspark": spark, "elasticsearch": sink}, raise_on_error=raise_on_error
    )


@pytest.mark.integration
def test_post_job_on_spark_connect_delivers_every_record_once(
    tmp_path: Path, sink_server, spark_connect_url: str, worker_python: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pyspark.core.context import SparkContext
    from pyspark.sql.connect.session import SparkSession as ConnectSession

    lake = local_lake(tmp_path)
    write_feed_batch(lake, 1, 20_000)
    monkeypatch.setenv("LAKERELAY_SPARK_REMOTE", spark_connect_url)
    spark = deployment.spark_resource()
    assert spark.spark_config["spark.remote"] == spark_connect_url
    assert "spark.master" not in spark.spark_config  # the server's master, not one of this process
    classic_before = SparkContext._active_spark_context
    sink = ElasticsearchSinkResource(
        sink_name="es", url=sink_server.url, index="connect", id_field="event_id"
    )

    started = time.perf_counter()
    result = run_post(lake, sink, spark)
    elapsed = time.perf_counter() - started

    [event] = result.asset_materializations_for_node("sinks__events_in_elasticsearch")
    meta = {k: v.value for k, v in event.metadata.items()}
    print(f"\npost of 20,000 records via Spark Connect: job {elapsed:.1f}s, op {meta['run_duration_s']}s")
    assert (meta["records"], meta["accepted"], meta["dead_lettered"]) == (20_000, 20_000, 0)
    assert meta["run_tasks"] == 2  # the server's local[2], read from its spark.master (no SparkContext here)
    assert requests.get(f"{sink_server.url}/connect/_count", timeout=10).json()["count"] == 20_000
    ids = sink_server.es_ids("connect")
    assert len(ids) == 20_000 and set(ids) == {f"e{i}" for i in range(20_000)}
    # The work went to the server: no classic SparkContext appeared in this process for it, and the
    # same resource hands out a Connect session.
    assert SparkContext._active_spark_context is classic_before
    probe = deployment.spark_resource()
    session = probe.spark_session
    try:
        assert isinstance(session, ConnectSession)
        assert session.conf.get("spark.sql.session.timeZone") == "UTC"
        # The server's Python workers run a Python without lakerelay (the run above posted through
        # the code it shipped to its own session).
        report = check_executors(session)
        assert {p["python"] for p in report.pythons} == {str(worker_python)}
        assert not report.have_code(code_digest()) and {p["code"] for p in report.pythons} == {None}
    finally:
        session.stop()

    # A second run finds nothing new: progress was saved, nothing is re-posted.
    again = run_post(lake, sink, spark)
    assert again.success and not again.asset_materializations_for_node("sinks__events_in_elasticsearch")
    assert sink_server.es_count("connect") == 20_000


@pytest.mark.integration
def test_a_connect_server_whose_python_lacks_a_package_fails_the_run_with_its_name(
    tmp_path: Path, sink_server, worker_python_without_orjson: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lakerelay.devtools import spark_connect

    lake = local_lake(tmp_path)
    write_feed_batch(lake, 1, 1_000)
    server = spark_connect.start(
        tmp_path / "server", port=free_port(), master="local[1]", python=str(worker_python_without_orjson)
    )
    try:
        monkeypatch.setenv("LAKERELAY_SPARK_REMOTE", server.url)
        sink = ElasticsearchSinkResource(sink_name="es", url=sink_server.url, index="no_orjson")
        job = post_job("elasticsearch", EVENTS_FEED)
        messages = []
        for check in (True, False):
            started = time.perf_counter()
            result = job.execute_in_process(
                resources={"lake": lake, "pyspark": deployment.spark_resource(), "elasticsearch": sink},
                run_config={
                    "ops": {"sinks__events_in_elasticsearch": {"config": {"check_executors": check}}}
                },
                raise_on_error=False,
            )
            print(
                f"\nConnect run with check_executors={check} failed in {time.perf_counter() - started:.1f}s"
            )
            [failure] = [e for e in result.all_events if e.is_step_failure]  # no retry: a person must act
            messages.append(failure.step_failure_data.error.message)
    finally:
        spark_connect.stop(tmp_path / "server")

    checked, unchecked = messages
    assert "orjson: ModuleNotFoundError: No module named 'orjson'" in checked, checked
    assert str(worker_python_without_orjson) in checked and "executor-requirements.txt" in checked
    # The server's Python worker said it; the run says it too, not "see the server's log".
    assert "failed in Spark: ModuleNotFoundError: No module named 'orjson'" in unchecked, unchecked
    assert not sink_server.es_count("no_orjson")


@pytest.mark.integration
def test_an_unreachable_connect_server_fails_fast_naming_the_url_and_what_to_do(
    tmp_path: Path, sink_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    lake = local_lake(tmp_path)
    write_feed_batch(lake, 1, 100)
    url = f"sc://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("LAKERELAY_SPARK_REMOTE", url)
    monkeypatch.setenv("LAKERELAY_SPARK_CONNECT_TIMEOUT_S", "5")
    sink = ElasticsearchSinkResource(sink_name="es", url=sink_server.url, index="unreachable")

    started = time.perf_counter()
    result = run_post(lake, sink, deployment.spark_resource(), raise_on_error=False)
    elapsed = time.perf_counter() - started

    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    message = failure.step_failure_data.error.message
    assert f"Spark Connect server {url}" in message
    assert "Connection refused" in message
    assert (
        "python -m lakerelay.devtools.spark_connect start" in message and "LAKERELAY_SPARK_REMOTE" in message
    )
    assert elapsed < 60  # not the client's ten minutes of retries
    assert sink_server.es_count("unreachable") == 0


def test_spark_config_keeps_the_token_out_of_the_url_and_local_spark_on_loopback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LAKERELAY_SPARK_REMOTE", "sc://spark.example:443/;use_ssl=true;token=s3cr3t")
    with pytest.raises(ValueError, match="LAKERELAY_SPARK_CONNECT_TOKEN") as raised:
        deployment.spark_config()
    assert "s3cr3t" not in str(raised.value)

    monkeypatch.setenv("LAKERELAY_SPARK_REMOTE", "sc://spark.example:443/;use_ssl=true")
    monkeypatch.setenv("LAKERELAY_SPARK_CONNECT_TOKEN", "s3cr3t")
    resource = deployment.spark_resource()
    assert resource.spark_config["spark.remote"] == "sc://spark.example:443/;use_ssl=true"
    assert "s3cr3t" not in repr(resource.spark_config)

    monkeypatch.delenv("LAKERELAY_SPARK_REMOTE")
    config = deployment.spark_config()
    assert config["spark.driver.bindAddress"] == config["spark.driver.host"] == "127.0.0.1"
    assert "-Dlog4j.configurationFile=" in config["spark.driver.extraJavaOptions"]
    # Local Spark's JIT thresholds (many short queries): see deployment.LOCAL_JIT_OPTION.
    assert "-XX:CompileThresholdScaling=15" in config["spark.driver.extraJavaOptions"].split()

    # A cluster's executors must reach its driver: no loopback binding there.
    monkeypatch.setenv("LAKERELAY_SPARK_MASTER", "spark://spark-master:7077")
    assert "spark.driver.bindAddress" not in deployment.spark_config()


def _wait_for(condition, what: str, timeout_s: float = 300.0, every_s: float = 0.2):
    """Poll ``condition`` until it returns a truthy value (returned), failing the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every_s)
    pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what}")


@pytest.mark.integration
def test_a_connect_server_that_dies_mid_post_fails_the_run_fast_and_the_next_run_after_a_restart_delivers_once(
    tmp_path: Path, sink_server, worker_python: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed mid-post: the run fails within a minute naming the server; restarted: a new session, each document once."""
    import os
    import signal
    import threading

    from lakerelay.devtools import spark_connect

    lake = local_lake(tmp_path)
    records = 20_000
    write_feed_batch(lake, 1, records)
    directory, port = tmp_path / "server", free_port()
    server = spark_connect.start(directory, port=port, master="local[2]", python=str(worker_python))
    try:
        monkeypatch.setenv("LAKERELAY_SPARK_REMOTE", server.url)
        # Slow replies and small calls: the post is still running when the server is killed.
        sink_server.set_faults({"latency_ms": 150})
        sink = ElasticsearchSinkResource(
            sink_name="es", url=sink_server.url, index="crash", id_field="event_id", max_records_per_call=100
        )
        held = deployment.spark_resource()  # a resource whose session outlives the crash (a step retry's)
        before = held.spark_session
        assert before.range(3).count() == 3

        killed_at: list[float] = []

        def kill_when_posting() -> None:
            _wait_for(lambda: sink_server.es_count("crash") > 0, "the first documents in the sink")
            os.killpg(server.pid, signal.SIGKILL)  # the server's JVM, as a crash would
            killed_at.append(time.monotonic())

        killer = threading.Thread(target=kill_when_posting, daemon=True)
        killer.start()
        result = run_post(lake, sink, deployment.spark_resource(), raise_on_error=False)
        ended_at = time.monotonic()
        killer.join(timeout=60)

        assert killed_at, "the server was not killed while the run posted"
        failed_after = ended_at - killed_at[0]
        print(f"\nthe run failed {failed_after:.1f}s after its Spark Connect server was killed")
        assert not result.success
        [failure] = [e for e in result.all_events if e.is_step_failure]  # not retried: the calls waited
        message = failure.step_failure_data.error.message
        assert f"Spark Connect server {server.url} stopped answering" in message, message
        assert "UNAVAILABLE" in message and "python -m lakerelay.devtools.spark_connect start" in message, (
            message
        )
        # connect_retry_s (30 s) and a bounded release, not the client's ~10 minutes of retries.
        assert failed_after < 60, failed_after
        assert 0 < sink_server.es_count("crash") < records

        _wait_for(lambda: spark_connect.status(directory) is None, "the killed server to be gone")
        _wait_for(lambda: _port_is_free(port), f"port {port} to be free")  # see the restart test below
        server = spark_connect.start(directory, port=port, master="local[2]", python=str(worker_python))
        sink_server.set_faults(None)

        # The session of before the crash is gone with its server: the resource opens a new one.
        after = held.spark_session
        assert after is not before and after.session_id != before.session_id
        assert after.range(5).count() == 5
        _wait_for(lambda: before.is_stopped, "the lost session to be closed")
        after.stop()

        again = run_post(lake, sink, deployment.spark_resource())
        [event] = again.asset_materializations_for_node("sinks__events_in_elasticsearch")
        assert event.metadata["records"].value == records
        ids = sink_server.es_ids("crash")
        assert len(ids) == records and set(ids) == {f"e{i}" for i in range(records)}
    finally:
        spark_connect.stop(directory)


@pytest.mark.integration
def test_the_end_of_a_run_interrupts_its_operations_on_the_connect_server_so_its_workers_stop_posting(
    sink_server, spark_connect_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    import dagster as dg

    monkeypatch.setenv("LAKERELAY_SPARK_REMOTE", spark_connect_url)
    rows = 4_000
    sink_server.set_faults({"latency_ms": 20})
    resource = deployment.spark_resource()
    session = resource.spark_session
    outcome: list[BaseException | None] = []

    def post_in_spark() -> None:
        try:
            session.range(0, rows, 1, 2).mapInArrow(
                post_each_row(sink_server.url, "interrupt"), "id long"
            ).toArrow()
            outcome.append(None)
        except BaseException as exc:  # the test reads what the interrupted call raised
            outcome.append(exc)

    poster = threading.Thread(target=post_in_spark, daemon=True)
    poster.start()
    _wait_for(lambda: sink_server.es_count("interrupt") > 0, "the first documents in the sink")

    resource.teardown_after_execution(dg.build_init_resource_context())  # what the end of a run calls

    poster.join(timeout=120)
    assert outcome and outcome[0] is not None, "the operation ran to its end: it was not interrupted"
    assert session.is_stopped

    # The server's Python workers stop: the count settles, well short of every row.
    final = _wait_for(_settled_count(sink_server, "interrupt"), "the sink's count to stop growing", every_s=0)
    print(f"\n{final} of {rows} documents posted before the run's end interrupted its Spark job")
    assert final < rows


def _port_is_free(port: int) -> bool:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) != 0


def _settled_count(sink_server, index: str):
    """A condition for _wait_for: the index's count when it did not change over a second, else None."""

    def settled() -> int | None:
        first = sink_server.es_count(index)
        time.sleep(1.0)
        second = sink_server.es_count(index)
        return second if first == second else None

    return settled


@pytest.mark.integration
def test_the_server_interrupts_the_operations_of_a_killed_client_so_its_workers_stop_posting(
    tmp_path: Path, sink_server, worker_python: Path
) -> None:
    """A run's process killed (SIGKILL: nothing of it runs again): the server's detached timeout ends its work."""
    import subprocess
    import sys

    from lakerelay.devtools import spark_connect

    directory = tmp_path / "server"
    server = spark_connect.start(
        directory, port=free_port(), master="local[2]", python=str(worker_python), detached_timeout_s=5
    )
    rows = 4_000
    try:
        sink_server.set_faults({"latency_ms": 20})
        probe = Path(__file__).with_name("connect_client_probe.py")
        client = subprocess.Popen(
            [sys.executable, str(probe), server.url, sink_server.url, "orphan", str(rows)],
            cwd=probe.parent.parent,
        )
        try:
            _wait_for(
                lambda: sink_server.es_count("orphan") > 0 or client.poll() is not None,
                "the client's first posts",
            )
            assert client.poll() is None, f"the client exited with {client.returncode} before it posted"
        finally:
            client.kill()
            client.wait()
        final = _wait_for(
            _settled_count(sink_server, "orphan"), "the sink's count to stop growing", every_s=0
        )
        print(f"\n{final} of {rows} documents posted by the operation of a killed client")
        assert final < rows
    finally:
        spark_connect.stop(directory)


@pytest.mark.integration
def test_a_connect_server_restarted_mid_post_is_ridden_out_by_a_retry_of_the_step_on_a_new_session(
    tmp_path: Path, sink_server, worker_python: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed mid-post and back while the session's calls still retry: the step's retry posts on a new session."""
    import os
    import signal
    import threading

    from lakerelay.devtools import spark_connect
    from resources.spark import SparkSessionResource

    lake = local_lake(tmp_path)
    records = 20_000
    write_feed_batch(lake, 1, records)
    directory, port = tmp_path / "server", free_port()
    server = spark_connect.start(directory, port=port, master="local[2]", python=str(worker_python))
    try:
        monkeypatch.setenv("LAKERELAY_SPARK_REMOTE", server.url)
        sink_server.set_faults({"latency_ms": 150})
        sink = ElasticsearchSinkResource(
            sink_name="es",
            url=sink_server.url,
            index="restart",
            id_field="event_id",
            max_records_per_call=100,
        )
        # Calls ride out the restart (however long it takes on a busy machine): the attempt then meets a
        # server that no longer knows its session.
        spark = SparkSessionResource(spark_config=deployment.spark_config(), connect_retry_s=240)
        restarted: list[BaseException | float] = []

        def restart_when_posting() -> None:
            try:
                _wait_for(lambda: sink_server.es_count("restart") > 0, "the first documents in the sink")
                os.killpg(server.pid, signal.SIGKILL)
                _wait_for(lambda: spark_connect.status(directory) is None, "the killed server to be gone")
                # The dead server's pyspark.daemon (its own process group, so the kill spared it) holds
                # the listening socket it inherited until it notices its JVM is gone.
                _wait_for(lambda: _port_is_free(port), f"port {port} to be free")
                sink_server.set_faults(None)
                spark_connect.start(directory, port=port, master="local[2]", python=str(worker_python))
                restarted.append(time.monotonic())
            except BaseException as exc:  # the test reports it
                restarted.append(exc)

        restarter = threading.Thread(target=restart_when_posting, daemon=True)
        restarter.start()
        result = run_post(lake, sink, spark, raise_on_error=False)
        restarter.join(timeout=300)
        assert restarted and isinstance(restarted[0], float), restarted

        failures = [e.step_failure_data.error.message for e in result.all_events if e.is_step_failure]
        retries = [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
        print(f"\nrestart mid-post: {len(retries)} step retries, failures: {failures}")
        assert result.success, failures
        assert retries, "the step did not need a retry: the server was not restarted mid-post"
        ids = sink_server.es_ids("restart")
        assert len(ids) == records and set(ids) == {f"e{i}" for i in range(records)}
    finally:
        spark_connect.stop(directory)
