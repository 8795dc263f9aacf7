"""AWS Signature Version 4 for Amazon OpenSearch Service (``es``) and OpenSearch Serverless (``aoss``).

``AwsSigV4`` is a ``requests`` auth: every request, the writer's ``_bulk`` calls on the Spark executors
and the driver's connection probe alike, is signed as it is sent, after gzip, with the body's SHA-256 in
``X-Amz-Content-SHA256`` (Serverless requires that header; the managed service accepts it). Only
``host``, ``x-amz-date``, ``x-amz-content-sha256`` and ``x-amz-security-token`` are signed, as
opensearch-py does, so a proxy that rewrites ``Connection`` or ``User-Agent`` breaks nothing.

Credentials: given ones (access key, secret, optional session token, from ``EnvVar``) are used as they
are; otherwise each process (driver, executor) resolves botocore's default chain once (environment,
``AWS_PROFILE``/shared files, web identity, SSO, container and instance roles). The chain's temporary
credentials are ``RefreshableCredentials``: each request reads them through ``get_frozen_credentials()``,
which renews them before they expire, so an hours-long run never signs with an expired session.

The object is picklable and its secrets are not in its repr; the resolved chain is cached per process,
outside the object, so it never travels to executors.
"""

import hashlib
import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import botocore.session
import requests
import requests.auth
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import BotoCoreError

from resources.sinks.errors import SinkAuthError

SERVICES = ("es", "aoss")
NO_CREDENTIALS_HINT = (
    "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for temporary keys), or "
    "AWS_PROFILE naming a profile of ~/.aws/config, or run with an instance/container/IRSA role, or give "
    "the sink aws_access_key_id/aws_secret_access_key"
)


class _NoCanonicalRequest(logging.Filter):
    """botocore logs each canonical request at DEBUG, and it holds the session token: never let it out."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("CanonicalRequest")


logging.getLogger("botocore.auth").addFilter(_NoCanonicalRequest())

_chain_lock = threading.Lock()
_chains: dict[str | None, Any] = {}  # profile -> botocore credentials, resolved once per process


def _chain_credentials(profile: str | None) -> Any:
    """The default chain's credentials for ``profile`` (None = the chain's own choice), cached per process."""
    with _chain_lock:
        if profile not in _chains:
            try:
                session = botocore.session.Session(profile=profile)
                _chains[profile] = session.get_credentials()
            except BotoCoreError as exc:  # e.g. a profile that does not exist
                raise NoAwsCredentials(f"{type(exc).__name__}: {exc}") from None
        return _chains[profile]


def forget_chain_credentials() -> None:
    """Drop what the chain resolved in this process (tests change the environment between runs)."""
    with _chain_lock:
        _chains.clear()


class NoAwsCredentials(RuntimeError):
    """The default credential chain found nothing (or failed): says which settings would provide some."""


@dataclass(frozen=True)
class AwsSigV4(requests.auth.AuthBase):
    region: str
    service: str  # "es" (OpenSearch Service) or "aoss" (OpenSearch Serverless)
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    profile: str | None = None  # a profile of the shared config files, for the chain

    def refusal_hint(self) -> str:
        """What to check when the service answers 401/403 to a signed request."""
        return (
            f"check region/service/clock: aws_region {self.region!r} and aws_service {self.service!r} must be "
            f"the domain's (es for OpenSearch Service, aoss for Serverless), this host's clock must be within "
            f"5 minutes of AWS time, and the AWS credentials must be current and allowed to write to the "
            f"domain (its access policy or data access policy)."
        )

    def credentials(self) -> Credentials:
        """Credentials to sign the next request with: given ones, else the chain's, renewed when due."""
        if self.access_key_id:
            return Credentials(self.access_key_id, self.secret_access_key or "", self.session_token)
        resolved = _chain_credentials(self.profile)
        if resolved is None:
            raise NoAwsCredentials("the AWS default credential chain found no credentials")
        # RefreshableCredentials renew here when they are close to expiry; static ones are returned as is.
        frozen = resolved.get_frozen_credentials()
        return Credentials(frozen.access_key, frozen.secret_key, frozen.token)

    def signed_headers(self, method: str, url: str, body: bytes | None) -> dict[str, str]:
        """The headers that sign this request (Authorization, X-Amz-Date, the body hash, the token)."""
        payload = body or b""
        request = AWSRequest(
            method=method.upper(),
            url=url,
            data=payload,
            headers={"X-Amz-Content-SHA256": hashlib.sha256(payload).hexdigest()},
        )
        SigV4Auth(self.credentials(), self.service, self.region).add_auth(request)
        return dict(request.headers.items())

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        body = request.body
        if isinstance(body, str):
            body = body.encode()
        if body is not None and not isinstance(body, bytes):
            raise TypeError("AwsSigV4 signs bytes bodies only (the writer sends bytes)")
        try:
            headers = self.signed_headers(request.method or "GET", request.url or "", body)
        except NoAwsCredentials as exc:
            raise SinkAuthError(
                f"no AWS credentials to sign requests for {self.service} in {self.region} ({exc}): "
                f"{NO_CREDENTIALS_HINT}."
            ) from None
        request.headers.update(headers)
        return request
