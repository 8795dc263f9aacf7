"""Which authentication an Elasticsearch/OpenSearch sink uses, and where it sends: one of each, never guessed.

The sink takes at most ONE of: an API key, basic auth (username/password), a bearer token, AWS SigV4.
Two of them is a configuration error naming both, not a silent precedence. Mutual TLS (client_cert)
is transport-level and goes with any of them. The endpoint is ``url`` or an Elastic Cloud ``cloud_id``,
exactly one. Every problem is one line that says what to change. Runs on the driver only.
"""

import base64
from typing import Any, Literal, Protocol

from resources.sinks.cloud_id import CloudIdError, elasticsearch_url
from resources.sinks.errors import SinkConfigError
from resources.sinks.sigv4 import SERVICES, AwsSigV4

_AWS_DETAILS = (
    "aws_region",
    "aws_access_key_id",
    "aws_secret_access_key",
    "aws_session_token",
    "aws_profile",
)


class EsAuthFields(Protocol):
    """The sink resource's fields this module reads (``ElasticsearchSinkResource``)."""

    sink_name: str
    url: str | None
    cloud_id: str | None
    api_key: str | None
    username: str | None
    password: str | None
    bearer_token: str | None
    aws_sigv4: bool
    aws_service: Literal["es", "aoss"]
    aws_region: str | None
    aws_access_key_id: str | None
    aws_secret_access_key: str | None
    aws_session_token: str | None
    aws_profile: str | None


def configuration_problem(f: EsAuthFields) -> str | None:
    """What is wrong with the sink's auth/endpoint settings, judged by which are set, or None.

    Safe before ``EnvVar`` values are resolved (it only asks whether a field is set), so a code
    location can refuse a bad combination when it loads.
    """
    chosen = [
        name
        for name, is_set in (
            ("api_key", bool(f.api_key)),
            ("username/password", bool(f.username or f.password)),
            ("bearer_token", bool(f.bearer_token)),
            ("aws_sigv4", f.aws_sigv4),
        )
        if is_set
    ]
    if len(chosen) > 1:
        return (
            f"{chosen[0]} and {chosen[1]} are both set: an Elasticsearch sink takes one authentication "
            f"(api_key, username/password, bearer_token or aws_sigv4); remove one of them"
        )
    if f.password and not f.username:
        return "password is set without username: set username too (basic auth)"
    if bool(f.url) == bool(f.cloud_id):
        return (
            "url and cloud_id are both set: give one of them"
            if f.url
            else "neither url nor cloud_id is set: give the endpoint's url, or the Elastic Cloud deployment's cloud_id"
        )
    if f.aws_sigv4:
        if f.cloud_id:
            return "cloud_id (Elastic Cloud) and aws_sigv4 (Amazon OpenSearch) do not go together: remove one"
        if f.aws_service not in SERVICES:
            return f"aws_service is {f.aws_service!r}: use 'es' (OpenSearch Service) or 'aoss' (Serverless)"
        if not f.aws_region:
            return (
                f"aws_sigv4 with aws_service {f.aws_service!r} needs aws_region: set it to the domain's region "
                f"(e.g. us-east-1, the region in the endpoint's host name)"
            )
        if bool(f.aws_access_key_id) != bool(f.aws_secret_access_key):
            return (
                "aws_access_key_id and aws_secret_access_key go together: set both, or neither to use the AWS "
                "default credential chain"
            )
        if f.aws_session_token and not f.aws_access_key_id:
            return "aws_session_token is set without aws_access_key_id/aws_secret_access_key: set them too"
        if f.aws_profile and f.aws_access_key_id:
            return "aws_profile and aws_access_key_id are both set: give keys or a profile, not both"
    else:
        stray = [name for name in _AWS_DETAILS if getattr(f, name)]
        if stray:
            return f"{stray[0]} is set but aws_sigv4 is false: set aws_sigv4: true to sign requests, or remove it"
    return None


def check(f: EsAuthFields) -> None:
    """Raise ``SinkConfigError`` (one line, naming the sink) for a configuration that cannot work."""
    problem = configuration_problem(f)
    if problem is None and f.cloud_id:
        try:
            elasticsearch_url(f.cloud_id)
        except CloudIdError as exc:
            problem = f"{exc}: copy it from the deployment's page in Elastic Cloud"
    if problem is not None:
        raise SinkConfigError(f"sink {f.sink_name!r}: {problem}.")


def endpoint(f: EsAuthFields) -> str:
    """The base URL requests go to: ``url``, or the one ``cloud_id`` names."""
    check(f)
    return f.url or elasticsearch_url(f.cloud_id or "")


def authorization(f: EsAuthFields) -> dict[str, str]:
    """The Authorization header of API key, basic or bearer auth (none for SigV4: it signs each request)."""
    check(f)
    if f.api_key:
        return {"Authorization": f"ApiKey {f.api_key}"}
    if f.bearer_token:
        return {"Authorization": f"Bearer {f.bearer_token}"}
    if f.username:
        token = base64.b64encode(f"{f.username}:{f.password or ''}".encode()).decode()
        return {"Authorization": f"Basic {token}"}
    return {}


def request_auth(f: EsAuthFields) -> Any:
    """The signer of every request (AWS SigV4), or None."""
    check(f)
    if not f.aws_sigv4:
        return None
    return AwsSigV4(
        region=f.aws_region or "",
        service=f.aws_service,
        access_key_id=f.aws_access_key_id or None,
        secret_access_key=f.aws_secret_access_key or None,
        session_token=f.aws_session_token or None,
        profile=f.aws_profile or None,
    )
