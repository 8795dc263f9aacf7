"""Delivery policy of the post op: outages never become dead letters, any feed posts, Spark starts last.

Real Spark (the session's shared one), real Delta tables and the local sink server on 127.0.0.1.
"""

import threading
import time
from pathlib import Path

import dagster as dg
import orjson
import pytest
import requests
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError
from test_post_job import materialization_metadata, run_post, write_feed_batch

from lakerelay.localsink.server import LocalSinkServer
from pipelines.feeds import EVENTS_FEED, FeedSpec
from pipelines.ingest.runner import ingest_feed
from pipelines.post.dead_letters import DEAD_LETTER_TABLE
from pipelines.post.defs import table_sensor
from pipelines.post.progress import read_progress
from pipelines.routes import RouteSpec
from resources.sinks.resource import ElasticsearchSinkResource

from helpers import local_lake, post_job

pytestmark = pytest.mark.integration

N = 20_000


def dead_letter_rows(lake) -> int:
    try:
        return DeltaTable(lake.table_uri(DEAD_LETTER_TABLE), storage_options=lake.storage_options()).count()
    except TableNotFoundError:
        return 0


def start_outage_when(sink_server: LocalSinkServer, index: str, documents: int) -> threading.Thread:
    """Drop every connection once the sink holds ``documents``: the outage starts in the middle of a post."""

    def watch() -> None:
        deadline = time.monotonic() + 60
        while sink_server.es_count(index) < documents and time.monotonic() < deadline:
            time.sleep(0.02)
        sink_server.set_faults({"connection_reset_rate": 1.0, "latency_ms": 5})

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    return watcher


def slow_sink(url: str, index: str, **options) -> ElasticsearchSinkResource:
    # Small calls, one in flight per task: the post lasts long enough for an outage to start inside it.
    return ElasticsearchSinkResource(
        sink_name="es",
        url=url,
        index=index,
        max_records_per_call=100,
        max_in_flight=1,
        backoff_initial_s=0.05,
        backoff_max_s=0.5,
        **options,
    )


def test_an_outage_past_the_delivery_timeout_fails_the_run_and_the_next_run_delivers_everything(
    tmp_path: Path, sink_server, spark_resource
) -> None:
    lake = local_lake(tmp_path)
    write_feed_batch(lake, 1, N)
    sink_server.set_faults({"latency_ms": 5})
    watcher = start_outage_when(sink_server, "outage", 4_000)

    failed = run_post(
        "elasticsearch",
        slow_sink(sink_server.url, "outage", delivery_timeout_s=3),
        lake,
        spark_resource,
        raise_on_error=False,
        max_tasks=2,
    )

    watcher.join()
    assert not failed.success
    [failure] = [e for e in failed.all_events if e.is_step_failure]
    message = failure.step_failure_data.error.message
    assert (
        "still pending" in message and "ConnectionError" in message and "nothing is dead-lettered" in message
    )
    posted_before = sink_server.es_count("outage")
    print(f"\noutage mid-post: {posted_before} of {N} documents in before it, run failed: {message[:160]}")
    assert 4_000 <= posted_before < N  # the outage really was in the middle
    assert dead_letter_rows(lake) == 0
    assert read_progress(lake, "es", "events").batch_id == 0  # not settled

    sink_server.set_faults({})  # the sink is back
    healed = run_post(
        "elasticsearch", slow_sink(sink_server.url, "outage"), lake, spark_resource, max_tasks=2
    )

    meta = materialization_metadata(healed, "elasticsearch")
    assert (meta["accepted"], meta["dead_lettered"], meta["pending"]) == (N, 0, 0)
    ids = sink_server.es_ids("outage")
    assert len(ids) == len(set(ids)) == N
    assert dead_letter_rows(lake) == 0
    assert read_progress(lake, "es", "events").batch_id == 1


def test_an_outage_longer_than_the_old_retry_budget_is_waited_out_within_the_delivery_timeout(
    tmp_path: Path, sink_server, spark_resource
) -> None:
    lake = local_lake(tmp_path)
    write_feed_batch(lake, 1, N)
    sink_server.set_faults({"latency_ms": 5})
    watcher = start_outage_when(sink_server, "waits", 4_000)
    # The old policy gave up after 6 attempts (a few seconds of backoff here) and dead-lettered the rest.
    healer = threading.Timer(8.0, lambda: sink_server.set_faults({}))

    def heal_after_outage_starts() -> None:
        watcher.join()
        healer.start()

    threading.Thread(target=heal_after_outage_starts, daemon=True).start()
    result = run_post(
        "elasticsearch", slow_sink(sink_server.url, "waits", delivery_timeout_s=120), lake, spark_resource
    )

    healer.join()
    meta = materialization_metadata(result, "elasticsearch")
    assert (meta["accepted"], meta["dead_lettered"], meta["pending"]) == (N, 0, 0)
    assert meta["http_retried_records"] > 0 and meta["http_attempts"] > meta["http_requests"]
    ids = sink_server.es_ids("waits")
    assert len(ids) == len(set(ids)) == N
    injected = sink_server.stats()["faults"]["injected"]
    assert injected.get("connection_reset_before", 0) + injected.get("connection_reset_after", 0) > 6


def test_a_feed_unlike_the_demo_is_posted_by_its_sensor_with_default_configuration(
    tmp_path: Path, sink_server, spark_resource
) -> None:
    lake = local_lake(tmp_path)
    feed = FeedSpec(name="metrics", source="metrics")  # no enrich, no hints: all defaults
    landing = Path(lake.landing_uri) / "metrics"
    landing.mkdir(parents=True)
    rows = [
        {"metric": "cpu", "value": i / 10, "node": f"n{i % 3}", "at": "2026-12-01T10:00:00.85Z"}
        for i in range(500)
    ]
    (landing / "m-0.json").write_bytes(b"\n".join(orjson.dumps(r) for r in rows))
    ingest_feed(feed, lake)
    sink = ElasticsearchSinkResource(sink_name="es", url=sink_server.url, index="metrics")
    job = post_job("elasticsearch", feed)
    sensor = table_sensor(RouteSpec(feed, "elasticsearch", name="es"), job.name)

    with dg.DagsterInstance.ephemeral() as instance:
        [request] = sensor(dg.build_sensor_context(resources={"lake": lake}, instance=instance)).run_requests
    result = job.execute_in_process(
        run_config=request.run_config,
        tags=request.tags,
        resources={"lake": lake, "pyspark": spark_resource, "elasticsearch": sink},
    )

    assert result.success
    assert sink_server.es_count("metrics") == 500
    doc_id = sink_server.es_ids("metrics")[0]
    document = requests.get(f"{sink_server.url}/metrics/_doc/{doc_id}", timeout=5).json()["_source"]
    assert set(document) == {"metric", "value", "node", "at"}  # nothing added it has no columns for
    assert document["at"] == "2026-12-01T10:00:00.850000Z"  # the one canonical form, from "…00.85Z"
    [event] = result.asset_materializations_for_node("sinks__metrics_in_elasticsearch")
    assert (event.metadata["accepted"].value, event.metadata["dead_lettered"].value) == (500, 0)


def test_the_default_enrichment_adds_only_what_the_feed_has_columns_for() -> None:
    import pyarrow as pa

    from pipelines.post.enrich import default_enrichment_for

    demo = pa.schema(
        [
            ("severity", pa.string()),
            ("bytes_in", pa.int64()),
            ("bytes_out", pa.int64()),
            ("status_code", pa.int64()),
            ("dest_ip", pa.string()),
            ("ts", pa.timestamp("us", tz="UTC")),
        ]
    )
    assert len(default_enrichment_for(demo)) == 5
    # A text status code would fail Spark's ANSI comparison at run time: that expression is left out.
    partial = pa.schema([("Severity", pa.string()), ("status_code", pa.string()), ("bytes_in", pa.int64())])
    assert [e.split(" AS ")[-1] for e in default_enrichment_for(partial)] == ["severity_level"]
    assert default_enrichment_for(pa.schema([("metric", pa.string())])) == []


def test_a_configured_enrichment_that_does_not_fit_names_the_feed_and_the_fix(
    tmp_path: Path, sink_server, spark_resource
) -> None:
    lake = local_lake(tmp_path)
    write_feed_batch(lake, 1, 100)
    sink = ElasticsearchSinkResource(sink_name="es", url=sink_server.url, index="bad-enrich")

    result = run_post(
        "elasticsearch",
        sink,
        lake,
        spark_resource,
        raise_on_error=False,
        enrich_expressions=["upper(no_such_column) AS x"],
    )

    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    message = failure.step_failure_data.error.message
    assert "feed 'events'" in message and "no_such_column" in message and "enrich" in message
    assert sink_server.es_count("bad-enrich") == 0


class SparkMustNotStart(dg.ConfigurableResource):
    """Stands in for the Spark resource where a test shows that Spark is not needed."""

    @property
    def spark_session(self):
        raise AssertionError("the post op started Spark")


def test_wrong_credentials_and_empty_runs_never_start_spark(tmp_path: Path, sink_server) -> None:
    lake = local_lake(tmp_path)
    job = post_job("elasticsearch", EVENTS_FEED)
    resources = {"lake": lake, "pyspark": SparkMustNotStart()}

    empty = job.execute_in_process(
        resources={
            **resources,
            "elasticsearch": ElasticsearchSinkResource(sink_name="es", url=sink_server.url),
        }
    )
    assert empty.success  # no table yet: nothing to post, no Spark

    write_feed_batch(lake, 1, 100)
    with LocalSinkServer(es_api_key="right-key") as server:
        sink = ElasticsearchSinkResource(sink_name="es", url=server.url, api_key="wrong-key")
        refused = job.execute_in_process(resources={**resources, "elasticsearch": sink}, raise_on_error=False)
    [failure] = [e for e in refused.all_events if e.is_step_failure]
    assert "refused the credentials with HTTP 401" in failure.step_failure_data.error.message
