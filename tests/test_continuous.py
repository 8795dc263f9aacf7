"""Continuous mode end to end: one long-lived run (real Spark, Delta, local sinks) relays files as they
land, each record once per sink, and a termination request finishes the micro-batch in flight.

The run is the continuous job executed in a thread of this process against a test instance; it is
stopped the way the UI stops a run: a termination request through the instance's run launcher.
"""

import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import dagster as dg
import pytest

from pipelines.continuous.job import build_continuous_job
from pipelines.deployment import LOCAL_HEC_TOKEN
from pipelines.feeds import EVENTS_FEED
from resources.sinks.resource import ElasticsearchSinkResource, SplunkHecSinkResource
from sensors.continuous import CONTINUOUS_TAG, read_heartbeat

from helpers import delta_table, land_events, local_lake

pytestmark = pytest.mark.integration

FEED = dataclasses.replace(EVENTS_FEED, mode="continuous")
SINKS = ["elasticsearch", "splunk"]
OP = f"continuous_relay_{FEED.name}"
TIMEOUT_S = 300.0  # Spark's first start on a busy 2-core machine


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(0.2)


def in_both_sinks(sink_server, total: int) -> Callable[[], bool]:
    return lambda: sink_server.es_count("events") == total and sink_server.hec_count("main") == total


def sink_resources(url: str) -> dict:
    return {
        "elasticsearch": ElasticsearchSinkResource(sink_name="elasticsearch", url=url, index="events"),
        "splunk": SplunkHecSinkResource(
            sink_name="splunk", url=url, token=LOCAL_HEC_TOKEN, backoff_initial_s=0.05
        ),
    }


@dataclasses.dataclass
class ContinuousRun:
    instance: dg.DagsterInstance
    thread: threading.Thread
    result: dict

    def run(self) -> dg.DagsterRun | None:
        runs = self.instance.get_runs(dg.RunsFilter(tags={CONTINUOUS_TAG: FEED.name}), limit=1)
        return runs[0] if runs else None

    def terminate(self) -> None:
        run = self.run()
        assert run is not None
        self.instance.run_launcher.terminate(run.run_id)  # what the UI's Terminate does first


@contextmanager
def continuous_run(lake, sink_url: str, spark_resource, **config) -> Iterator[ContinuousRun]:
    job = build_continuous_job(FEED, SINKS, "test-version")
    with dg.instance_for_test() as instance:
        result: dict = {}

        def execute() -> None:
            result["result"] = job.execute_in_process(
                instance=instance,
                resources={"lake": lake, "pyspark": spark_resource, **sink_resources(sink_url)},
                run_config={"ops": {OP: {"config": {"report_interval_s": 3600, **config}}}},
                raise_on_error=False,
            )

        thread = threading.Thread(target=execute, name="continuous-test-run", daemon=True)
        thread.start()
        handle = ContinuousRun(instance, thread, result)
        try:
            yield handle
        finally:
            if thread.is_alive() and handle.run() is not None:
                handle.terminate()
            thread.join(TIMEOUT_S)


def test_files_landing_one_after_another_reach_every_sink_once(tmp_path, sink_server, spark_resource):
    lake = local_lake(tmp_path)
    with continuous_run(lake, sink_server.url, spark_resource) as run:
        total = 0
        for n in range(3):  # each file after the previous one is in both sinks: three micro-batches
            total += land_events(lake, files=1, records_per_file=40, start_seq=total)
            wait_for(in_both_sinks(sink_server, total), TIMEOUT_S, f"file {n + 1}'s records in both sinks")
        # Two files at once: one micro-batch takes both.
        total += land_events(lake, files=2, records_per_file=25, start_seq=total)
        wait_for(in_both_sinks(sink_server, total), TIMEOUT_S, "the last two files in both sinks")
        heartbeat = read_heartbeat(lake, FEED.name)
        assert heartbeat is not None and heartbeat["run_id"] == run.run().run_id
        run.terminate()
        run.thread.join(TIMEOUT_S)
        assert not run.thread.is_alive(), "the continuous run did not stop after the termination request"

    assert delta_table(lake).num_rows == total
    assert len(set(sink_server.es_ids("events"))) == total
    assert sink_server.hec_count("main") == total  # HEC has no ids: a repeat would show here
    outcome = run.result["result"]
    assert outcome.success, "a terminated continuous run ends cleanly"
    # Coalesced: one report at the end, not one per micro-batch (the interval is an hour here).
    reported = [
        e.asset_key.to_user_string()
        for e in outcome.all_events
        if e.event_type_value == "ASSET_MATERIALIZATION" and e.asset_key is not None
    ]
    assert sorted(reported) == ["events", "sinks/events_in_elasticsearch", "sinks/events_in_splunk"]
    sink_report = outcome.asset_materializations_for_node(OP)
    es = next(m for m in sink_report if m.asset_key == dg.AssetKey(["sinks", "events_in_elasticsearch"]))
    assert es.metadata["continuous_records_total"].value == total
    assert es.metadata["lag_records"].value == 0


def test_termination_finishes_the_micro_batch_in_flight(tmp_path, sink_server, spark_resource):
    lake = local_lake(tmp_path)
    with continuous_run(lake, sink_server.url, spark_resource) as run:
        first = land_events(lake, files=1, records_per_file=30)
        wait_for(
            lambda: sink_server.es_count("events") == first, TIMEOUT_S, "the first file in Elasticsearch"
        )
        # Each bulk call now takes 10 s: the next micro-batch is still posting when termination is asked.
        sink_server.set_faults({"latency_ms": 10000})
        total = first + land_events(lake, files=1, records_per_file=30, start_seq=first)
        wait_for(lambda: delta_table(lake).num_rows == total, TIMEOUT_S, "the second file in the table")
        assert sink_server.es_count("events") < total, "the post of the second file was not in flight"
        run.terminate()
        run.thread.join(TIMEOUT_S)
        assert not run.thread.is_alive()
    # The micro-batch in flight was finished, not dropped: every record is in both sinks.
    assert sink_server.es_count("events") == total
    assert sink_server.hec_count("main") == total
    assert run.result["result"].success
