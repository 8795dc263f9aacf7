"""The Elasticsearch sink's auth matrix against real HTTP servers on 127.0.0.1.

API key, basic, bearer and AWS SigV4 (OpenSearch Service ``es`` and Serverless ``aoss``), one at a
time; Elastic Cloud IDs; the one-line errors. The local sink's SigV4 verifier recomputes every
signature with botocore from the same credentials and refuses, with 403 as AWS does, what is unsigned,
signed with another secret or for another region, signed over another body, or too old.
"""

import hashlib
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pydantic
import pytest
import requests
from elasticsearch import Elasticsearch
from test_sink_tls import post

from lakerelay.localsink.server import LocalSinkServer
from lakerelay.localsink.sigv4 import SIGV4_TEST_ACCESS_KEY_ID, SIGV4_TEST_SECRET_ACCESS_KEY, SigV4Verifier
from resources.sinks.cloud_id import CloudIdError, elasticsearch_url
from resources.sinks.errors import SinkAuthError
from resources.sinks.resource import ElasticsearchSinkResource
from resources.sinks.sigv4 import AwsSigV4, forget_chain_credentials

KEY, SECRET = SIGV4_TEST_ACCESS_KEY_ID, SIGV4_TEST_SECRET_ACCESS_KEY
REGION = "eu-west-3"


def sigv4_sink(url: str, service: str = "es", **options) -> ElasticsearchSinkResource:
    given = {"aws_access_key_id": KEY, "aws_secret_access_key": SECRET, **options}
    return ElasticsearchSinkResource(
        sink_name="es", url=url, aws_sigv4=True, aws_service=service, aws_region=REGION, **given
    )


@pytest.fixture
def aws_environment(monkeypatch, tmp_path: Path) -> Iterator[Path]:
    """An AWS default chain that sees no credentials until a test gives it some (env, files, profile)."""
    for name in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance role to ask on this machine
    forget_chain_credentials()
    yield tmp_path
    forget_chain_credentials()


# --- Elastic Cloud ID --------------------------------------------------------------------------

# Vectors of elastic-transport-python's tests/test_client_utils.py (test_parse_cloud_id,
# test_parse_cloud_id_ports, test_parse_cloud_id_no_kibana, test_invalid_cloud_id), the parser behind
# elasticsearch-py's Elasticsearch(cloud_id=...): es_address (host, port) -> our https URL.
ES_HOST = "4fa8821e75634032bed1cf22110e2f97.us-east-1.aws.found.io"


@pytest.mark.parametrize(
    ("cloud_id", "url"),
    [
        (
            "cluster:dXMtZWFzdC0xLmF3cy5mb3VuZC5pbyQ0ZmE4ODIxZTc1NjM0MDMyYmVk"
            "MWNmMjIxMTBlMmY5NyQ0ZmE4ODIxZTc1NjM0MDMyYmVkMWNmMjIxMTBlMmY5Ng==",
            f"https://{ES_HOST}",
        ),
        (
            ":dXMtZWFzdC0xLmF3cy5mb3VuZC5pbzo5MjQzJDRmYTg4MjFlNzU2MzQwMzJiZ"
            "WQxY2YyMjExMGUyZjk3JDRmYTg4MjFlNzU2MzQwMzJiZWQxY2YyMjExMGUyZjk2",
            f"https://{ES_HOST}:9243",
        ),
        (
            ":dXMtZWFzdC0xLmF3cy5mb3VuZC5pbzo0NDMkNGZhODgyMWU3NTYzNDAzMmJlZD"
            "FjZjIyMTEwZTJmOTckNGZhODgyMWU3NTYzNDAzMmJlZDFjZjIyMTEwZTJmOTY=",
            f"https://{ES_HOST}:443",
        ),
        (
            "cluster:dXMtZWFzdC0xLmF3cy5mb3VuZC5pbyQ0ZmE4ODIxZTc1NjM0MDMyYmVkMWNmMjIxMTBlMmY5NyQ=",
            f"https://{ES_HOST}",
        ),
        (
            "cluster:dXMtZWFzdC0xLmF3cy5mb3VuZC5pbyQ0ZmE4ODIxZTc1NjM0MDMyYmVkMWNmMjIxMTBlMmY5Nw==",
            f"https://{ES_HOST}",
        ),
    ],
)
def test_a_cloud_id_resolves_to_its_elasticsearch_endpoint(cloud_id: str, url: str) -> None:
    assert elasticsearch_url(cloud_id) == url
    sink = ElasticsearchSinkResource(sink_name="es", cloud_id=cloud_id, api_key="k")
    assert sink.settings().url == url
    # The official client (installed for the tests) lands on the same node; it always writes the port.
    [node] = Elasticsearch(cloud_id=cloud_id, api_key="k").transport.node_pool.all()
    assert node.base_url == (url if url.count(":") == 2 else f"{url}:443")


@pytest.mark.parametrize(
    "cloud_id",
    [
        "cluster:",
        "dXMtZWFzdC0xLmF3cy5mb3VuZC5pbyQ0ZmE4ODIxZTc1NjM0MDMyYmVkMWNmMjIxMTBlMmY5NyQ=",  # no name: no ':'
        "cluster:ā",
        "cluster:dXMtZWFzdC0xLmF3cy5mb3VuZC5pbzo0NDM=",  # a host but no Elasticsearch uuid
        "cluster:not base64 at all!",
    ],
)
def test_a_malformed_cloud_id_is_one_line_saying_what_a_cloud_id_looks_like(cloud_id: str) -> None:
    with pytest.raises(CloudIdError):
        elasticsearch_url(cloud_id)
    sink = ElasticsearchSinkResource(sink_name="es", cloud_id=cloud_id)
    with pytest.raises(dg.Failure) as failure:
        sink.check_connection()  # before any request
    message = failure.value.description or ""
    assert message.startswith("sink 'es': cloud_id ") and "\n" not in message
    assert "Elastic Cloud" in message and "base64 of host$es_uuid$kibana_uuid" in message


# --- one authentication, never two ---------------------------------------------------------------

SECRETS = {
    "api_key": {"api_key": "key-secret-1"},
    "username/password": {"username": "elastic", "password": "password-secret-2"},
    "bearer_token": {"bearer_token": "bearer-secret-3"},
    "aws_sigv4": {"aws_sigv4": True, "aws_region": REGION},
}


@pytest.mark.parametrize(
    ("first", "second"),
    [(a, b) for i, a in enumerate(SECRETS) for b in list(SECRETS)[i + 1 :]],
)
def test_two_authentications_are_refused_naming_both_and_no_secret(first: str, second: str) -> None:
    with pytest.raises(pydantic.ValidationError) as refused:
        ElasticsearchSinkResource(sink_name="es", url="http://x", **SECRETS[first], **SECRETS[second])
    message = str(refused.value)
    assert f"{first} and {second} are both set" in message
    assert not any(secret in message for secret in ("key-secret-1", "password-secret-2", "bearer-secret-3"))


def test_two_authentications_are_refused_when_the_definitions_load_even_behind_env_vars() -> None:
    # EnvVars are resolved only in a run: which fields are set is known at load, so it is judged then.
    with pytest.raises(pydantic.ValidationError, match="api_key and bearer_token are both set"):
        ElasticsearchSinkResource(
            sink_name="es", url="http://x", api_key=dg.EnvVar("ES_KEY"), bearer_token=dg.EnvVar("ES_TOKEN")
        )


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"aws_sigv4": True, "aws_service": "aoss"}, "aws_sigv4 with aws_service 'aoss' needs aws_region"),
        ({"aws_sigv4": True}, "aws_sigv4 with aws_service 'es' needs aws_region"),
        ({"aws_region": REGION}, "aws_region is set but aws_sigv4 is false"),
        ({"aws_sigv4": True, "aws_region": REGION, "aws_access_key_id": KEY}, "go together"),
        ({"password": "p"}, "password is set without username"),
        ({"cloud_id": "c:x"}, "url and cloud_id are both set"),
    ],
)
def test_an_incomplete_or_contradictory_configuration_is_one_line(options: dict, says: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=says):
        ElasticsearchSinkResource(sink_name="es", url="http://x", **options)


def test_neither_url_nor_cloud_id_is_refused() -> None:
    with pytest.raises(pydantic.ValidationError, match="neither url nor cloud_id is set"):
        ElasticsearchSinkResource(sink_name="es")


@pytest.mark.parametrize("kind", ["api_key", "username/password", "bearer_token"])
def test_each_header_authentication_is_accepted_by_a_cluster_that_requires_it(kind: str) -> None:
    server_auth = {
        "api_key": {"es_api_key": "key-secret-1"},
        "username/password": {"es_basic": "elastic:password-secret-2"},
        "bearer_token": {"es_bearer": "bearer-secret-3"},
    }[kind]
    with LocalSinkServer(**server_auth) as server:
        sink = ElasticsearchSinkResource(sink_name="es", url=server.url, **SECRETS[kind])
        sink.check_connection()
        assert post(sink.settings(), 50).accepted == 50
        assert server.es_count("events") == 50


# --- AWS SigV4 ------------------------------------------------------------------------------------


@pytest.mark.parametrize("service", ["es", "aoss"])
@pytest.mark.parametrize("gzip_level", [0, 6])
def test_signed_requests_are_accepted_by_a_server_that_verifies_each_signature(
    service: str, gzip_level: int
) -> None:
    verifier = SigV4Verifier(REGION, service, KEY, SECRET)
    with LocalSinkServer(sigv4=verifier) as server:
        sink = sigv4_sink(server.url, service, gzip_level=gzip_level, max_records_per_call=100)
        sink.check_connection()
        outcome = post(sink.settings(), 1_000)
        assert (outcome.accepted, outcome.requests) == (1_000, 10)
        assert server.es_count("events") == 1_000
        assert "403" not in server.stats()["http"]["responses_by_status"]


def test_the_verifier_refuses_unsigned_altered_foreign_and_old_requests() -> None:
    now = [datetime.now(UTC)]
    verifier = SigV4Verifier(REGION, "aoss", KEY, SECRET, clock=lambda: now[0])
    with LocalSinkServer(sigv4=verifier) as server:
        url = f"{server.url}/events/_bulk"
        body = b'{"index":{"_id":"1"}}\n{"n":1}\n'
        signer = AwsSigV4(REGION, "aoss", KEY, SECRET)

        def send(headers: dict[str, str], data: bytes = body) -> requests.Response:
            return requests.post(
                url, data=data, headers={"Content-Type": "application/x-ndjson", **headers}, timeout=10
            )

        signed = signer.signed_headers("POST", url, body)
        assert send(signed).status_code == 200  # the reference: a request as signed passes

        assert send({}).json() == {"message": "Missing Authentication Token"}
        altered = send(signed, body.replace(b'"n":1', b'"n":2'))
        assert altered.status_code == 403 and "x-amz-content-sha256" in altered.json()["message"]
        # The body changed and its hash header with it: only the signature can tell.
        forged = {**signed, "X-Amz-Content-SHA256": hashlib.sha256(b"other").hexdigest()}
        assert send(forged, b"other").json()["message"].startswith("The request signature we calculated")
        wrong_secret = AwsSigV4(REGION, "aoss", KEY, "not-the-secret").signed_headers("POST", url, body)
        assert send(wrong_secret).json()["message"].startswith("The request signature we calculated")
        other_region = AwsSigV4("us-east-1", "aoss", KEY, SECRET).signed_headers("POST", url, body)
        assert send(other_region).status_code == 403
        other_service = AwsSigV4(REGION, "es", KEY, SECRET).signed_headers("POST", url, body)
        assert send(other_service).status_code == 403

        now[0] += timedelta(minutes=16)  # the same signed request, replayed 16 minutes later
        expired = send(signed)
        assert expired.status_code == 403 and expired.json()["message"].startswith("Signature expired")
        assert server.es_count("events") == 1


def test_a_refused_signature_fails_the_probe_and_the_writer_in_one_line_without_secrets() -> None:
    with LocalSinkServer(sigv4=SigV4Verifier(REGION, "es", KEY, SECRET)) as server:
        wrong = sigv4_sink(server.url, aws_secret_access_key="wrong-secret-value")
        with pytest.raises(dg.Failure) as probe:
            wrong.check_connection()
        with pytest.raises(SinkAuthError) as writer:
            post(wrong.settings(), 10)
        for message in (probe.value.description or "", str(writer.value)):
            assert "signature refused with HTTP 403" in message
            assert "check region/service/clock" in message and f"aws_region {REGION!r}" in message
            assert "\n" not in message and "wrong-secret-value" not in message and SECRET not in message
        assert server.es_count("events") == 0


def test_no_credentials_in_the_chain_says_which_variables_or_profile_to_set(aws_environment) -> None:
    with LocalSinkServer(sigv4=SigV4Verifier(REGION, "es", KEY, SECRET)) as server:
        sink = ElasticsearchSinkResource(
            sink_name="es", url=server.url, aws_sigv4=True, aws_service="es", aws_region=REGION
        )
        with pytest.raises(dg.Failure) as probe:
            sink.check_connection()
        message = probe.value.description or ""
        assert message.startswith("no AWS credentials to sign requests for es in eu-west-3")
        assert "AWS_ACCESS_KEY_ID" in message and "AWS_PROFILE" in message and "\n" not in message
        with pytest.raises(SinkAuthError, match="no AWS credentials"):
            post(sink.settings(), 10)
        assert server.stats()["http"]["requests"] == 0  # nothing was sent unsigned


def test_the_default_chain_signs_with_the_environments_credentials(aws_environment, monkeypatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    with LocalSinkServer(sigv4=SigV4Verifier(REGION, "aoss", KEY, SECRET)) as server:
        sink = ElasticsearchSinkResource(
            sink_name="es", url=server.url, aws_sigv4=True, aws_service="aoss", aws_region=REGION
        )
        sink.check_connection()
        assert post(sink.settings(), 20).accepted == 20


def test_temporary_credentials_of_the_chain_are_renewed_before_they_expire(aws_environment) -> None:
    # A real credential_process (the shared config's hook for external credential sources) hands out
    # keys that expire in 5 minutes, inside botocore's mandatory refresh window: each request must
    # renew them through the chain, never sign with the first ones frozen.
    calls = aws_environment / "calls"
    script = aws_environment / "issue.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import json, datetime
            with open({str(calls)!r}, "a") as log:
                log.write("x")
            expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=5)
            print(json.dumps({{"Version": 1, "AccessKeyId": {KEY!r}, "SecretAccessKey": {SECRET!r},
                              "SessionToken": "token-" + str(len(open({str(calls)!r}).read())),
                              "Expiration": expires.strftime("%Y-%m-%dT%H:%M:%SZ")}}))
            """
        )
    )
    (aws_environment / "config").write_text(
        f"[profile issuer]\ncredential_process = {sys.executable} {script}\n"
    )
    verifier = SigV4Verifier(REGION, "es", KEY, SECRET)
    with LocalSinkServer(sigv4=verifier) as server:
        sink = ElasticsearchSinkResource(
            sink_name="es",
            url=server.url,
            aws_sigv4=True,
            aws_region=REGION,
            aws_profile="issuer",
            max_records_per_call=10,
            max_in_flight=1,
        )
        outcome = post(sink.settings(), 40)
        assert (outcome.accepted, outcome.requests) == (40, 4)
    # Each request signed with freshly issued keys: one set frozen at the start would repeat its token.
    assert len(verifier.tokens_seen) == 4 and len(set(verifier.tokens_seen)) == 4
    assert len(calls.read_text()) >= 4


def test_the_session_token_never_reaches_the_logs(caplog) -> None:
    # botocore logs the canonical request at DEBUG, with x-amz-security-token in it.
    signer = AwsSigV4(REGION, "es", KEY, SECRET, session_token="session-token-secret")
    with caplog.at_level(logging.DEBUG):
        headers = signer.signed_headers("POST", "https://search.example/_bulk", b"{}")
    assert headers["X-Amz-Security-Token"] == "session-token-secret"
    assert "StringToSign" in caplog.text  # botocore did log at DEBUG
    assert "session-token-secret" not in caplog.text and SECRET not in caplog.text
    assert "session-token-secret" not in repr(signer) and SECRET not in repr(signer)


def test_secrets_given_as_values_stay_out_of_repr_and_settings_repr() -> None:
    secrets = {
        "aws_access_key_id": "AKIDSECRETVALUE",
        "aws_secret_access_key": "aws-secret-value",
        "aws_session_token": "aws-token-value",
    }
    signed = ElasticsearchSinkResource(
        sink_name="es",
        url="http://x",
        aws_sigv4=True,
        aws_region=REGION,
        extra_headers={"X-Gw": "gw-value"},
        **secrets,
    )
    keyed = ElasticsearchSinkResource(sink_name="es", url="http://x", api_key="api-key-value")
    basic = ElasticsearchSinkResource(sink_name="es", url="http://x", username="u", password="password-value")
    bearer = ElasticsearchSinkResource(sink_name="es", url="http://x", bearer_token="bearer-value")
    shown = " ".join(
        repr(x) + str(x) for sink in (signed, keyed, basic, bearer) for x in (sink, sink.settings())
    )
    for secret in [*secrets.values(), "gw-value", "api-key-value", "password-value", "bearer-value"]:
        assert secret not in shown


SIGV4_CLI_ARGS = ["--sigv4-region", REGION, "--sigv4-service", "aoss"]


def test_the_local_sink_cli_verifies_signatures_with_the_secret_of_its_environment(tmp_path: Path) -> None:
    port_file = tmp_path / "sink.port"
    secret = "cli-secret-from-the-environment"
    proc = subprocess.Popen(
        [sys.executable, "-m", "lakerelay.localsink", "--port-file", str(port_file), *SIGV4_CLI_ARGS],
        cwd=Path(__file__).resolve().parents[1],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "LOCALSINK_SIGV4_SECRET_ACCESS_KEY": secret},
    )
    try:
        deadline = time.monotonic() + 20
        while not port_file.exists():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "localsink CLI did not write its port file"
            time.sleep(0.05)
        url = f"http://127.0.0.1:{int(port_file.read_text())}"
        assert requests.get(url, timeout=5).status_code == 403
        sink = sigv4_sink(url, "aoss", aws_secret_access_key=secret)
        sink.check_connection()
        assert post(sink.settings(), 30).accepted == 30
        with pytest.raises(dg.Failure, match="signature refused"):
            sigv4_sink(url, "aoss").check_connection()  # the built-in test secret is not this server's
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()
