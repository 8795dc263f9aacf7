"""Dead-letter replay against the local sink: real rejections become dead letters, the cause is fixed,
the replay job and the CLI re-post them, and the sink and the replays table say what happened.

The dead letters are made without Spark: a real ``SinkWriter`` posts to the local sink while it
rejects chosen documents (a mapping 400), and its rejections go through ``append_dead_letters`` as
the post job's would.
"""

import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from dagster import DagsterInstance, DagsterRunStatus

from lakerelay.localsink import LocalSinkServer
from pipelines.post.dead_letters import DEAD_LETTER_TABLE, append_dead_letters
from pipelines.post.letters import REPLAY_TABLE
from pipelines.post.replay_job import build_replay_job, replay_job_name, replay_op_name
from resources.lake import LakeResource
from resources.sinks.resource import ElasticsearchSinkResource, RestSinkResource, SplunkHecSinkResource
from resources.sinks.writer import SinkWriter

from helpers import dagster_cli_env, delta_table, local_lake

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent
BASE = datetime(2026, 1, 1, tzinfo=UTC)
NOT_AN_OBJECT = b'["not", "an", "object"]'  # rejected by any Elasticsearch mapping: never fixable


def event(i: int) -> dict:
    ts = BASE + timedelta(seconds=i, microseconds=250_000)
    return {"event_id": f"e{i}", "ts": ts.isoformat().replace("+00:00", "Z"), "severity": "info"}


def post_batch(
    lake: LakeResource,
    sink: RestSinkResource,
    batch_to: int,
    events: list[dict],
    extra_docs: dict[str, bytes] | None = None,
) -> int:
    """Post ``events`` (plus raw ``extra_docs`` by id) with a real writer; dead-letter what the sink rejects."""
    es = sink.settings().kind == "elasticsearch"
    docs = [orjson.dumps(e) for e in events] + list((extra_docs or {}).values())
    ids = [f"id-{e['event_id']}" for e in events] + list(extra_docs or {})
    times = [datetime.fromisoformat(e["ts"]).timestamp() for e in events] + [None] * len(extra_docs or {})
    writer = SinkWriter(sink.settings())
    with writer:
        # Like the post job: Elasticsearch records carry an id and no time; HEC records a time and no id.
        writer.add_arrow(
            pa.array(ids if es else [""] * len(docs), pa.string()),
            pa.array(docs, pa.binary()),
            pa.array([None] * len(docs) if es else times, pa.float64()),
        )
        outcome = writer.close()
    assert outcome.accepted + len(outcome.rejected) == len(docs)
    rejected = pa.table(
        {
            "record_id": pa.array([r.record.id for r in outcome.rejected], pa.string()),
            "record": pa.array([r.record.doc for r in outcome.rejected], pa.binary()),
            "status": pa.array([r.status for r in outcome.rejected], pa.int32()),
            "error_type": pa.array([r.error_type for r in outcome.rejected], pa.string()),
            "reason": pa.array([r.reason for r in outcome.rejected], pa.string()),
        }
    )
    append_dead_letters(
        lake.table_uri(DEAD_LETTER_TABLE),
        lake.storage_options(),
        sink.sink_name,
        "events",
        batch_to,
        batch_to,
        rejected,
    )
    time.sleep(0.01)  # distinct dead_lettered_at per batch, for the time-window filters
    return len(outcome.rejected)


def replay(sink_key: str, sink: RestSinkResource, lake: LakeResource, raise_on_error: bool = True, **config):
    """Run the replay job; returns (result, summary output, output metadata)."""
    result = build_replay_job(sink_key).execute_in_process(
        resources={"lake": lake, sink_key: sink},
        run_config={"ops": {replay_op_name(sink_key): {"config": config}}},
        raise_on_error=raise_on_error,
    )
    if not result.success:
        return result, None, None
    [output] = [e for e in result.all_node_events if e.is_successful_output]
    metadata = {k: v.value for k, v in output.step_output_data.metadata.items()}
    return result, result.output_for_node(replay_op_name(sink_key)), metadata


def replays(lake: LakeResource) -> pa.Table:
    return delta_table(lake, REPLAY_TABLE)


def has_table(lake: LakeResource, name: str) -> bool:
    return (Path(lake.table_uri(name)) / "_delta_log").is_dir()


def es_sink(server: LocalSinkServer, **options) -> ElasticsearchSinkResource:
    return ElasticsearchSinkResource(sink_name="elasticsearch", url=server.url, index="events", **options)


def make_es_dead_letters(lake: LakeResource, server: LocalSinkServer, **options) -> ElasticsearchSinkResource:
    """Batch 1: e0..e19, e3 and e7 rejected. Batch 2: e20..e39, e25 rejected, and a document no mapping takes."""
    sink = es_sink(server, **options)
    server.set_faults({"reject_field": "event_id", "reject_values": ["e3", "e7", "e25"]})
    assert post_batch(lake, sink, 1, [event(i) for i in range(20)]) == 2
    assert post_batch(lake, sink, 2, [event(i) for i in range(20, 40)], {"id-array": NOT_AN_OBJECT}) == 2
    assert server.es_count("events") == 37
    server.set_faults(None)  # "the mapping is fixed": the field is accepted from now on
    return sink


def test_replay_job_reposts_fixed_letters_once_with_their_ids_and_records_them(
    tmp_path: Path, sink_server
) -> None:
    lake = local_lake(tmp_path)
    sink = make_es_dead_letters(lake, sink_server)
    requests_before = sink_server.stats()["es"]["bulk_requests"]

    # A dry run shows the four letters and posts and records nothing.
    _, summary, meta = replay("elasticsearch", sink, lake, dry_run=True)
    assert (meta["selected"], meta["replayed"], meta["dry_run"]) == (4, 0, True)
    assert sorted(r["record_id"] for r in summary["letters"]) == ["id-array", "id-e25", "id-e3", "id-e7"]
    assert sink_server.stats()["es"]["bulk_requests"] == requests_before
    assert not has_table(lake, REPLAY_TABLE)

    # Batch 1 only: its two letters land under the ids they were rejected with.
    _, summary, meta = replay("elasticsearch", sink, lake, batch_to=1)
    assert (meta["selected"], meta["replayed"], meta["accepted"], meta["rejected_again"]) == (2, 2, 2, 0)
    assert isinstance(meta["selected"], int) and meta["replay_id"] == summary["replay_id"] != ""
    assert sink_server.es_count("events") == 39
    assert {"id-e3", "id-e7"} <= set(sink_server.es_ids("events"))
    first = replays(lake)
    assert sorted(first["record_id"].to_pylist()) == ["id-e3", "id-e7"]
    assert set(first["outcome"].to_pylist()) == {"accepted"}
    assert set(first["batch_to"].to_pylist()) == {1}
    assert set(first["replay_id"].to_pylist()) == {summary["replay_id"]}

    # Everything else: batch 1 is skipped (replayed), e25 lands, the array is rejected again.
    _, summary, meta = replay("elasticsearch", sink, lake)
    assert (meta["matched"], meta["skipped_already_replayed"], meta["selected"]) == (4, 2, 2)
    assert (meta["accepted"], meta["rejected_again"]) == (1, 1)
    assert sink_server.es_count("events") == 40
    [again] = summary["rejections"]
    assert again["record_id"] == "id-array" and again["status"] == 400
    assert "must start with an object" in again["reason"]
    second = replays(lake).filter(pc.equal(replays(lake)["replay_id"], summary["replay_id"]))
    assert sorted(zip(second["record_id"].to_pylist(), second["outcome"].to_pylist(), strict=True)) == [
        ("id-array", "rejected"),
        ("id-e25", "accepted"),
    ]

    # A letter rejected again stays eligible; the accepted ones do not come back.
    _, summary, meta = replay("elasticsearch", sink, lake)
    assert (meta["selected"], meta["skipped_already_replayed"], meta["rejected_again"]) == (1, 3, 1)
    assert [r["record_id"] for r in summary["letters"]] == ["id-array"]

    # Replaying accepted letters again on purpose (filters: error type and reason text) overwrites:
    # the sink still holds every record exactly once.
    _, summary, meta = replay(
        "elasticsearch",
        sink,
        lake,
        include_replayed=True,
        error_type="document_parsing_exception",
        reason_contains="LOCALSINK FAULT",
    )
    assert (meta["selected"], meta["accepted"], meta["rejected_again"]) == (3, 3, 0)
    ids = sink_server.es_ids("events")
    assert sink_server.es_count("events") == 40 and len(ids) == len(set(ids)) == 40
    assert set(ids) == {f"id-e{i}" for i in range(40)}
    assert replays(lake).num_rows == 2 + 2 + 1 + 3


def test_filters_select_only_what_they_should(tmp_path: Path, sink_server) -> None:
    lake = local_lake(tmp_path)
    sink = make_es_dead_letters(lake, sink_server)
    dead = delta_table(lake, DEAD_LETTER_TABLE)
    batch2_at = min(
        t
        for t, b in zip(dead["dead_lettered_at"].to_pylist(), dead["batch_to"].to_pylist(), strict=True)
        if b == 2
    ).isoformat()

    def chosen(**config) -> list[str]:
        _, summary, _ = replay("elasticsearch", sink, lake, dry_run=True, **config)
        return sorted(r["record_id"] for r in summary["letters"])

    assert chosen(since=batch2_at) == ["id-array", "id-e25"]
    assert chosen(until=batch2_at) == ["id-e3", "id-e7"]
    assert chosen(batch_to=2, error_type="document_parsing_exception", reason_contains="event_id") == [
        "id-e25"
    ]
    assert chosen(reason_contains="must start with an object") == ["id-array"]
    assert chosen(error_type="no_such_error") == []
    assert chosen(source_table="other_table") == []
    assert chosen(limit=3) == ["id-e25", "id-e3", "id-e7"]  # oldest first: batch 1, then batch 2's first
    # Letters of another sink are never picked up by this one.
    other = ElasticsearchSinkResource(sink_name="es-archive", url=sink_server.url, index="archive")
    assert replay("elasticsearch", other, lake, dry_run=True)[2]["selected"] == 0
    # A bad instant is a failed run with a message saying what to type.
    result, _, _ = replay("elasticsearch", sink, lake, raise_on_error=False, since="last tuesday")
    [failure] = [e for e in result.all_events if e.is_step_failure]
    assert "not an ISO 8601 date or time" in failure.step_failure_data.error.message
    assert sink_server.es_count("events") == 37


def test_splunk_replay_sends_each_letter_with_its_event_time(tmp_path: Path, sink_server) -> None:
    lake = local_lake(tmp_path)
    sink = SplunkHecSinkResource(
        sink_name="splunk", url=sink_server.url, token="lakerelay-local-hec-token", backoff_initial_s=0.01
    )
    sink_server.set_faults({"reject_field": "event_id", "reject_values": ["e2", "e5", "e8"]})
    assert post_batch(lake, sink, 1, [event(i) for i in range(10)]) == 3
    assert sink_server.hec_count("main") == 7
    sink_server.set_faults(None)

    _, _, meta = replay("splunk", sink, lake)

    # HEC letters have no record id: each is still replayed (and recorded) on its own.
    assert (meta["selected"], meta["accepted"], meta["rejected_again"]) == (3, 3, 0)
    events = {e["event"]["event_id"]: e for e in sink_server.hec_events("main")}
    assert sorted(events) == sorted(f"e{i}" for i in range(10)) and sink_server.hec_count("main") == 10
    for i in (2, 5, 8):
        assert events[f"e{i}"]["time"] == pytest.approx(datetime.fromisoformat(event(i)["ts"]).timestamp())
    recorded = replays(lake)
    assert recorded.num_rows == 3 and len(set(recorded["letter_id"].to_pylist())) == 3
    assert set(recorded["sink"].to_pylist()) == {"splunk"}
    # HEC has no ids: a second replay must not send them again.
    assert replay("splunk", sink, lake)[2]["selected"] == 0
    assert sink_server.hec_count("main") == 10


def test_wrong_credentials_fail_before_posting_and_record_nothing(tmp_path: Path) -> None:
    lake = local_lake(tmp_path)
    with LocalSinkServer(es_api_key="right-key") as server:
        make_es_dead_letters(lake, server, api_key="right-key")
        requests_before = server.stats()["es"]["bulk_requests"]
        bad = es_sink(server, api_key="wrong-key")

        result, _, _ = replay("elasticsearch", bad, lake, raise_on_error=False)

        assert not result.success
        [failure] = [e for e in result.all_events if e.is_step_failure]
        message = failure.step_failure_data.error.message
        assert "refused the credentials with HTTP 401" in message and "wrong-key" not in message
        assert server.stats()["es"]["bulk_requests"] == requests_before
    assert not has_table(lake, REPLAY_TABLE)


def test_letters_still_pending_at_the_deadline_fail_the_replay_and_stay_eligible(
    tmp_path: Path, sink_server
) -> None:
    lake = local_lake(tmp_path)
    sink = make_es_dead_letters(lake, sink_server)
    sink_server.set_faults({"request_503_rate": 1.0})  # the sink is down
    flaky = es_sink(sink_server, delivery_timeout_s=0.5, backoff_initial_s=0.05, backoff_max_s=0.1)

    result, _, _ = replay("elasticsearch", flaky, lake, raise_on_error=False)

    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    assert "pending" in failure.step_failure_data.error.message
    assert not has_table(lake, REPLAY_TABLE)  # nothing rejected, and nothing known to be accepted
    sink_server.set_faults(None)
    _, _, meta = replay("elasticsearch", sink, lake)
    assert (meta["selected"], meta["accepted"], meta["rejected_again"]) == (4, 3, 1)
    assert sink_server.es_count("events") == 40


def cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipelines.post.replay_cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_lists_and_replays_and_the_runs_are_recorded_in_dagster(tmp_path: Path, sink_server) -> None:
    env = dagster_cli_env(tmp_path, sink_server.url)
    lake = local_lake(tmp_path)  # what the deployment builds from LAKERELAY_HOME
    make_es_dead_letters(lake, sink_server)

    listed = cli(["list"], env)
    assert listed.returncode == 0, listed.stderr
    lines = [line.split() for line in listed.stdout.splitlines()]
    assert ["elasticsearch", "events", "1", "document_parsing_exception", "2", "0", "2"] in lines
    assert ["elasticsearch", "events", "2", "document_parsing_exception", "2", "0", "2"] in lines

    dry = cli(["replay", "--sink", "elasticsearch", "--dry-run"], env)
    assert dry.returncode == 0, dry.stderr
    assert "dry run: nothing posted" in dry.stdout and "'id-e25'" in dry.stdout
    assert sink_server.es_count("events") == 37

    one = cli(["replay", "--sink", "elasticsearch", "--batch", "1", "--limit", "5"], env)
    assert one.returncode == 0, one.stdout + one.stderr
    assert "accepted                 2" in one.stdout
    assert sink_server.es_count("events") == 39

    rest = cli(["replay", "--sink", "elasticsearch", "--table", "events"], env)
    assert rest.returncode == 1, rest.stdout + rest.stderr  # the array is rejected again
    assert "rejected again: record 'id-array'" in rest.stdout
    assert sink_server.es_count("events") == 40
    ids = sink_server.es_ids("events")
    assert len(ids) == len(set(ids)) == 40

    listed = cli(["list", "--sink", "elasticsearch"], env)
    assert ["elasticsearch", "events", "2", "document_parsing_exception", "2", "1", "1"] in [
        line.split() for line in listed.stdout.splitlines()
    ]

    # Bad input: exit code 2 and a message saying what is wrong, before any run starts.
    for bad, message in (
        (["replay", "--sink", "nope"], "unknown sink 'nope'; known sinks: elasticsearch, splunk"),
        (["replay", "--sink", "elasticsearch", "--since", "yesterday"], "is not an ISO 8601 date"),
        (
            ["replay", "--sink", "elasticsearch", "--since", "2026-02-01", "--until", "2026-01-01"],
            "must be before",
        ),
        (["replay", "--sink", "elasticsearch", "--limit", "0"], "must be positive"),
    ):
        answer = cli(bad, env)
        assert answer.returncode == 2, (bad, answer.stdout, answer.stderr)
        assert message in answer.stderr, (bad, answer.stderr)

    down = cli(["replay", "--sink", "elasticsearch"], {**env, "LAKERELAY_ES_URL": "http://127.0.0.1:9"})
    assert down.returncode == 1 and "cannot reach http://127.0.0.1:9" in down.stderr

    # Each replay (dry runs included) is a run of replay_dead_letters_to_elasticsearch in DAGSTER_HOME.
    with DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        runs = instance.get_runs()
    assert {r.job_name for r in runs} == {replay_job_name("elasticsearch")}
    assert sorted(r.status.value for r in runs) == sorted(
        [DagsterRunStatus.SUCCESS.value] * 3 + [DagsterRunStatus.FAILURE.value]
    )
