"""SinkWriter against the local sink server: batching, per-item policy, retries, auth, HEC codes."""

import dataclasses
import pickle
import subprocess
import sys
import threading
import time

import orjson
import pyarrow as pa
import pytest

from lakerelay.localsink.server import LocalSinkServer
from pipelines.deployment import LOCAL_HEC_TOKEN
from resources.sinks.errors import SinkAuthError, SinkRequestError
from resources.sinks.records import Record
from resources.sinks.resource import ElasticsearchSinkResource, GenericRestSinkResource, SplunkHecSinkResource
from resources.sinks.writer import SinkWriter


def records(n: int) -> list[Record]:
    return [
        Record(f"{i:040x}", orjson.dumps({"event_id": f"e{i}", "n": i}), 1_700_000_000.0 + i)
        for i in range(n)
    ]


def es_settings(url: str, **options):
    return ElasticsearchSinkResource(sink_name="es", url=url, backoff_initial_s=0.01, **options).settings()


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


def test_requests_are_cut_by_count_and_by_bytes(sink_server) -> None:
    by_count = post_all(es_settings(sink_server.url, max_records_per_call=100), records(1000))
    assert (by_count.accepted, by_count.requests) == (1000, 10)

    sink_server.reset()
    by_bytes = post_all(es_settings(sink_server.url, max_bytes_per_call=5_000), records(1000))
    assert by_bytes.accepted == 1000
    assert by_bytes.requests >= by_bytes.bytes_sent // 5_000
    assert sink_server.es_count("events") == 1000


def test_items_rejected_with_429_are_retried_alone_until_accepted_without_duplicates(sink_server) -> None:
    sink_server.set_faults({"seed": 3, "item_429_rate": 0.2})

    outcome = post_all(es_settings(sink_server.url, max_records_per_call=250), records(2000))

    assert outcome.accepted == 2000
    assert outcome.rejected == []
    assert outcome.retried > 0
    ids = sink_server.es_ids("events")
    assert len(ids) == len(set(ids)) == 2000


def test_whole_request_503s_are_retried_with_backoff(sink_server) -> None:
    sink_server.set_faults({"seed": 1, "request_503_rate": 0.4})

    outcome = post_all(es_settings(sink_server.url, max_records_per_call=100), records(1000))

    assert outcome.accepted == 1000
    assert sink_server.es_count("events") == 1000
    assert sink_server.stats()["http"]["responses_by_status"].get("503", 0) > 0


def test_documents_the_sink_rejects_are_reported_with_status_and_reason(sink_server) -> None:
    sink_server.set_faults({"reject_field": "event_id", "reject_values": ["e7", "e42"]})

    outcome = post_all(es_settings(sink_server.url), records(100))

    assert outcome.accepted == 98
    assert sorted(orjson.loads(r.record.doc)["event_id"] for r in outcome.rejected) == ["e42", "e7"]
    assert {r.status for r in outcome.rejected} == {400}
    assert all(r.error_type and r.reason for r in outcome.rejected)


def test_retries_that_never_succeed_leave_records_pending_never_dead_lettered(sink_server) -> None:
    sink_server.set_faults({"request_503_rate": 1.0})
    settings = es_settings(
        sink_server.url, delivery_timeout_s=0.5, backoff_max_s=0.1, max_records_per_call=10, max_in_flight=2
    )

    started = time.monotonic()
    outcome = post_all(settings, records(300))

    # A sink that is down is not a sink that rejects: nothing may become a dead letter.
    assert (outcome.accepted, outcome.rejected, outcome.pending) == (0, [], 300)
    assert "HTTP 503" in outcome.pending_reason and "delivery_timeout_s" in outcome.pending_reason
    # Once one request runs out of time the writer stops: the other 29 calls are not each waited out.
    assert time.monotonic() - started < 5
    assert outcome.attempts < 40


def test_an_outage_shorter_than_the_delivery_timeout_delivers_everything(sink_server) -> None:
    sink_server.set_faults({"connection_reset_rate": 1.0})
    healer = threading.Timer(1.5, lambda: sink_server.set_faults({}))
    healer.start()
    settings = es_settings(sink_server.url, delivery_timeout_s=30, backoff_max_s=0.2, max_records_per_call=50)

    outcome = post_all(settings, records(500))

    healer.join()
    assert (outcome.accepted, outcome.rejected, outcome.pending) == (500, [], 0)
    assert outcome.attempts > outcome.requests  # the dropped connections were retried
    ids = sink_server.es_ids("events")
    assert len(ids) == len(set(ids)) == 500


def test_a_request_refused_as_a_whole_is_a_configuration_error_not_dead_letters(sink_server) -> None:
    settings = es_settings(sink_server.url + "/not/a/bulk/endpoint")  # answered 400, no handler
    with pytest.raises(SinkRequestError, match=r"HTTP 4\d\d .*nothing was dead-lettered"):
        post_all(settings, records(10))


def test_a_refused_credential_stops_at_once_and_never_shows_the_secret() -> None:
    with LocalSinkServer(es_api_key="right").start() as server:
        with pytest.raises(SinkAuthError) as caught:
            post_all(es_settings(server.url, api_key="wrong-secret"), records(10))
        assert server.stats()["http"]["requests"] == 1
    assert "401" in str(caught.value)
    assert "wrong-secret" not in str(caught.value)


def test_hec_posts_envelopes_and_a_bad_event_is_dead_lettered_while_the_rest_land(sink_server) -> None:
    settings = SplunkHecSinkResource(sink_name="hec", url=sink_server.url, token=LOCAL_HEC_TOKEN).settings()
    sink_server.set_faults({"reject_field": "event_id", "reject_values": ["e5"]})

    outcome = post_all(settings, records(20))

    assert outcome.accepted == 19
    assert [orjson.loads(r.record.doc)["event_id"] for r in outcome.rejected] == ["e5"]
    assert sink_server.hec_count("main") == 19
    stored = sink_server.hec_events("main", limit=1)[0]
    assert stored["sourcetype"] == "_json"
    assert stored["time"] == 1_700_000_000.0


def test_hec_invalid_event_fed_from_arrow_is_dead_lettered_alone(sink_server) -> None:
    # The Spark op feeds Arrow columns; HEC's code 6 names one event inside such a call.
    sink_server.set_faults({"reject_field": "event_id", "reject_values": ["e250"]})
    settings = SplunkHecSinkResource(
        sink_name="hec", url=sink_server.url, token=LOCAL_HEC_TOKEN, max_records_per_call=100
    ).settings()
    outcome = post_all(settings, records(1_000))

    assert (outcome.accepted, outcome.pending) == (999, 0)
    assert [orjson.loads(r.record.doc)["event_id"] for r in outcome.rejected] == ["e250"]
    assert outcome.rejected[0].record.time == 1_700_000_250.0
    events = sink_server.hec_events("main")
    assert len(events) == 999 and "e250" not in {e["event"]["event_id"] for e in events}


def test_an_ingest_pipeline_name_is_escaped_in_the_bulk_url() -> None:
    settings = ElasticsearchSinkResource(
        sink_name="es", url="http://127.0.0.1:9", pipeline="geo ip&enrich#1"
    ).settings()
    with SinkWriter(settings) as writer:
        assert writer.protocol.path == "/_bulk?pipeline=geo%20ip%26enrich%231"


@pytest.mark.parametrize(
    "sink",
    [
        ElasticsearchSinkResource(
            sink_name="es", url="http://x", index="logs", op_type="create", gzip_level=3
        ),
        SplunkHecSinkResource(
            sink_name="hec",
            url="http://x",
            token="t",
            index="sec",
            ack=True,
            ack_timeout_s=7,
            max_in_flight=3,
        ),
        GenericRestSinkResource(
            sink_name="api", url="http://x", path="/v1", method="PUT", success_statuses=[200, 207]
        ),
    ],
    ids=["elasticsearch", "splunk_hec", "generic"],
)
def test_executor_settings_take_each_value_from_the_resource_field_of_the_same_name(sink) -> None:
    settings = sink.settings()
    for part in (settings, settings.protocol):
        for f in dataclasses.fields(part):
            # per_record is a run's, not the sink's
            if f.name not in ("headers", "protocol", "auth", "per_record"):
                value = getattr(sink, f.name)
                assert getattr(part, f.name) == (tuple(value) if isinstance(value, list) else value), f.name
    # Executors get a copy by pickle: it must round-trip and stay small.
    assert pickle.loads(pickle.dumps(settings)) == settings
    assert len(pickle.dumps(settings)) < 2_000
    assert settings.kind == {"es": "elasticsearch", "hec": "splunk_hec", "api": "generic"}[sink.sink_name]


def test_the_modules_executors_import_need_neither_dagster_nor_pydantic() -> None:
    script = (
        "import sys\n"
        "import resources.sinks.writer, resources.sinks.elasticsearch, resources.sinks.hec, resources.sinks.generic\n"
        "import resources.sinks.sigv4\n"
        "import pipelines.post.post_stage\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'dagster', 'pydantic'}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("reply", "accepted", "rejected"),
    [
        (b'{"took":3,"errors":false,"items":[{"index":{"status":201}},{"index":{"status":201}}]}', 2, 0),
        (b'{"errors":false,"took":3,"items":[{"index":{"status":201}},{"index":{"status":201}}]}', 2, 0),
        # A flag inside an item is not the reply's: the full parse reads each item.
        (
            b'{"took":3,"errors":true,"items":[{"index":{"status":201,"errors":false}},'
            b'{"index":{"status":400,"error":{"type":"mapper_parsing_exception","reason":"bad"}}}]}',
            1,
            1,
        ),
        (
            b'{"items":[{"index":{"status":201,"errors":false}},{"index":{"status":400,"error":{}}}],"errors":true}',
            1,
            1,
        ),
        # Another spelling of "no errors" (pretty-printed) still settles by the full parse.
        (b'{\n  "took" : 3,\n  "errors" : false,\n  "items" : [{}, {}]\n}', 2, 0),
    ],
)
def test_bulk_replies_settle_the_same_with_or_without_the_no_errors_shortcut(
    reply: bytes, accepted: int, rejected: int
) -> None:
    settings = ElasticsearchSinkResource(sink_name="es", url="http://127.0.0.1:1", index="x").settings()
    protocol = settings.protocol.open(settings)
    records = [Record("a", b"{}", None), Record("b", b"{}", None)]
    settled = protocol.settle(records, reply)
    assert (settled.accepted, len(settled.rejected), len(settled.retry)) == (accepted, rejected, 0)


def test_the_environment_requests_would_read_per_call_is_read_once_with_the_same_answers(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    bundle = tmp_path / "corporate-ca.pem"
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "localhost")
    plain = ElasticsearchSinkResource(sink_name="es", url="https://search.example:9200", index="x")
    session = SinkWriter(plain.settings())._session()
    assert session.verify == str(bundle) and not session.trust_env
    assert session.proxies["https"] == "http://proxy.internal:3128"
    configured = ElasticsearchSinkResource(
        sink_name="es", url="https://localhost:9200", index="x", ca_bundle=str(tmp_path / "own.pem")
    )
    session = SinkWriter(configured.settings())._session()
    assert session.verify == str(tmp_path / "own.pem")  # the sink's own setting wins, as before
    assert session.proxies == {}  # NO_PROXY still applies
