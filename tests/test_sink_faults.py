"""The fault matrix against the local sink: every case must account for every record, without duplicates.

Each case asserts on the writer's own counts (accepted + dead-lettered = input), on the sink's
stored ids (no duplicates, nothing missing) and on exactly which records were dead-lettered.
"""

import time

import orjson
import pyarrow as pa
import pytest

from lakerelay.localsink.server import LocalSinkServer
from pipelines.deployment import LOCAL_HEC_TOKEN
from resources.sinks.errors import SinkConfigError
from resources.sinks.flow import AdaptiveConcurrency
from resources.sinks.records import ArrowRecords, Record
from resources.sinks.resource import (
    ElasticsearchSinkResource,
    GenericRestSinkResource,
    SplunkHecSinkResource,
)
from resources.sinks.writer import SinkWriter

N = 3_000
REJECTED = ["e7", "e1500", "e2999"]


def records(n: int = N) -> list[Record]:
    return [
        Record(f"id-{i}", orjson.dumps({"event_id": f"e{i}", "n": i}), 1_700_000_000.0 + i) for i in range(n)
    ]


def arrow_columns(batch: list[Record]) -> tuple[pa.Array, pa.Array, pa.Array]:
    """``batch`` as a Spark task hands it to the writer: id, JSON document and time columns."""
    return (
        pa.array([r.id for r in batch], pa.string()),
        pa.array([r.doc for r in batch], pa.binary()),
        pa.array([r.time for r in batch], pa.float64()),
    )


def post_all(settings, batch: list[Record]):
    writer = SinkWriter(settings)
    writer.add_arrow(*arrow_columns(batch))
    return writer.close()


def es(url: str, **options):
    options = {
        "backoff_initial_s": 0.005,
        "backoff_max_s": 0.05,
        "delivery_timeout_s": 60,
        "max_records_per_call": 200,
        **options,
    }
    return ElasticsearchSinkResource(sink_name="es", url=url, **options).settings()


FAULTS = {
    "item 429": {"item_429_rate": 0.05},
    "request 429 with Retry-After": {"request_429_rate": 0.1},
    "request 503": {"request_503_rate": 0.1},
    "connection reset mid-request": {"connection_reset_rate": 0.1},
    "latency": {"latency_ms": 5},
    "per-item 400": {},
    "all at once": {
        "item_429_rate": 0.05,
        "request_429_rate": 0.05,
        "request_503_rate": 0.05,
        "connection_reset_rate": 0.05,
        "latency_ms": 1,
    },
}


@pytest.mark.parametrize("fault", FAULTS, ids=list(FAULTS))
@pytest.mark.parametrize("op_type", ["index", "create"])
def test_elasticsearch_fault_matrix_loses_and_duplicates_nothing(
    sink_server, fault: str, op_type: str
) -> None:
    sink_server.set_faults(
        {"seed": 5, **FAULTS[fault], "reject_field": "event_id", "reject_values": REJECTED}
    )
    settings = es(sink_server.url, op_type=op_type, adaptive_concurrency=fault == "all at once")
    if fault == "request 429 with Retry-After":
        settings = es(sink_server.url, op_type=op_type, backoff_max_s=1.0)  # Retry-After: 1 is honoured

    outcome = post_all(settings, records())

    assert outcome.accepted + outcome.dead_lettered == N
    assert sorted(orjson.loads(r.record.doc)["event_id"] for r in outcome.rejected) == sorted(REJECTED)
    assert {r.status for r in outcome.rejected} == {400}
    ids = sink_server.es_ids("events")
    assert len(ids) == len(set(ids)) == N - len(REJECTED)
    injected = sink_server.stats()["faults"]["injected"]
    if fault not in ("latency", "per-item 400"):
        assert outcome.retried > 0 and sum(injected.values()) > len(REJECTED)


def test_hec_with_indexer_ack_resends_until_acknowledged_and_keeps_every_event() -> None:
    with LocalSinkServer(hec_ack=True) as server:
        server.set_faults({"seed": 3, "request_503_rate": 0.1, "connection_reset_rate": 0.05})
        settings = SplunkHecSinkResource(
            sink_name="hec",
            url=server.url,
            token=LOCAL_HEC_TOKEN,
            ack=True,
            ack_poll_interval_s=0.01,
            backoff_initial_s=0.005,
            delivery_timeout_s=60,
            max_records_per_call=100,
        ).settings()

        outcome = post_all(settings, records(1_000))

        assert (outcome.accepted, outcome.dead_lettered) == (1_000, 0)
        events = server.hec_events("main")
        # HEC has no ids: a reset after the events were stored makes a resend duplicate them
        # (at-least-once); none may be missing.
        assert {e["event"]["event_id"] for e in events} == {f"e{i}" for i in range(1_000)}
        assert server.stats()["hec"]["responses_by_code"].get("0", 0) >= 10


def test_hec_ack_required_but_disabled_on_the_server_is_a_clear_configuration_error(sink_server) -> None:
    settings = SplunkHecSinkResource(
        sink_name="hec", url=sink_server.url, token=LOCAL_HEC_TOKEN, ack=True
    ).settings()
    with pytest.raises(SinkConfigError, match="answered without an ackId"):
        post_all(settings, records(10))


def test_generic_api_rejections_are_narrowed_to_the_refused_record_and_429s_are_resent(sink_server) -> None:
    sink_server.set_faults(
        {"seed": 1, "request_429_rate": 0.2, "reject_field": "event_id", "reject_values": ["e150"]}
    )
    settings = GenericRestSinkResource(
        sink_name="api",
        url=sink_server.url,
        path="/_generic/things",
        body_format="ndjson",
        max_records_per_call=100,
        backoff_initial_s=0.005,
        delivery_timeout_s=60,
    ).settings()

    outcome = post_all(settings, records(1_000))

    # The call holding e150 was refused as a whole; halving it isolates e150, the other 99 land.
    assert (outcome.accepted, outcome.dead_lettered) == (999, 1)
    assert [orjson.loads(r.record.doc)["event_id"] for r in outcome.rejected] == ["e150"]
    assert {r.status for r in outcome.rejected} == {400}
    stored = [r["event_id"] for r in sink_server.generic_records("things")]
    assert len(stored) == len(set(stored)) == 999 and "e150" not in stored


def test_extra_headers_and_bearer_auth_reach_the_api() -> None:
    with LocalSinkServer(es_bearer="tok") as server:
        good = GenericRestSinkResource(
            sink_name="api",
            url=server.url,
            path="/_generic/x",
            bearer_token="tok",
            extra_headers={"X-Tenant": "a"},
        ).settings()
        assert good.headers == {"X-Tenant": "a", "Authorization": "Bearer tok"}
        assert post_all(good, records(10)).accepted == 10


def test_adaptive_concurrency_grows_on_good_responses_and_backs_off_on_429() -> None:
    limit = AdaptiveConcurrency(ceiling=8, adaptive=True)
    for _ in range(40):
        limit.acquire()
        limit.release(0.01, backpressure=False)
    assert limit.limit == 8
    limit.acquire()
    limit.release(0.01, backpressure=True)
    assert limit.limit == 7
    limit.acquire()
    limit.release(0.5, backpressure=False)  # round-trip time far above its average: back off too
    assert limit.limit == 6


def test_adaptive_writer_stays_below_its_ceiling_and_shrinks_under_throttling(sink_server) -> None:
    sink_server.set_faults({"seed": 9, "request_429_rate": 0.3})
    settings = es(sink_server.url, adaptive_concurrency=True, max_in_flight=6)
    outcome = post_all(settings, records(2_000))
    assert outcome.accepted == 2_000
    assert 1 <= outcome.concurrency_peak <= 6
    assert outcome.concurrency_decreases > 0


def test_rate_limit_in_requests_per_second_paces_the_calls(sink_server) -> None:
    settings = es(sink_server.url, max_records_per_call=10, rate_limit_requests_per_s=40)
    started = time.perf_counter()
    outcome = post_all(settings, records(600))  # 60 calls; a burst of 40, then 20 at 40/s
    assert outcome.accepted == 600
    assert time.perf_counter() - started >= 0.45


@pytest.mark.parametrize("kind", ["elasticsearch", "splunk_hec", "generic_array", "generic_ndjson"])
def test_arrow_encoding_is_byte_for_byte_the_per_record_encoding(kind: str) -> None:
    # Per-item retries are lists of Record: both forms must make the same body.
    batch = [*records(50), Record('odd "id"\\', b'{"x":1}', None)]
    columns = ArrowRecords(*arrow_columns(batch))
    sink = {
        "elasticsearch": ElasticsearchSinkResource(sink_name="x", url="http://x", index="events"),
        "splunk_hec": SplunkHecSinkResource(
            sink_name="x", url="http://x", token="t", index="events", source="src"
        ),
        "generic_array": GenericRestSinkResource(sink_name="x", url="http://x"),
        "generic_ndjson": GenericRestSinkResource(sink_name="x", url="http://x", body_format="ndjson"),
    }[kind]
    settings = sink.settings()
    protocol = settings.protocol.open(settings)

    def same(arrow_body: bytes, python_body: bytes) -> None:
        if kind == "splunk_hec":  # Arrow writes 1700000000.0 as 1700000000: the same JSON number
            arrow_body, python_body = (
                [orjson.loads(line) for line in body.splitlines()] for body in (arrow_body, python_body)
            )
        assert arrow_body == python_body

    same(protocol.encode(columns), protocol.encode(batch))
    same(protocol.encode(columns[:50]), protocol.encode(batch[:50]))  # plain ids: the vectorised path
    assert list(columns[3:5]) == batch[3:5]


def test_arrow_batches_with_faults_settle_every_record(sink_server) -> None:
    sink_server.set_faults(
        {"seed": 4, "item_429_rate": 0.1, "reject_field": "event_id", "reject_values": REJECTED}
    )
    batch = records()
    writer = SinkWriter(es(sink_server.url, max_records_per_call=300))
    for start in range(0, N, 777):  # batch edges that do not line up with calls
        writer.add_arrow(*arrow_columns(batch[start : start + 777]))
    outcome = writer.close()
    assert (outcome.accepted, outcome.dead_lettered) == (N - 3, 3)
    assert outcome.requests >= N // 300
    ids = sink_server.es_ids("events")
    assert len(ids) == len(set(ids)) == N - 3
