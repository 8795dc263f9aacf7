"""A real post job (local Spark, Delta) delivering through AWS SigV4, and where secrets must never show.

The local sink verifies each request's signature (recomputed with botocore from the same
credentials), as Amazon OpenSearch Service and Serverless do: every ``_bulk`` call the Spark tasks
send must be signed, over the gzipped body as sent, with the session token.
"""

from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest
from deltalake import DeltaTable
from test_post_delivery import dead_letter_rows
from test_post_job import materialization_metadata, run_post, write_feed_batch

from lakerelay.localsink.server import LocalSinkServer
from lakerelay.localsink.sigv4 import SIGV4_TEST_ACCESS_KEY_ID, SIGV4_TEST_SECRET_ACCESS_KEY, SigV4Verifier
from pipelines.post.dead_letters import DEAD_LETTER_TABLE
from resources.delta_arrow import read_delta
from resources.sinks.resource import ElasticsearchSinkResource

from helpers import local_lake

pytestmark = pytest.mark.integration

N = 3_000
REGION = "ap-southeast-2"
TOKEN = "session-token-that-must-not-leak"
REJECTED = ["e7", "e1500"]


def signed_sink(
    url: str, service: str, secret_variable: str = "TEST_AWS_SECRET"
) -> ElasticsearchSinkResource:
    # Secrets through EnvVar, as the sink component's YAML gives them ({{ env.X }}).
    return ElasticsearchSinkResource(
        sink_name="es",
        url=url,
        aws_sigv4=True,
        aws_service=service,
        aws_region=REGION,
        aws_access_key_id=dg.EnvVar("TEST_AWS_KEY"),
        aws_secret_access_key=dg.EnvVar(secret_variable),
        aws_session_token=dg.EnvVar("TEST_AWS_TOKEN"),
        gzip_level=1,
        max_records_per_call=250,
        backoff_initial_s=0.01,
    )


@pytest.fixture
def aws_keys(monkeypatch) -> None:
    monkeypatch.setenv("TEST_AWS_KEY", SIGV4_TEST_ACCESS_KEY_ID)
    monkeypatch.setenv("TEST_AWS_SECRET", SIGV4_TEST_SECRET_ACCESS_KEY)
    monkeypatch.setenv("TEST_AWS_TOKEN", TOKEN)
    monkeypatch.setenv("TEST_AWS_WRONG_SECRET", "wrong-secret-that-must-not-leak")


@pytest.mark.parametrize("service", ["es", "aoss"])
def test_a_post_job_delivers_every_record_through_sigv4_and_no_secret_shows_anywhere(
    tmp_path: Path, spark_resource, aws_keys, capfd, service: str
) -> None:
    lake = local_lake(tmp_path)
    write_feed_batch(lake, 1, N)
    verifier = SigV4Verifier(
        REGION, service, SIGV4_TEST_ACCESS_KEY_ID, SIGV4_TEST_SECRET_ACCESS_KEY, session_token=TOKEN
    )
    faults = {"reject_field": "event_id", "reject_values": REJECTED}  # so the dead-letter table has rows
    with LocalSinkServer(sigv4=verifier, faults=faults) as server:
        sink = signed_sink(server.url, service)
        result = run_post("elasticsearch", sink, lake, spark_resource, max_tasks=2)

        assert result.success
        assert server.es_count("events") == N - len(REJECTED)
        stats = server.stats()
        assert "403" not in stats["http"]["responses_by_status"]
        assert stats["es"]["bulk_requests"] >= N // 250  # every call of the tasks was signed and verified
        assert set(verifier.tokens_seen) == {TOKEN}
    assert dead_letter_rows(lake) == len(REJECTED)

    # Nowhere a person or a log could read: events, metadata, repr, captured output, dead letters.
    letters = DeltaTable(lake.table_uri(DEAD_LETTER_TABLE), storage_options=lake.storage_options())
    out, err = capfd.readouterr()
    visible = "\n".join(
        [
            *(str(event) for event in result.all_events),
            str(materialization_metadata(result, "elasticsearch")),
            repr(sink),
            repr(sink.model_copy()),
            out,
            err,
            str(read_delta(letters).to_pylist()),
        ]
    )
    assert "e1500" in visible  # the dead letters were read
    for secret in (SIGV4_TEST_SECRET_ACCESS_KEY, TOKEN):
        assert secret not in visible


def test_a_wrong_secret_fails_the_run_in_one_line_before_spark_and_dead_letters_nothing(
    tmp_path: Path, spark_resource, aws_keys, capfd
) -> None:
    lake = local_lake(tmp_path)
    write_feed_batch(lake, 1, 500)
    verifier = SigV4Verifier(
        REGION, "aoss", SIGV4_TEST_ACCESS_KEY_ID, SIGV4_TEST_SECRET_ACCESS_KEY, session_token=TOKEN
    )
    with LocalSinkServer(sigv4=verifier) as server:
        sink = signed_sink(server.url, "aoss", secret_variable="TEST_AWS_WRONG_SECRET")
        result = run_post("elasticsearch", sink, lake, spark_resource, raise_on_error=False)
        assert server.es_count("events") == 0
        assert server.stats()["es"]["bulk_requests"] == 0

    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    message = failure.step_failure_data.error.message.strip()
    assert "signature refused with HTTP 403" in message and "check region/service/clock" in message
    # The dg.Failure's own description: the line a user reads, without the exception's class path.
    description = failure.step_failure_data.user_failure_data.description
    assert (
        description and "signature refused with HTTP 403" in description and "\n" not in description.strip()
    )
    assert dead_letter_rows(lake) == 0
    out, err = capfd.readouterr()
    visible = "\n".join([*(str(e) for e in result.all_events), out, err])
    assert "wrong-secret-that-must-not-leak" not in visible and TOKEN not in visible


def test_a_signature_refused_in_the_spark_tasks_fails_the_run_in_one_line_and_dead_letters_nothing(
    tmp_path: Path, spark_resource, aws_keys
) -> None:
    # The probe's signature holds, then the server's clock jumps 16 minutes: every _bulk call the Spark
    # tasks sign is refused as expired, as a host with a drifting clock would see from AWS.
    lake = local_lake(tmp_path)
    write_feed_batch(lake, 1, 500)
    readings: list[datetime] = []

    def clock() -> datetime:
        readings.append(datetime.now(UTC))
        return readings[-1] + timedelta(minutes=16 if len(readings) > 1 else 0)

    verifier = SigV4Verifier(
        REGION, "es", SIGV4_TEST_ACCESS_KEY_ID, SIGV4_TEST_SECRET_ACCESS_KEY, session_token=TOKEN, clock=clock
    )
    with LocalSinkServer(sigv4=verifier) as server:
        result = run_post(
            "elasticsearch", signed_sink(server.url, "es"), lake, spark_resource, raise_on_error=False
        )
        assert server.es_count("events") == 0
        assert server.stats()["http"]["responses_by_status"]["403"] >= 1

    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    message = failure.step_failure_data.user_failure_data.description
    assert message.startswith("sink 'es' (elasticsearch at http://127.0.0.1:")
    assert "signature refused with HTTP 403" in message and "Signature expired" in message
    assert "check region/service/clock" in message and "\n" not in message
    assert dead_letter_rows(lake) == 0
