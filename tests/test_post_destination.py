"""Templated destinations through the real post job: Spark evaluates them, each record lands where its own says.

Real Spark (the session's shared one), real Delta tables and the local sink server on 127.0.0.1, which
keeps Elasticsearch documents per index (and counts them per ingest pipeline) and HEC events per index.
"""

from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pyarrow as pa
import pytest
from pyspark.sql import SparkSession
from test_dead_letter_replay import replay
from test_post_job import run_post

from pipelines.delta_once import append_once
from pipelines.deployment import LOCAL_HEC_TOKEN
from pipelines.feeds import EVENTS_FEED
from pipelines.post.dead_letters import DEAD_LETTER_TABLE
from pipelines.post.destination import plan_destination
from resources.delta_arrow import read_delta
from resources.lake import LakeResource
from resources.sinks.resource import ElasticsearchSinkResource, SplunkHecSinkResource
from resources.sinks.template import parse_template

from helpers import local_lake

pytestmark = pytest.mark.integration

START = datetime(2026, 3, 1, 20, 0, tzinfo=UTC)
SERVICES = ("api", "web", None)  # every third record has no service


def write_events(lake: LakeResource, rows: int, batch_id: int = 1) -> list[dict]:
    """``rows`` events spread over 52 hours from 20:00, so over three UTC days, as one ingest batch."""
    records = [
        {
            "event_id": f"e{i}",
            "ts": START + timedelta(seconds=i * (52 * 3_600 // rows)),
            "service": SERVICES[i % 3],
            "status_code": 200 + i % 2,
        }
        for i in range(rows)
    ]
    table = pa.table(
        {
            "event_id": [r["event_id"] for r in records],
            "ts": pa.array([r["ts"] for r in records], pa.timestamp("us", tz="UTC")),
            "service": pa.array([r["service"] for r in records], pa.string()),
            "status_code": pa.array([r["status_code"] for r in records], pa.int64()),
            "_source_file": [f"landing/events/batch-{batch_id}.json"] * rows,
            "_source_row": pa.array(range(rows), pa.int64()),
            "_batch_id": pa.array([batch_id] * rows, pa.int64()),
        }
    )
    assert append_once(
        lake.table_uri(EVENTS_FEED.table_name), lake.storage_options(), table, EVENTS_FEED.app_id, batch_id
    )
    return records


def es_sink(url: str, sink_name: str = "es", **fields) -> ElasticsearchSinkResource:
    return ElasticsearchSinkResource(
        sink_name=sink_name,
        url=url,
        max_records_per_call=150,
        backoff_initial_s=0.01,
        backoff_max_s=0.1,
        **fields,
    )


def dead_letters(lake: LakeResource) -> pa.Table:
    return read_delta(lake.table(DEAD_LETTER_TABLE), lake.filesystem_settings())


def test_a_date_templated_index_puts_each_record_in_its_own_days_index_and_replays_double_nothing(
    tmp_path: Path, sink_server, spark_resource
) -> None:
    lake = local_lake(tmp_path)
    records = write_events(lake, 3_000)
    expected = Counter(f"logs-events-{r['ts']:%Y.%m.%d}" for r in records)
    assert len(expected) == 3  # the events span three UTC days
    # Retries everywhere: whole-request 503s, per-item 429s, and connections reset after the sink
    # stored the request, so whole calls are sent again with the same ids and per-record indices.
    sink_server.set_faults(
        {"seed": 3, "item_429_rate": 0.05, "request_503_rate": 0.05, "connection_reset_rate": 0.05}
    )
    sink = es_sink(sink_server.url, index="logs-{feed}-{ts:%Y.%m.%d}", pipeline="{service|_none}")

    result = run_post("elasticsearch", sink, lake, spark_resource, max_tasks=2)

    [event] = result.asset_materializations_for_node("sinks__events_in_elasticsearch")
    assert event.metadata["http_retried_records"].value > 0
    assert sink_server.stats()["es"]["indices"] == dict(expected)  # in its day's index, nowhere else
    for index in expected:
        docs = [orjson.loads(source) for _, source in sink_server.store.es_sources(index)]
        assert {f"logs-events-{datetime.fromisoformat(d['ts']):%Y.%m.%d}" for d in docs} == {index}
        assert len({d["event_id"] for d in docs}) == len(docs)
    assert set(sink_server.es_pipelines()) == {"api", "web"}  # _none: no pipeline

    # The same records posted again from the start (a sink of another name has no progress yet, as
    # after a lost settle): the same ids into the same per-record indices overwrite, nothing doubles.
    sink_server.set_faults(None)
    before = sink_server.es_pipelines()
    again = es_sink(sink_server.url, "es2", index="logs-{feed}-{ts:%Y.%m.%d}", pipeline="{service|_none}")
    assert run_post("elasticsearch", again, lake, spark_resource).success
    assert sink_server.stats()["es"]["indices"] == dict(expected)
    # Without faults each record went through its own service's pipeline once, into its day's index.
    through = Counter(
        {
            (p, i): n - before.get(p, {}).get(i, 0)
            for p, per_index in sink_server.es_pipelines().items()
            for i, n in per_index.items()
        }
    )
    assert +through == Counter(
        (r["service"], f"logs-events-{r['ts']:%Y.%m.%d}") for r in records if r["service"] is not None
    )


def test_an_index_from_a_column_dead_letters_records_whose_column_is_null_and_names_why(
    tmp_path: Path, sink_server, spark_resource
) -> None:
    lake = local_lake(tmp_path)
    records = write_events(lake, 600)
    sink = es_sink(sink_server.url, index="svc-{service}")

    result = run_post("elasticsearch", sink, lake, spark_resource, max_tasks=2, dead_letter_max_rate=1.0)

    assert sink_server.stats()["es"]["indices"] == {"svc-api": 200, "svc-web": 200}
    [event] = result.asset_materializations_for_node("sinks__events_in_elasticsearch")
    assert (event.metadata["accepted"].value, event.metadata["dead_lettered"].value) == (400, 200)
    dead = dead_letters(lake)
    assert sorted(orjson.loads(r)["event_id"] for r in dead["record"].to_pylist()) == sorted(
        r["event_id"] for r in records if r["service"] is None
    )
    assert set(dead["error_type"].to_pylist()) == {"destination_unresolved"}
    assert set(dead["status"].to_pylist()) == {None}
    [reason] = set(dead["reason"].to_pylist())
    assert reason.startswith("index template 'svc-{service}': a column it reads is null in this record")

    # The fix: a default. The replay evaluates the template on each letter's document, with its id.
    fixed = es_sink(sink_server.url, "es", index="svc-{service|unknown}")
    _, _, replayed = replay("elasticsearch", fixed, lake)
    assert (replayed["replayed"], replayed["accepted"], replayed["rejected_again"]) == (200, 200, 0)
    assert sink_server.stats()["es"]["indices"] == {"svc-api": 200, "svc-web": 200, "svc-unknown": 200}
    assert sorted(sink_server.es_ids("svc-unknown")) == sorted(dead["record_id"].to_pylist())


def test_hec_sourcetype_and_index_per_record_and_indexed_fields(
    tmp_path: Path, sink_server, spark_resource
) -> None:
    lake = local_lake(tmp_path)
    records = write_events(lake, 600)
    sink = SplunkHecSinkResource(
        sink_name="splunk",
        url=sink_server.url,
        token=LOCAL_HEC_TOKEN,
        index="{feed}-{ts:%Y%m}",
        sourcetype="{service|misc}:log",
        host="{service|unknown}.example",
        fields=["service", "status_code"],
        max_records_per_call=100,
    )

    run_post("splunk", sink, lake, spark_resource, max_tasks=2)

    assert sink_server.stats()["hec"]["indices"] == {"events-202603": 600}
    events = sink_server.hec_events("events-202603")
    by_id = {e["event"]["event_id"]: e for e in events}
    assert len(by_id) == 600
    for r in records:
        event = by_id[r["event_id"]]
        service = r["service"]
        assert event["sourcetype"] == f"{service or 'misc'}:log"
        assert event["host"] == f"{service or 'unknown'}.example"
        assert event["source"] == "lakerelay"
        expected_fields = {"status_code": str(r["status_code"])} | ({"service": service} if service else {})
        assert event["fields"] == expected_fields
        assert event["time"] == r["ts"].timestamp()


def test_a_template_naming_a_missing_column_fails_the_run_in_one_line_before_posting(
    tmp_path: Path, sink_server, spark_resource
) -> None:
    lake = local_lake(tmp_path)
    write_events(lake, 30)
    result = run_post(
        "elasticsearch",
        es_sink(sink_server.url, index="logs-{servce}"),
        lake,
        spark_resource,
        raise_on_error=False,
    )
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    message = failure.step_failure_data.error.message
    assert (
        "es.index: template 'logs-{servce}' reads column 'servce', which the table does not have" in message
    )
    assert "event_id, ts, service, status_code" in message
    assert sink_server.stats()["es"]["docs"] == 0


@pytest.mark.parametrize("session_zone", ["UTC", "America/New_York"])
def test_spark_formats_dates_in_utc_like_the_python_evaluation(spark_resource, session_zone: str) -> None:
    spark = SparkSession.builder.getOrCreate()
    source = "{ts:%Y.%m.%d %H:%M:%S %j %y %G-W%V %% o'c}|it's \\ {day:%Y/%m/%d}|{service|none}-{n}"
    instants = [
        datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC),
        datetime(2027, 1, 1, 3, 0, 0, tzinfo=UTC),  # 22:00 the day before in New York
        datetime(2024, 2, 29, 12, 0, 0, tzinfo=UTC),
        datetime(2021, 1, 3, 0, 30, tzinfo=UTC),  # ISO week 53 of 2020
    ]
    rows = [
        {"ts": t, "day": t.date(), "service": ("a'b\\c" if i % 2 else None), "n": i}
        for i, t in enumerate(instants)
    ]
    previous = spark.conf.get("spark.sql.session.timeZone")
    spark.conf.set("spark.sql.session.timeZone", session_zone)
    try:
        frame = spark.createDataFrame(rows, "ts timestamp, day date, service string, n bigint")
        # A HEC sourcetype: any text goes (an index name would refuse the spaces and quotes).
        sink = SplunkHecSinkResource(sink_name="hec", url="http://127.0.0.1:1", token="t", sourcetype=source)
        [(column, sql)] = plan_destination(sink.settings(), "events", frame.dtypes).columns
        got = [row[0] for row in frame.selectExpr(sql).collect()]
    finally:
        spark.conf.set("spark.sql.session.timeZone", previous)
    template = parse_template(source, "events")
    assert column == "_sourcetype"
    assert got == [template.render(r) for r in rows]
    assert got[1].startswith("2027.01.01 03:00:00 001 27 2026-W53 % o'c|it's \\ 2027/01/01")
