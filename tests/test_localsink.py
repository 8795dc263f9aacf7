"""The local sink against real HTTP on 127.0.0.1: Elasticsearch `_bulk` and Splunk HEC wire behaviour."""

import gzip
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests
from elasticsearch import Elasticsearch, helpers

from lakerelay.localsink import DEFAULT_HEC_TOKEN, FaultConfig, LocalSinkServer
from lakerelay.localsink.client import es_count, es_ids, fetch_stats, hec_events, reset, set_faults
from lakerelay.localsink.splunk import decode_events

PROJECT_ROOT = Path(__file__).resolve().parents[1]
HEC = {"Authorization": f"Splunk {DEFAULT_HEC_TOKEN}"}
NDJSON = {"Content-Type": "application/x-ndjson"}


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


def ndjson(*lines: Any) -> bytes:
    return b"".join(orjson.dumps(line) + b"\n" for line in lines)


def index_actions(index: str, ids: range, op: str = "index", **extra: Any) -> bytes:
    lines: list[Any] = []
    for i in ids:
        lines += [{op: {"_index": index, "_id": str(i)}}, {"n": i, **extra}]
    return ndjson(*lines)


def post_bulk(
    http: requests.Session, url: str, body: bytes, path: str = "/_bulk", **kw: Any
) -> requests.Response:
    headers = {**NDJSON, **kw.pop("headers", {})}
    return http.post(url + path, data=body, headers=headers, timeout=10, **kw)


def item(resp: requests.Response, n: int) -> dict[str, Any]:
    ((_, result),) = resp.json()["items"][n].items()
    return result


# --- Elasticsearch ---------------------------------------------------------------------------------


def test_info_head_and_product_header(sink_server: LocalSinkServer, http: requests.Session) -> None:
    resp = http.get(sink_server.url, timeout=5)
    assert resp.status_code == 200
    assert resp.headers["X-Elastic-Product"] == "Elasticsearch"
    assert resp.headers["Content-Type"] == "application/json"
    info = resp.json()
    assert info["version"]["number"] == "9.1.0"
    assert info["version"]["build_flavor"] == "default"
    assert info["tagline"] == "You Know, for Search"

    head = http.head(sink_server.url, timeout=5)
    assert head.status_code == 200 and head.headers["X-Elastic-Product"] == "Elasticsearch"

    compat = http.get(
        sink_server.url,
        headers={"Accept": "application/vnd.elasticsearch+json; compatible-with=9"},
        timeout=5,
    )
    assert compat.headers["Content-Type"] == "application/vnd.elasticsearch+json;compatible-with=9"


def test_bulk_index_create_and_conflict(sink_server: LocalSinkServer, http: requests.Session) -> None:
    resp = post_bulk(http, sink_server.url, index_actions("logs", range(3)))
    assert resp.status_code == 200
    body = resp.json()
    assert body["errors"] is False and len(body["items"]) == 3
    first = body["items"][0]["index"]
    assert first["status"] == 201 and first["result"] == "created" and first["_version"] == 1
    assert first["_primary_term"] == 1 and first["_shards"]["successful"] == 1
    assert [item(resp, n)["_id"] for n in range(3)] == ["0", "1", "2"]  # request order

    again = post_bulk(http, sink_server.url, index_actions("logs", range(2)))
    assert item(again, 0)["status"] == 200 and item(again, 0)["result"] == "updated"
    assert item(again, 0)["_version"] == 2

    conflict = post_bulk(http, sink_server.url, index_actions("logs", range(2, 4), op="create"))
    assert conflict.status_code == 200 and conflict.json()["errors"] is True
    clash = conflict.json()["items"][0]["create"]
    assert clash["status"] == 409
    assert clash["error"]["type"] == "version_conflict_engine_exception"
    assert clash["error"]["reason"] == "[2]: version conflict, document already exists (current version [1])"
    assert item(conflict, 1)["status"] == 201
    assert sink_server.es_count("logs") == 4


def test_bulk_path_index_auto_ids_delete_and_update(
    sink_server: LocalSinkServer, http: requests.Session
) -> None:
    body = ndjson(
        {"index": {}},
        {"a": 1},
        {"create": {}},
        {"a": 2},
        {"index": {"_id": "u"}},
        {"a": 3, "nested": {"x": 1}},
        {"update": {"_id": "u"}},
        {"doc": {"nested": {"y": 2}}},
        {"delete": {"_id": "missing"}},
        {"update": {"_id": "ghost"}},
        {"doc": {"a": 1}},
    )
    resp = post_bulk(http, sink_server.url, body, path="/paths/_bulk")
    assert resp.status_code == 200
    auto_id = item(resp, 0)["_id"]
    assert isinstance(auto_id, str) and len(auto_id) == 20 and item(resp, 0)["_index"] == "paths"
    assert item(resp, 1)["status"] == 201
    assert item(resp, 3)["result"] == "updated" and item(resp, 3)["_version"] == 2
    assert item(resp, 4)["status"] == 404 and item(resp, 4)["result"] == "not_found"
    assert item(resp, 5)["status"] == 404 and item(resp, 5)["error"]["type"] == "document_missing_exception"
    doc = http.get(f"{sink_server.url}/paths/_doc/u", timeout=5).json()
    assert doc["found"] is True and doc["_source"] == {"a": 3, "nested": {"x": 1, "y": 2}}

    gone = post_bulk(http, sink_server.url, ndjson({"delete": {"_index": "paths", "_id": "u"}}))
    assert item(gone, 0)["result"] == "deleted" and item(gone, 0)["status"] == 200
    assert sink_server.es_count("paths") == 2


def test_bulk_whole_request_errors_store_nothing(
    sink_server: LocalSinkServer, http: requests.Session
) -> None:
    no_newline = post_bulk(http, sink_server.url, index_actions("x", range(2))[:-1])
    assert no_newline.status_code == 400
    error = no_newline.json()["error"]
    assert error["type"] == "illegal_argument_exception"
    assert error["reason"] == "The bulk request must be terminated by a newline [\\n]"
    assert no_newline.json()["status"] == 400 and error["root_cause"][0]["type"] == error["type"]

    bad_json = post_bulk(http, sink_server.url, b'{"index":{"_index":"x"}\n{"a":1}\n')
    assert bad_json.status_code == 400 and bad_json.json()["error"]["type"] == "x_content_parse_exception"

    unknown_op = post_bulk(http, sink_server.url, ndjson({"upsert": {"_index": "x"}}, {"a": 1}))
    assert (
        unknown_op.status_code == 400 and unknown_op.json()["error"]["type"] == "illegal_argument_exception"
    )

    # As in ES, item validation (BulkRequest.validate) fails the whole request, valid items included.
    missing_index = post_bulk(
        http, sink_server.url, index_actions("x", range(1)) + ndjson({"index": {}}, {"a": 1})
    )
    assert missing_index.status_code == 400
    assert missing_index.json()["error"]["type"] == "action_request_validation_exception"
    assert "index is missing" in missing_index.json()["error"]["reason"]
    assert sink_server.es_count("x") == 0


def test_bulk_per_item_parse_errors(sink_server: LocalSinkServer, http: requests.Session) -> None:
    body = b'{"index":{"_index":"p","_id":"1"}}\n[1,2]\n{"index":{"_index":"p","_id":"2"}}\n{"a":}\n'
    body += ndjson(
        {"index": {"_index": "Upper", "_id": "3"}}, {"a": 1}, {"index": {"_index": "p", "_id": "4"}}, {"a": 1}
    )
    resp = post_bulk(http, sink_server.url, body)
    assert resp.status_code == 200 and resp.json()["errors"] is True
    statuses = [(item(resp, n)["status"], item(resp, n).get("error", {}).get("type")) for n in range(4)]
    assert statuses == [
        (400, "document_parsing_exception"),
        (400, "document_parsing_exception"),
        (400, "invalid_index_name_exception"),
        (201, None),
    ]
    assert es_ids(sink_server.url, "p") == ["4"]


def test_bulk_rejected_value_is_a_per_item_400(sink_server: LocalSinkServer, http: requests.Session) -> None:
    set_faults(sink_server.url, reject_field="kind", reject_values=["poison", 13])
    body = ndjson(
        {"index": {"_index": "r", "_id": "ok"}},
        {"kind": "fine"},
        {"index": {"_index": "r", "_id": "bad"}},
        {"kind": "poison"},
        {"create": {"_index": "r", "_id": "num"}},
        {"kind": 13},
        {"create": {"_index": "r", "_id": "str13"}},
        {"kind": "13"},
    )
    resp = post_bulk(http, sink_server.url, body)
    assert [item(resp, n)["status"] for n in range(4)] == [201, 400, 400, 201]
    assert item(resp, 1)["error"]["type"] == "document_parsing_exception"
    assert sorted(es_ids(sink_server.url, "r")) == ["ok", "str13"]
    assert fetch_stats(sink_server.url)["faults"]["injected"] == {"reject_field": 2}


def _item_429_run(http: requests.Session, url: str) -> list[int]:
    resp = post_bulk(http, url, index_actions("busy", range(200)))
    assert resp.status_code == 200
    return [item(resp, n)["status"] for n in range(200)]


def statuses_items(http: requests.Session, url: str) -> list[dict[str, Any]]:
    resp = post_bulk(http, url, index_actions("busy", range(50)))
    return [next(iter(entry.values())) for entry in resp.json()["items"]]


def test_bulk_item_429_is_seeded_and_not_stored(sink_server: LocalSinkServer, http: requests.Session) -> None:
    set_faults(sink_server.url, seed=7, item_429_rate=0.25)
    statuses = _item_429_run(http, sink_server.url)
    rejected = statuses.count(429)
    assert 20 < rejected < 80 and set(statuses) == {201, 429}
    assert sink_server.es_count("busy") == 200 - rejected

    reset(sink_server.url)  # clears data and counters, restarts the seeded sequence
    assert _item_429_run(http, sink_server.url) == statuses
    stats = fetch_stats(sink_server.url)
    assert stats["faults"]["injected"] == {"item_429": rejected}
    assert stats["es"]["items_by_status"] == {"201": 200 - rejected, "429": rejected}

    rejected_item = next(item for item in statuses_items(http, sink_server.url) if item["status"] == 429)
    assert rejected_item["error"]["type"] == "es_rejected_execution_exception"


def test_request_level_faults(sink_server: LocalSinkServer, http: requests.Session) -> None:
    sink_server.set_faults(FaultConfig(request_429_rate=1.0))
    busy = post_bulk(http, sink_server.url, index_actions("f", range(1)))
    assert busy.status_code == 429 and busy.headers["Retry-After"] == "1"
    assert busy.json()["error"]["type"] == "es_rejected_execution_exception"
    hec = http.post(
        f"{sink_server.url}/services/collector/event", data=b'{"event":"x"}', headers=HEC, timeout=5
    )
    assert hec.status_code == 429

    sink_server.set_faults({"request_503_rate": 1.0})
    assert post_bulk(http, sink_server.url, index_actions("f", range(1))).status_code == 503
    hec = http.post(
        f"{sink_server.url}/services/collector/event", data=b'{"event":"x"}', headers=HEC, timeout=5
    )
    assert hec.status_code == 503 and hec.json() == {"text": "Server is busy", "code": 9}
    assert http.get(f"{sink_server.url}/_count", timeout=5).status_code == 200  # reads never fail
    assert sink_server.es_count("f") == 0 and sink_server.hec_count() == 0
    assert sink_server.stats()["faults"]["injected"] == {"request_429": 2, "request_503": 2}


def test_bulk_gzip_body(sink_server: LocalSinkServer, http: requests.Session) -> None:
    body = gzip.compress(index_actions("gz", range(50)))
    resp = post_bulk(http, sink_server.url, body, headers={"Content-Encoding": "gzip"})
    assert resp.status_code == 200 and resp.json()["errors"] is False
    assert sink_server.es_count("gz") == 50
    http_stats = fetch_stats(sink_server.url)["http"]
    assert http_stats["bytes_received"] == len(body) < http_stats["bytes_decoded"]

    broken = post_bulk(http, sink_server.url, b"not gzip", headers={"Content-Encoding": "gzip"})
    assert broken.status_code == 400 and broken.headers["X-Elastic-Product"] == "Elasticsearch"


def test_body_size_limit_applies_after_decompression(http: requests.Session) -> None:
    with LocalSinkServer(max_content_length=4096) as server:
        too_big = post_bulk(http, server.url, index_actions("big", range(100)))
        assert too_big.status_code == 413 and too_big.headers["X-Elastic-Product"] == "Elasticsearch"
        bomb = gzip.compress(index_actions("big", range(100)))
        assert len(bomb) < 4096
        zipped = post_bulk(http, server.url, bomb, headers={"Content-Encoding": "gzip"})
        assert zipped.status_code == 413
        assert post_bulk(http, server.url, index_actions("big", range(3))).status_code == 200
        assert server.es_count("big") == 3


def test_count_doc_refresh_and_filter_path(sink_server: LocalSinkServer, http: requests.Session) -> None:
    url = sink_server.url
    post_bulk(http, url, index_actions("c1", range(3)) + index_actions("c2", range(2)))
    assert http.get(f"{url}/c1/_count", timeout=5).json()["count"] == 3
    assert http.post(f"{url}/c1,c2/_count", json={"query": {"match_all": {}}}, timeout=5).json()["count"] == 5
    assert http.get(f"{url}/c*/_count", timeout=5).json()["count"] == 5
    missing = http.get(f"{url}/nope/_count", timeout=5)
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "index_not_found_exception"
    assert missing.headers["X-Elastic-Product"] == "Elasticsearch"
    assert http.post(f"{url}/c1/_refresh", timeout=5).status_code == 200
    assert http.get(f"{url}/c1/_doc/2", timeout=5).json()["_source"] == {"n": 2}
    assert http.get(f"{url}/c1/_doc/9", timeout=5).json() == {"_index": "c1", "_id": "9", "found": False}

    body = index_actions("c1", range(1), op="create") + index_actions("c1", range(5, 6))
    filtered = post_bulk(http, url, body, params={"filter_path": "errors,items.*.error,items.*._id"})
    assert filtered.json() == {
        "errors": True,
        "items": [
            {"create": {"_id": "0", "error": filtered.json()["items"][0]["create"]["error"]}},
            {"index": {"_id": "5"}},
        ],
    }


def test_es_api_key_auth(http: requests.Session) -> None:
    with LocalSinkServer(es_api_key="kid:secret") as server:
        denied = http.get(server.url, timeout=5)
        assert denied.status_code == 401
        assert denied.json()["error"]["type"] == "security_exception"
        assert "ApiKey" in denied.headers["WWW-Authenticate"]
        wrong = http.get(server.url, headers={"Authorization": "ApiKey bm9wZTpub3Bl"}, timeout=5)
        assert wrong.status_code == 401
        client = Elasticsearch(server.url, api_key=("kid", "secret"))
        assert client.info()["tagline"] == "You Know, for Search"
        # Admin reads stay open so tests can always inspect the sink.
        assert http.get(f"{server.url}/_localsink/stats", timeout=5).status_code == 200


def test_official_elasticsearch_client(sink_server: LocalSinkServer) -> None:
    client = Elasticsearch(sink_server.url, request_timeout=10)
    try:
        assert client.info()["version"]["number"] == "9.1.0"
        actions = (
            {"_index": "official", "_id": f"doc-{i}", "_source": {"seq": i, "msg": "hello"}}
            for i in range(500)
        )
        ok, errors = helpers.bulk(client, actions, chunk_size=200)
        assert (ok, errors) == (500, [])
        assert client.count(index="official")["count"] == 500
        assert client.get(index="official", id="doc-7")["_source"] == {"seq": 7, "msg": "hello"}
        # Replaying the same ids overwrites: still 500, no duplicates.
        helpers.bulk(client, ({"_index": "official", "_id": f"doc-{i}", "n": i} for i in range(500)))
        assert client.count(index="official")["count"] == 500
        assert len(set(es_ids(sink_server.url, "official"))) == 500
    finally:
        client.close()


# --- Splunk HEC ------------------------------------------------------------------------------------


def hec_post(
    http: requests.Session, url: str, body: bytes, headers: dict[str, str] | None = None
) -> requests.Response:
    return http.post(
        f"{url}/services/collector/event", data=body, headers=HEC if headers is None else headers, timeout=5
    )


def test_hec_success_and_concatenated_events(sink_server: LocalSinkServer, http: requests.Session) -> None:
    one = hec_post(http, sink_server.url, b'{"event": "hello", "sourcetype": "demo"}')
    assert one.status_code == 200 and one.json() == {"text": "Success", "code": 0}
    glued = b'{"event":{"a":1},"time":1700000000.5}{"event":"b","index":"sec"}  {\n "event": "c",\n "fields": {"k": "v"}\n}\n'
    resp = http.post(f"{sink_server.url}/services/collector", data=glued, headers=HEC, timeout=5)
    assert resp.json() == {"text": "Success", "code": 0}
    assert sink_server.hec_count() == 3 and sink_server.hec_count("sec") == 1
    events = hec_events(sink_server.url)
    assert [e["event"] for e in events] == ["hello", {"a": 1}, "c"]
    zipped = hec_post(
        http, sink_server.url, gzip.compress(b'{"event":"z"}\n' * 10), {**HEC, "Content-Encoding": "gzip"}
    )
    assert zipped.status_code == 200 and sink_server.hec_count() == 13


def test_hec_invalid_event_number_keeps_earlier_events(
    sink_server: LocalSinkServer, http: requests.Session
) -> None:
    body = b'{"event":"e0"}\n{"event":"e1"}\n{"event": oops}\n{"event":"e3"}\n'
    resp = hec_post(http, sink_server.url, body)
    assert resp.status_code == 400
    assert resp.json() == {"text": "Invalid data format", "code": 6, "invalid-event-number": 2}
    assert [e["event"] for e in hec_events(sink_server.url)] == ["e0", "e1"]

    cases = [
        (b'{"event":"a"}{"time":1}', 12, "Event field is required", 1),
        (b'{"event":""}', 13, "Event field cannot be blank", 0),
        (b'["not","an","object"]', 6, "Invalid data format", 0),
    ]
    for body, code, text, number in cases:
        resp = hec_post(http, sink_server.url, body)
        assert resp.status_code == 400
        assert resp.json() == {"text": text, "code": code, "invalid-event-number": number}
    empty = hec_post(http, sink_server.url, b"  \n")
    assert empty.status_code == 400 and empty.json() == {"text": "No data", "code": 5}

    set_faults(sink_server.url, reject_field="level", reject_values=["poison"])
    rejected = hec_post(http, sink_server.url, b'{"event":{"level":"ok"}}{"event":{"level":"poison"}}')
    assert rejected.json() == {"text": "Invalid data format", "code": 6, "invalid-event-number": 1}


def test_hec_auth_codes_and_health(sink_server: LocalSinkServer, http: requests.Session) -> None:
    body = b'{"event":"x"}'
    missing = hec_post(http, sink_server.url, body, headers={})
    assert (missing.status_code, missing.json()) == (401, {"text": "Token is required", "code": 2})
    bad_scheme = hec_post(
        http, sink_server.url, body, headers={"Authorization": f"Bearer {DEFAULT_HEC_TOKEN}"}
    )
    assert (bad_scheme.status_code, bad_scheme.json()) == (401, {"text": "Invalid authorization", "code": 3})
    wrong = hec_post(http, sink_server.url, body, headers={"Authorization": "Splunk nope"})
    assert (wrong.status_code, wrong.json()) == (403, {"text": "Invalid token", "code": 4})
    assert sink_server.hec_count() == 0
    health = http.get(f"{sink_server.url}/services/collector/health", timeout=5)
    assert (health.status_code, health.json()) == (200, {"text": "HEC is healthy", "code": 17})
    ack = http.post(f"{sink_server.url}/services/collector/ack", json={"acks": [0]}, headers=HEC, timeout=5)
    assert (ack.status_code, ack.json()) == (400, {"text": "ACK is disabled", "code": 14})


def test_hec_ack_flow_and_allowed_indexes(http: requests.Session) -> None:
    with LocalSinkServer(hec_ack=True, hec_indexes=["main", "sec"]) as server:
        no_channel = hec_post(http, server.url, b'{"event":"x"}')
        assert (no_channel.status_code, no_channel.json()["code"]) == (400, 10)
        bad_channel = hec_post(
            http, server.url, b'{"event":"x"}', {**HEC, "X-Splunk-Request-Channel": "nope"}
        )
        assert bad_channel.json()["code"] == 11
        headers = {**HEC, "X-Splunk-Request-Channel": str(uuid.uuid4())}
        ack_ids = [hec_post(http, server.url, b'{"event":"x"}', headers).json()["ackId"] for _ in range(3)]
        assert ack_ids == [0, 1, 2]
        wrong_index = hec_post(http, server.url, b'{"event":"x"}{"event":"y","index":"other"}', headers)
        assert wrong_index.json() == {"text": "Incorrect index", "code": 7, "invalid-event-number": 1}
        query = http.post(
            f"{server.url}/services/collector/ack", json={"acks": [0, 2, 9]}, headers=headers, timeout=5
        )
        assert query.json() == {"acks": {"0": True, "2": True, "9": False}}
        # An ack reported true is released, as Splunk does; the next query reports it unknown.
        again = http.post(
            f"{server.url}/services/collector/ack", json={"acks": [0, 1]}, headers=headers, timeout=5
        )
        assert again.json() == {"acks": {"0": False, "1": True}}
        assert server.hec_count() == 4


# --- admin, lifecycle, CLI -------------------------------------------------------------------------


def test_admin_stats_ids_and_reset(sink_server: LocalSinkServer, http: requests.Session) -> None:
    url = sink_server.url
    post_bulk(http, url, index_actions("adm", range(4)) + index_actions("adm", range(1), op="create"))
    hec_post(http, url, b'{"event":"a"}{"event":"b"}')
    stats = fetch_stats(url)
    assert stats["es"]["indices"] == {"adm": 4} and stats["es"]["bulk_requests"] == 1
    assert stats["es"]["items_by_status"] == {"201": 4, "409": 1}
    assert stats["hec"]["indices"] == {"main": 2} and stats["hec"]["requests"] == 1
    assert stats["http"]["bytes_received"] > 0
    assert sorted(es_ids(url, "adm")) == ["0", "1", "2", "3"] and es_count(url, "adm") == 4
    assert http.get(f"{url}/_localsink/es/nope/ids", timeout=5).status_code == 404
    assert (
        len(http.get(f"{url}/_localsink/hec/main/events", params={"limit": 1}, timeout=5).json()["events"])
        == 1
    )
    assert http.get(f"{url}/_localsink/faults", timeout=5).json()["item_429_rate"] == 0.0
    bad = http.post(f"{url}/_localsink/faults", json={"item_429_rate": 2}, timeout=5)
    assert bad.status_code == 400

    reset(url)
    stats = fetch_stats(url)
    assert stats["es"]["indices"] == {} and stats["hec"]["events"] == 0 and stats["es"]["bulk_requests"] == 0


def test_stop_closes_keep_alive_connections(http: requests.Session) -> None:
    server = LocalSinkServer().start()
    url = server.url
    assert http.get(url, timeout=5).status_code == 200  # leaves a pooled keep-alive connection open
    server.stop()
    with pytest.raises(requests.ConnectionError):
        http.get(url, timeout=5)
    server.stop()  # idempotent


def test_decode_events_unit() -> None:
    assert decode_events(b'{"a":1}\n\n{"b":2}') == ([{"a": 1}, {"b": 2}], None)
    assert decode_events(b'{"a":1}{"b":\n2} {"c":3}') == ([{"a": 1}, {"b": 2}, {"c": 3}], None)
    assert decode_events(b'{"a":1}\n{"b":NaN}\n') == ([{"a": 1}], 1)
    assert decode_events(b'{"a":1} x') == ([{"a": 1}], 1)


CLI_ARGS = ["--port", "0", "--seed", "5", "--item-429-rate", "1", "--hec-token", "cli-token"]


def test_cli_port_file_flags_and_sigterm(tmp_path: Path) -> None:
    port_file = tmp_path / "sink.port"
    proc = subprocess.Popen(
        [sys.executable, "-m", "lakerelay.localsink", *CLI_ARGS, "--port-file", str(port_file)],
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        deadline = time.monotonic() + 20
        while not port_file.exists():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "localsink CLI did not write its port file"
            time.sleep(0.05)
        port = int(port_file.read_text())
        url = f"http://127.0.0.1:{port}"
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == f"localsink listening on {url}"
        resp = requests.get(url, timeout=5)
        assert resp.status_code == 200 and resp.headers["X-Elastic-Product"] == "Elasticsearch"
        assert requests.get(f"{url}/_localsink/faults", timeout=5).json()["item_429_rate"] == 1.0
        rejected = requests.post(
            f"{url}/_bulk", data=index_actions("cli", range(2)), headers=NDJSON, timeout=5
        )
        assert {entry["index"]["status"] for entry in rejected.json()["items"]} == {429}
        token = {"Authorization": "Splunk cli-token"}
        hec = requests.post(f"{url}/services/collector", data=b'{"event":"x"}', headers=token, timeout=5)
        assert hec.json() == {"text": "Success", "code": 0}

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def test_health_generic_collector_and_its_admin_view(
    sink_server: LocalSinkServer, http: requests.Session
) -> None:
    assert http.get(f"{sink_server.url}/health").json() == {"status": "ok"}
    array = http.post(f"{sink_server.url}/_generic/things", json=[{"n": 1}, {"n": 2}])
    lines = http.post(f"{sink_server.url}/_generic/things", data=ndjson({"n": 3}), headers=NDJSON)
    assert (array.json(), lines.json()) == ({"accepted": 2}, {"accepted": 1})
    assert http.post(f"{sink_server.url}/_generic/things", data=b"{not json").status_code == 400
    view = http.get(f"{sink_server.url}/_localsink/generic/things").json()
    assert view["count"] == 3 and sink_server.generic_records("things")[2] == {"n": 3}


def test_connection_reset_fault_drops_the_connection_without_an_answer(
    sink_server: LocalSinkServer, http: requests.Session
) -> None:
    sink_server.set_faults({"seed": 1, "connection_reset_rate": 1.0})
    with pytest.raises(requests.ConnectionError):
        http.post(f"{sink_server.url}/_bulk", data=index_actions("r", range(3)), headers=NDJSON)
    # Reads never fail: only ingest paths are hit.
    assert http.get(f"{sink_server.url}/_localsink/stats").ok
    injected = sink_server.stats()["faults"]["injected"]
    assert sum(v for k, v in injected.items() if k.startswith("connection_reset_")) == 1
    with pytest.raises(ValueError, match="connection_reset_rate"):
        FaultConfig(connection_reset_rate=2.0)


def test_bulk_items_encoded_from_templates_match_the_full_document() -> None:
    """The pre-encoded item fast path must give exactly the JSON the dict-building path gave."""
    from lakerelay.localsink.es_bulk import SHARDS, BulkResponse, bulk
    from lakerelay.localsink.faults import FaultInjector
    from lakerelay.localsink.store import SinkStore

    store = SinkStore()
    body = ndjson(
        {"index": {"_index": "enc", "_id": 'q"\\ü'}},
        {"n": 1},
        {"index": {"_index": "enc", "_id": 'q"\\ü'}},
        {"n": 2},
        {"create": {"_index": "enc", "_id": "c"}},
        {"n": 3},
        {"create": {"_index": "enc", "_id": "c"}},
        {"n": 4},
        {"delete": {"_index": "enc", "_id": "absent"}},
    )
    status, response = bulk(body, None, store, FaultInjector())
    assert status == 200 and isinstance(response, BulkResponse)
    payload = orjson.loads(response.encode())
    assert payload == response.payload()
    assert list(payload) == ["took", "errors", "items"]
    assert payload["errors"] is True
    ok = {"_index": "enc", "_shards": SHARDS, "_primary_term": 1}
    items = payload["items"]
    assert items[0] == {
        "index": {**ok, "_id": 'q"\\ü', "_version": 1, "result": "created", "_seq_no": 0, "status": 201}
    }
    assert list(items[0]["index"]) == [
        "_index", "_id", "_version", "result", "_shards", "_seq_no", "_primary_term", "status"
    ]  # fmt: skip
    assert items[1]["index"]["result"] == "updated" and items[1]["index"]["_version"] == 2
    assert items[2]["create"]["status"] == 201
    assert items[3]["create"]["status"] == 409
    assert items[3]["create"]["error"]["type"] == "version_conflict_engine_exception"
    assert items[4] == {
        "delete": {**ok, "_id": "absent", "_version": 1, "result": "not_found", "_seq_no": 3, "status": 404}
    }
    assert store.es_sources("enc") == [('q"\\ü', b'{"n":2}'), ("c", b'{"n":3}')]

    # A 404 for a missing document is not an error: `errors` stays false.
    _, only_ok = bulk(ndjson({"delete": {"_index": "enc", "_id": "gone"}}), None, store, FaultInjector())
    assert isinstance(only_ok, BulkResponse) and only_ok.payload()["errors"] is False


def test_decode_events_hands_the_right_offset_to_the_slow_path() -> None:
    body = b'{"a":1}\r\n\n{"b":\n2}\n{"c":3}\n'
    assert decode_events(body) == ([{"a": 1}, {"b": 2}, {"c": 3}], None)
    assert decode_events(b'{"a":1}\n\n{"b":2}{"c":\n3}\n{') == ([{"a": 1}, {"b": 2}, {"c": 3}], 3)
