"""The Spark post op end to end: a Delta feed table → enrich → post → sink counts, dead letters, metadata.

The feed table is written here with the ingest contract (bookkeeping columns and one application
transaction per batch), so these tests exercise posting alone.
"""

from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pyarrow as pa
import pytest
from pyspark.sql import SparkSession

from pipelines.delta_once import append_once
from pipelines.feeds import EVENTS_FEED
from pipelines.post.dead_letters import DEAD_LETTER_TABLE
from resources.delta_arrow import read_delta
from resources.lake import LakeResource
from resources.sinks.resource import ElasticsearchSinkResource, GenericRestSinkResource

from helpers import local_lake, post_job

pytestmark = pytest.mark.integration


def write_feed_batch(lake: LakeResource, batch_id: int, rows: int, start: int = 0) -> None:
    """One ingest batch as ONE data file, the common case that used to post from a single task."""
    base = datetime(2026, 1, 1, tzinfo=UTC)
    n = range(start, start + rows)
    table = pa.table(
        {
            "event_id": [f"e{i}" for i in n],
            "ts": pa.array([base + timedelta(seconds=i) for i in n], pa.timestamp("us", tz="UTC")),
            "severity": [("info", "error", "warning")[i % 3] for i in n],
            "bytes_in": pa.array([i % 1000 for i in n], pa.int64()),
            "bytes_out": pa.array([i % 700 for i in n], pa.int64()),
            "status_code": pa.array([200 if i % 5 else 503 for i in n], pa.int64()),
            "dest_ip": [f"10.0.{i % 250}.{i % 200}" for i in n],
            "_source_file": [f"landing/events/batch-{batch_id}.json"] * rows,
            "_source_row": pa.array(list(n), pa.int64()),
            "_source_modified_at": pa.array([base] * rows, pa.timestamp("us", tz="UTC")),
            "_ingested_at": pa.array([base] * rows, pa.timestamp("us", tz="UTC")),
            "_batch_id": pa.array([batch_id] * rows, pa.int64()),
        }
    )
    assert append_once(
        lake.table_uri(EVENTS_FEED.table_name), lake.storage_options(), table, EVENTS_FEED.app_id, batch_id
    )


def run_post(sink_key: str, sink, lake, spark_resource, raise_on_error: bool = True, instance=None, **config):
    job = post_job(sink_key, EVENTS_FEED)
    return job.execute_in_process(
        resources={"lake": lake, "pyspark": spark_resource, sink_key: sink},
        run_config={"ops": {f"sinks__events_in_{sink_key}": {"config": config}}},
        raise_on_error=raise_on_error,
        instance=instance,
    )


def materialization_metadata(result, sink_key: str) -> dict:
    [event] = result.asset_materializations_for_node(f"sinks__events_in_{sink_key}")
    return {k: v.value for k, v in event.metadata.items()}


def test_one_file_is_posted_by_several_tasks_and_faults_lose_nothing(
    tmp_path: Path, sink_server, spark_resource
) -> None:
    lake = local_lake(tmp_path)
    write_feed_batch(lake, 1, 20_000)
    rejected = {"e17", "e5000", "e19999"}
    sink_server.set_faults(
        {
            "seed": 11,
            "item_429_rate": 0.05,
            "request_503_rate": 0.05,
            "connection_reset_rate": 0.03,
            "reject_field": "event_id",
            "reject_values": sorted(rejected),
        }
    )
    sink = ElasticsearchSinkResource(
        sink_name="es",
        url=sink_server.url,
        backoff_initial_s=0.01,
        max_records_per_call=500,
        delivery_timeout_s=60,
    )

    result = run_post("elasticsearch", sink, lake, spark_resource, max_tasks=4, dead_letter_max_rate=0.0001)

    meta = materialization_metadata(result, "elasticsearch")
    assert meta["run_tasks"] == 4  # one data file, four tasks
    assert meta["records"] == 20_000
    assert (meta["accepted"], meta["dead_lettered"]) == (20_000 - 3, 3)
    # Retried records went out again: more attempts than distinct requests.
    assert meta["http_retried_records"] > 0 and meta["http_attempts"] > meta["http_requests"]
    assert sink_server.es_count("events") == 20_000 - 3
    ids = sink_server.es_ids("events")
    assert len(ids) == len(set(ids))
    dead = read_delta(lake.table(DEAD_LETTER_TABLE), lake.filesystem_settings())
    assert dead.num_rows == 3
    assert {orjson.loads(r)["event_id"] for r in dead["record"].to_pylist()} == rejected
    assert set(dead["error_type"].to_pylist()) == {"document_parsing_exception"}
    assert set(dead["status"].to_pylist()) == {400}
    # The capacity planner and the dead-letter rate check come with every run; 10 calls per task
    # are just enough to size from, and each task's start-up is left out of its rate.
    assert meta["capacity_cores"] >= 1 and meta["capacity_tasks"] >= 1
    assert meta["capacity_cores_one_call_at_a_time"] >= 1 and meta["capacity_startup_s_per_task"] > 0
    assert "| O | cores = N / G: size from this one |" in meta["capacity_plan"]
    assert "too small" not in meta["capacity_plan"]
    # Keys are grouped by prefix, units in their names; counts are ints, durations floats.
    assert isinstance(meta["http_latency_p50_ms"], float) and isinstance(meta["run_duration_s"], float)
    assert isinstance(meta["http_bytes_sent"], int) and meta["http_bytes_sent"] > 0
    assert meta["source_batch_to"] == 1 and meta["source_files_read"] == 1
    [check] = result.get_asset_check_evaluations()
    assert check.check_name == "dead_letter_rate" and not check.passed
    assert check.metadata["dead_letter_rate_threshold"].value == 0.0001
    # Dagster's own keys; settings and HEC-only counts stay out of the Elasticsearch asset's plots.
    assert meta["dagster/row_count"] == 20_000 - 3
    assert meta["dagster/uri"] == f"{sink_server.url}/events"
    assert not {"dead_letter_max_rate", "capacity_target_records_per_s", "http_ack_timeouts"} & set(meta)


def test_generic_rest_api_receives_every_enriched_record_once_despite_429s(
    tmp_path: Path, sink_server, spark_resource
) -> None:
    lake = local_lake(tmp_path)
    write_feed_batch(lake, 1, 3_000)
    sink_server.set_faults({"seed": 2, "request_429_rate": 0.2})
    sink = GenericRestSinkResource(
        sink_name="api",
        url=sink_server.url,
        path="/_generic/alerts",
        backoff_initial_s=0.01,
        delivery_timeout_s=60,
    )

    result = run_post("api", sink, lake, spark_resource, max_tasks=2)

    meta = materialization_metadata(result, "api")
    assert (meta["accepted"], meta["dead_lettered"]) == (3_000, 0)
    records = sink_server.generic_records("alerts")
    assert sorted({r["event_id"] for r in records}) == sorted(f"e{i}" for i in range(3_000))
    assert len(records) == 3_000  # a 429 means "not taken": resending it duplicates nothing
    assert {"severity_level", "bytes_total"} <= set(records[0])


def test_tasks_default_to_the_task_slots_spark_has(tmp_path: Path, sink_server, spark_resource) -> None:
    lake = local_lake(tmp_path)
    write_feed_batch(lake, 1, 30_000)  # enough rows for several row-range units
    sink = ElasticsearchSinkResource(sink_name="es", url=sink_server.url, index="slots")

    result = run_post("elasticsearch", sink, lake, spark_resource)

    slots = SparkSession.builder.getOrCreate().sparkContext.defaultParallelism  # the session the op used
    meta = materialization_metadata(result, "elasticsearch")
    assert meta["run_tasks"] == slots
    assert meta["accepted"] == 30_000 and sink_server.es_count("slots") == 30_000


def test_files_are_cut_into_row_ranges_for_the_tasks() -> None:
    from pipelines.post.plan import ReadUnit, split_units

    assert split_units((100_000,), 4) == [
        ReadUnit(0, 0, 25_000),
        ReadUnit(0, 25_000, 50_000),
        ReadUnit(0, 50_000, 75_000),
        ReadUnit(0, 75_000, None),
    ]
    # Small files are not cut; files of unknown size are read whole.
    assert split_units((3_000, None), 8) == [ReadUnit(0, 0, None), ReadUnit(1, 0, None)]


def test_capacity_plan_sizes_from_the_measured_rate_without_start_up() -> None:
    from pipelines.post.capacity import plan_capacity

    plan = plan_capacity(
        target_records_per_s=100_000,
        requests=100,
        records_sent=50_000,  # B = 500 records per call
        mean_latency_s=0.25,  # D; E = 4 calls/s per task
        records_in=50_000,
        task_seconds=9.0,  # two tasks, 4.5 s each ...
        api_time_fraction=0.75,
        tasks=2,
        startup_seconds=4.0,  # ... of which 2 s each waiting for their first records: M = 10 000/s
    )
    assert plan.calls_per_s_needed == 200  # C = A / B
    assert plan.tasks_one_call_at_a_time == 50  # F = C / E
    assert plan.cores_one_call_at_a_time == 67  # H = ceil(F / G)
    assert plan.records_per_s_per_task == 10_000 and plan.startup_s_per_task == 2.0
    assert (plan.tasks, plan.cores) == (10, 14)  # N = A / M, O = ceil(N / G)
    meta = plan.metadata()
    assert meta["capacity_cores"].value == 14 and "capacity_plan" in meta
    assert "seed" not in plan.markdown() and not plan.too_small_reason


def test_capacity_plan_of_a_small_batch_says_it_cannot_size() -> None:
    from pipelines.post.capacity import plan_capacity

    # 5,000 records over 2 tasks, 1,000 per call: 2.5 calls per task, mostly start-up and drain.
    plan = plan_capacity(50_000, 5, 5_000, 0.05, 5_000, 30.0, 0.75, tasks=2, startup_seconds=29.0)
    assert (plan.tasks, plan.cores, plan.cores_one_call_at_a_time) == (None, None, None)
    assert "too small to size from" in plan.markdown() and "2.5 calls each" in plan.markdown()
    meta = plan.metadata()
    assert "capacity_cores" not in meta and "capacity_tasks" not in meta
    assert meta["capacity_records_per_s_per_task"].value == 5_000.0  # measured, shown, not sized from
