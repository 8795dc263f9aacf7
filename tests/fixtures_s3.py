"""An S3-compatible server for tests: moto in server mode, as a real subprocess on 127.0.0.1.

A subprocess (not moto's in-process mocks) so every client talks real HTTP, exactly as boto3,
delta-rs and pyarrow do against S3 in production; moto 5.2.5 enforces conditional writes and
multipart rules there.
"""

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import boto3
import pytest
import requests

from resources.filesystem import DEFAULT_REGION

STARTUP_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class S3Settings:
    """One fresh bucket on the test server, with everything a client needs to reach it."""

    endpoint_url: str
    bucket: str
    region: str = DEFAULT_REGION
    access_key: str = "testing"
    secret_key: str = field(default="testing", repr=False)
    session_token: str | None = field(default=None, repr=False)  # temporary credentials (moto_with_auth)

    def client(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            aws_session_token=self.session_token,
        )

    def delta_storage_options(self) -> dict[str, str]:
        """The same settings as delta-rs (object_store) options."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ALLOW_HTTP": "true",
            "AWS_REGION": self.region,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            **({"AWS_SESSION_TOKEN": self.session_token} if self.session_token else {}),
        }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until_up(url: str, proc: subprocess.Popen, log_path: str) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            with urllib.request.urlopen(url + "/", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    with open(log_path, errors="replace") as log:
        tail = log.read()[-2000:]
    raise RuntimeError(f"moto server at {url} did not start (exit code {proc.poll()}):\n{tail}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@contextlib.contextmanager
def _moto_process() -> Iterator[str]:
    """A moto server subprocess on a free port of 127.0.0.1; yields its endpoint URL."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    # Dummy credentials in the server's environment so nothing reaches for a real AWS profile.
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    with tempfile.NamedTemporaryFile(prefix="moto-", suffix=".log", delete=False) as log:
        log_path = log.name
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        _wait_until_up(url, proc, log_path)
        yield url
    finally:
        _stop(proc)
        os.unlink(log_path)


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """Endpoint URL (``http://127.0.0.1:<port>``) of a moto S3 server running for the whole session."""
    with _moto_process() as url:
        yield url


def set_moto_auth(endpoint_url: str, enabled: bool) -> None:
    """Turn moto's authentication mode on (every request after this one is checked) or off."""
    # A body without a form content type: moto reads it raw.
    response = requests.post(
        f"{endpoint_url}/moto-api/reset-auth", data=b"0" if enabled else b"inf", timeout=10
    )
    response.raise_for_status()


@pytest.fixture(scope="module")
def moto_with_auth() -> Iterator[S3Settings]:
    """A moto server of its own that checks every request's signature, reached with temporary
    credentials (STS AssumeRole: key id, secret and session token) for one bucket.

    A request signed without the session token is refused (InvalidAccessKeyId), as on AWS; plain
    moto accepts any credentials, so a client that drops the token would go unnoticed there.
    moto's authentication mode does not support presigned URLs (the server fails on them).
    """
    with _moto_process() as url:
        admin = {
            "endpoint_url": url,
            "region_name": DEFAULT_REGION,
            "aws_access_key_id": "testing",
            "aws_secret_access_key": "testing",
        }
        iam = boto3.client("iam", **admin)
        trust = {"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}
        role = iam.create_role(
            RoleName="lakerelay",
            AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [trust]}),
        )["Role"]
        everything_on_s3 = {"Effect": "Allow", "Action": "s3:*", "Resource": "*"}
        iam.put_role_policy(
            RoleName="lakerelay",
            PolicyName="s3",
            PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [everything_on_s3]}),
        )
        credentials = boto3.client("sts", **admin).assume_role(
            RoleArn=role["Arn"], RoleSessionName="lakerelay-test"
        )["Credentials"]
        settings = S3Settings(
            endpoint_url=url,
            bucket=f"temp-{uuid.uuid4().hex[:16]}",
            access_key=credentials["AccessKeyId"],
            secret_key=credentials["SecretAccessKey"],
            session_token=credentials["SessionToken"],
        )
        boto3.client("s3", **admin).create_bucket(Bucket=settings.bucket)
        set_moto_auth(url, enabled=True)
        yield settings


@pytest.fixture
def s3_settings(moto_server: str) -> S3Settings:
    """A new, empty bucket with a unique name on the session's moto server."""
    settings = S3Settings(endpoint_url=moto_server, bucket=f"test-{uuid.uuid4().hex[:16]}")
    settings.client().create_bucket(Bucket=settings.bucket)
    return settings
