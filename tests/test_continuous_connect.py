"""A continuous run on a Spark Connect server that is killed and restarted: the run rides it out.

The run keeps its session between micro-batches. When the server dies, the next post fails, the loop
retries it with backoff, and the route's poster is dropped, so a later post asks the resource for a
session again: the resource sees that the old session is gone and opens a new one on the restarted
server, ships lakerelay's code to it, and posts. Files that landed while the server was down arrive
in both sinks, each record once, and the run never fails (so the keeper has nothing to restart).
"""

import os
import signal
import socket
from pathlib import Path

import dagster as dg
import pytest
from deltalake import DeltaTable
from test_continuous import TIMEOUT_S, continuous_run, in_both_sinks, wait_for

from lakerelay.devtools import spark_connect
from lakerelay.devtools.spark_connect import free_port
from pipelines import deployment
from pipelines.feeds import EVENTS_FEED
from pipelines.post.progress import read_progress
from resources.spark import SparkSessionResource

from helpers import delta_table, land_events, local_lake

pytestmark = pytest.mark.integration


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) != 0


def settled(lake, sinks: tuple[str, ...] = ("elasticsearch", "splunk")) -> bool:
    """Every route's progress has reached the table's last version (the sinks' counts come before it)."""
    version = DeltaTable(lake.table_uri(EVENTS_FEED.table_name)).version()
    return all(read_progress(lake, sink, EVENTS_FEED.table_name).delta_version == version for sink in sinks)


def test_a_connect_server_restart_is_ridden_out_by_the_continuous_run(
    tmp_path: Path, sink_server, worker_python: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lake = local_lake(tmp_path)
    directory, port = tmp_path / "server", free_port()
    server = spark_connect.start(directory, port=port, master="local[2]", python=str(worker_python))
    try:
        monkeypatch.setenv("LAKERELAY_SPARK_REMOTE", server.url)
        # Calls give up on a dead server within seconds; the loop's backoff (at most 5 s here) retries.
        spark = SparkSessionResource(spark_config=deployment.spark_config(), connect_retry_s=5)
        with continuous_run(lake, sink_server.url, spark, retry_max_s=5) as handle:
            total = land_events(lake, files=2, records_per_file=100)
            wait_for(in_both_sinks(sink_server, total), TIMEOUT_S, "the first files in both sinks")
            # Killed before the driver settled them, the records would be posted again (HEC: twice).
            wait_for(lambda: settled(lake), TIMEOUT_S, "both routes to settle the first files")

            os.killpg(server.pid, signal.SIGKILL)
            wait_for(
                lambda: spark_connect.status(directory) is None, TIMEOUT_S, "the killed server to be gone"
            )
            # The dead server's pyspark.daemon (a process group of its own) holds the listening socket
            # it inherited until it notices that its JVM is gone.
            wait_for(lambda: port_is_free(port), TIMEOUT_S, f"port {port} to be free")
            # Files landing while the server is down are ingested (Delta needs no Spark); their post fails
            # and is retried.
            total += land_events(lake, files=2, records_per_file=100, start_seq=total)
            wait_for(
                lambda: delta_table(lake).num_rows == total, TIMEOUT_S, "the files landed meanwhile in Delta"
            )
            spark_connect.start(directory, port=port, master="local[2]", python=str(worker_python))

            wait_for(
                in_both_sinks(sink_server, total), TIMEOUT_S, "every record in both sinks after the restart"
            )
            run = handle.run()
            assert run is not None and run.status == dg.DagsterRunStatus.STARTED, "the run must ride it out"
    finally:
        spark_connect.stop(directory)

    ids = sink_server.es_ids("events")
    assert len(ids) == len(set(ids)) == total
    # Nothing was in flight when the server died (both routes had settled), so HEC has each record once.
    assert sink_server.hec_count("main") == total
