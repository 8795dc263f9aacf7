"""Continuous mode end to end: one long-lived run (real Spark, Delta, local sinks) relays files as they
land, each record once per sink, and a termination request finishes the micro-batch in flight.

The run is the continuous job executed in a thread of this process against a test instance; it is
stopped the way the UI stops a run: a termination request through the instance's run launcher.
"""

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import boto3
import dagster as dg
import pytest

from pipelines.continuous.job import ContinuousConfig, build_continuous_job, make_watcher
from pipelines.continuous.watchers import PollWatcher
from pipelines.deployment import LOCAL_HEC_TOKEN
from pipelines.feeds import EVENTS_FEED
from pipelines.post.progress import progress_log
from pipelines.routes import RouteSpec
from resources.sinks.resource import ElasticsearchSinkResource, SplunkHecSinkResource
from sensors.continuous import CONTINUOUS_TAG, read_heartbeat

from fixtures_s3 import S3Settings
from helpers import delta_table, json_lines, land_events, local_lake, s3_lake

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
def continuous_run(lake, sink_url: str, spark_resource, feed=FEED, **config) -> Iterator[ContinuousRun]:
    job = build_continuous_job(feed, [RouteSpec(feed, key) for key in SINKS], "test-version")
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
        # Between micro-batches each route's lease stays with the run: taken once, not per micro-batch.
        for sink in SINKS:
            log = progress_log(lake, sink, FEED.table_name)
            holder = log.latest()
            assert holder is not None and holder.owner == run.run().run_id and holder.live()
            kept = [r for r in map(log.read, log.seqs()) if r is not None]  # the last few are kept
            assert {r.token for r in kept if r.owner} == {holder.token}, "a lease taken per micro-batch"
        run.terminate()
        run.thread.join(TIMEOUT_S)
        assert not run.thread.is_alive(), "the continuous run did not stop after the termination request"

    # A clean stop releases the leases: a post job need not wait for them to lapse.
    for sink in SINKS:
        assert progress_log(lake, sink, FEED.table_name).latest().owner == ""
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


class RequestLog(logging.Handler):
    """The moto server's access log (werkzeug's, one line per HTTP request), kept for counting."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def landing_lists(self) -> int:
        """ListObjects calls on the landing zone (``GET /<bucket>?list-type=2&prefix=landing…``)."""
        return sum(
            1 for line in list(self.lines) if "GET /" in line and "list-type=2" in line and "landing" in line
        )

    def queue_calls(self) -> int:
        """SQS calls (JSON protocol: ``POST /``)."""
        return sum(1 for line in list(self.lines) if '"POST / HTTP' in line)


@pytest.fixture
def counted_moto() -> Iterator[tuple[str, RequestLog]]:
    """A moto server in this process (so its access log can be counted), on a free port of 127.0.0.1."""
    from moto.server import ThreadedMotoServer

    log = RequestLog()
    werkzeug = logging.getLogger("werkzeug")
    werkzeug.addHandler(log)
    werkzeug.setLevel(logging.INFO)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}", log
    finally:
        server.stop()
        werkzeug.removeHandler(log)


def events(start: int, count: int) -> bytes:
    return json_lines(
        *(
            {
                "event_id": f"s3-{i}",
                "ts": f"2026-11-01T00:00:{i % 60:02d}Z",
                "severity": "info",
                "bytes_in": i,
            }
            for i in range(start, start + count)
        )
    )


def test_s3_landing_by_sqs_notifications_lists_nothing_while_idle(counted_moto, sink_server, spark_resource):
    endpoint, requests_seen = counted_moto
    s3 = S3Settings(endpoint_url=endpoint, bucket="continuous")
    s3.client().create_bucket(Bucket=s3.bucket)
    sqs = boto3.client(
        "sqs",
        endpoint_url=endpoint,
        region_name=s3.region,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    queue_url = sqs.create_queue(QueueName="landing-events")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    s3.client().put_bucket_notification_configuration(
        Bucket=s3.bucket,
        NotificationConfiguration={
            "QueueConfigurations": [
                {
                    "QueueArn": queue_arn,
                    "Events": ["s3:ObjectCreated:*"],
                    "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": "landing/events/"}]}},
                }
            ]
        },
    )
    lake = s3_lake(s3)
    feed = dataclasses.replace(FEED, notification_queue=queue_url)
    with continuous_run(lake, sink_server.url, spark_resource, feed=feed) as run:
        s3.client().put_object(Bucket=s3.bucket, Key="landing/events/a.json", Body=events(0, 20))
        wait_for(in_both_sinks(sink_server, 20), TIMEOUT_S, "the first S3 file in both sinks")
        # The notification of the first file may still be in the queue: after three polls it is not.
        polls = requests_seen.queue_calls()
        wait_for(lambda: requests_seen.queue_calls() >= polls + 3, 120, "the queue drained")
        # Idle: the run long-polls the queue (5 s a call) and lists nothing.
        lists_before, polls_before = requests_seen.landing_lists(), requests_seen.queue_calls()
        wait_for(
            lambda: requests_seen.queue_calls() >= polls_before + 3, 120, "three idle polls of the queue"
        )
        assert requests_seen.landing_lists() == lists_before, (
            "an idle continuous feed listed its landing zone"
        )
        s3.client().put_object(Bucket=s3.bucket, Key="landing/events/b.json", Body=events(20, 15))
        wait_for(in_both_sinks(sink_server, 35), TIMEOUT_S, "the notified S3 file in both sinks")
        assert requests_seen.landing_lists() > lists_before  # the notification was followed by a listing
        run.terminate()
        run.thread.join(TIMEOUT_S)
        assert not run.thread.is_alive()
    assert len(set(sink_server.es_ids("events"))) == 35 and sink_server.hec_count("main") == 35


def test_an_s3_landing_without_a_queue_is_probed_by_listing(s3_settings):
    lake = s3_lake(s3_settings)
    stop = threading.Event()
    watcher = make_watcher(FEED, lake, stop, ContinuousConfig(poll_interval_s=0.1))
    assert isinstance(watcher, PollWatcher)
    assert not watcher.wait(0.1) and watcher.probes == 1  # nothing waits
    s3_settings.client().put_object(Bucket=s3_settings.bucket, Key="landing/events/a.json", Body=events(0, 3))
    assert watcher.wait(0.1)  # the next probe lists it
    stop.set()
    assert not watcher.wait(5)  # a stop request ends a wait at once
