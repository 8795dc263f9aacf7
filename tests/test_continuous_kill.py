"""A continuous run killed with SIGKILL mid-post, then a new one (`dagster job execute`, as the keeper's
launch would start it): every record once in Elasticsearch, none lost in Splunk HEC (at-least-once,
repeats bounded by what was in flight), and SIGINT stops the new run cleanly."""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from pipelines.feeds import EVENTS_FEED

from helpers import dagster_cli_env, delta_table, land_events, local_lake

pytestmark = pytest.mark.e2e

DAGSTER = str(Path(sys.executable).parent / "dagster")
ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 400.0
OP = "continuous_relay_events"


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the continuous run exited ({proc.returncode}) while waiting for {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(0.2)


def start_run(env: dict[str, str], config: Path, log: Path) -> subprocess.Popen:
    with log.open("ab") as out:
        return subprocess.Popen(
            [
                DAGSTER,
                "job",
                "execute",
                "-m",
                "pipelines.definitions",
                "-j",
                "continuous_events",
                "-c",
                str(config),
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the Spark JVM dies with it
        )


def test_sigkill_then_a_new_run_delivers_every_record_once_to_elasticsearch(tmp_path, sink_server):
    lake = local_lake(tmp_path)
    feeds = tmp_path / "feeds.yaml"
    feeds.write_text(
        yaml.safe_dump(
            {
                "feeds": [
                    {
                        "name": "events",
                        "source": "events",
                        "schema_hints": EVENTS_FEED.schema_hints,
                        "mode": "continuous",
                    }
                ]
            }
        )
    )
    config = tmp_path / "run.yaml"
    # A short lease: the new run takes over the killed run's lease seconds after it stopped renewing.
    config.write_text(
        yaml.safe_dump({"ops": {OP: {"config": {"post": {"lease_ttl_s": 4, "group_records": 100}}}}})
    )
    env = dagster_cli_env(tmp_path, sink_server.url, LAKERELAY_FEEDS_FILE=str(feeds))
    log = tmp_path / "runs.log"

    first = start_run(env, config, log)
    try:
        total = land_events(lake, files=2, records_per_file=150)
        wait_for(
            lambda: sink_server.es_count("events") == total,
            TIMEOUT_S,
            "the first files in Elasticsearch",
            first,
        )
        # Slow bulk calls: the next file is being posted when the run is killed.
        sink_server.set_faults({"latency_ms": 1500})
        # (land_events names files by start_seq // records_per_file: these are events-00002 and -00003.)
        total += land_events(lake, files=2, records_per_file=150, start_seq=total)
        wait_for(lambda: delta_table(lake).num_rows == total, TIMEOUT_S, "the next files in the table", first)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(60)
    sink_server.set_faults(None)

    second = start_run(env, config, log)
    try:
        total += land_events(lake, files=1, records_per_file=50, start_seq=total)
        wait_for(
            lambda: sink_server.es_count("events") == total and sink_server.hec_count("main") >= total,
            TIMEOUT_S,
            "every record in both sinks after the restart",
            second,
        )
        os.kill(second.pid, signal.SIGINT)  # the run process only: its micro-batch finishes, then it stops
        second.wait(120)
    finally:
        if second.poll() is None:
            os.killpg(second.pid, signal.SIGKILL)
            second.wait(60)
    assert delta_table(lake).num_rows == total
    assert len(set(sink_server.es_ids("events"))) == total == sink_server.es_count("events")
    # HEC has no ids: the killed run's groups in flight may arrive twice, never more than those.
    assert total <= sink_server.hec_count("main") <= total + 300
