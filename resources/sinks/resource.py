"""Dagster resources for the REST sinks. They turn configuration (secrets via EnvVar) into settings.

Each field is written once, here, with its default and description. ``settings()`` copies the values
by name into the executor-side dataclasses (``SinkSettings`` and the protocol's own settings), so a
new option needs only its field here and, if executors read it, a same-named field there.
"""

import base64
import urllib.parse
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import dagster as dg
import requests
from pydantic import ConfigDict, Field, model_validator

from resources.run_tags import NEEDS_FIX
from resources.sinks import es_auth
from resources.sinks.elasticsearch import ElasticsearchSettings
from resources.sinks.errors import SinkAuthError, SinkConfigError, auth_error_message
from resources.sinks.generic import GenericSettings
from resources.sinks.hec import HecSettings
from resources.sinks.settings import SinkSettings, from_fields


def authorization(bearer_token: str | None, username: str | None, password: str | None) -> dict[str, str]:
    """The Authorization header for bearer or basic auth (bearer wins), or none."""
    if bearer_token:
        return {"Authorization": f"Bearer {bearer_token}"}
    if username:
        token = base64.b64encode(f"{username}:{password or ''}".encode()).decode()
        return {"Authorization": f"Basic {token}"}
    return {}


class RestSinkResource(dg.ConfigurableResource):
    """Settings every REST sink shares: endpoint, batching, concurrency, retries, TLS."""

    # Secrets stay out of validation errors (no input echoed) and out of repr (their fields say repr=False).
    model_config = ConfigDict(hide_input_in_errors=True)

    asset_kind: ClassVar[str] = "rest"  # the kind the UI shows on the sink's asset
    # Fields a route may set for itself (where its records go and how they are shaped); the sink's
    # own values are the defaults of every route to it.
    DESTINATION_FIELDS: ClassVar[tuple[str, ...]] = ()
    # The protocol's settings dataclass: filled from this resource's fields of the same names.
    protocol_settings: ClassVar[type]

    sink_name: str = Field(
        description="Name of this sink in progress records, metadata and the dead-letter table."
    )
    url: str = Field(description="Base URL of the endpoint, e.g. https://es.example:9200.")
    max_records_per_call: int = Field(default=1000, gt=0, description="Records per request at most.")
    max_bytes_per_call: int = Field(
        default=5_000_000,
        gt=0,
        description="Uncompressed bytes per request at most (Elasticsearch advises a few MB).",
    )
    max_in_flight: int = Field(
        default=4, gt=0, description="Requests in flight per Spark task (the ceiling when adaptive)."
    )
    adaptive_concurrency: bool = Field(
        default=False,
        description="Adapt requests in flight per task (AIMD on 429/503/rising latency, like Vector's ARC), "
        "from 1 up to max_in_flight.",
    )
    rate_limit_requests_per_s: float | None = Field(
        default=None,
        gt=0,
        description="Requests per second at most, for the whole post run (split over tasks).",
    )
    rate_limit_records_per_s: float | None = Field(
        default=None,
        gt=0,
        description="Records per second at most, for the whole post run (split over tasks).",
    )
    gzip_level: int = Field(default=0, ge=0, le=9, description="Gzip request bodies at this level (0 = off).")
    delivery_timeout_s: float = Field(
        default=600.0,
        gt=0,
        description="How long transient failures (429, 5xx, 408, dropped connections, per-item 429/5xx) are "
        "retried, with backoff, from a request's first attempt. When it passes, the run fails without "
        "settling the batch and the next run resumes it; only records the sink rejects are dead-lettered.",
    )
    backoff_initial_s: float = Field(default=0.5, ge=0)
    backoff_max_s: float = Field(default=30.0, ge=0)
    connect_timeout_s: float = Field(default=5.0, gt=0)
    read_timeout_s: float = Field(default=60.0, gt=0)
    verify_tls: bool = Field(
        default=True, description="Verify the server's certificate (keep on outside tests)."
    )
    ca_bundle: str | None = Field(
        default=None, description="PEM file of the CA that signed the server certificate."
    )
    client_cert: str | None = Field(
        default=None,
        description="PEM client certificate for mutual TLS (with the key, unless client_key is set).",
    )
    client_key: str | None = Field(default=None, description="PEM private key of client_cert.")
    extra_headers: dict[str, str] = Field(
        default={},
        repr=False,
        description="Headers added to every request (e.g. a gateway's API key; use EnvVar for secrets).",
    )

    def for_route(self, route_name: str, destination: Mapping[str, Any]) -> "RestSinkResource":
        """This sink as one route posts to it: progress, metadata and dead letters under the route's
        name, and the route's destination values over the sink's."""
        unknown = sorted(set(destination) - set(self.DESTINATION_FIELDS))
        if unknown:
            raise ValueError(
                f"route {route_name!r}: {type(self).__name__} takes no destination {unknown}; it takes "
                f"{', '.join(self.DESTINATION_FIELDS) or 'none'}"
            )
        return self.model_copy(update={"sink_name": route_name, **destination})

    def settings(self) -> SinkSettings:
        """What executors need to post: this resource's values, by field name, the headers and the signer."""
        return from_fields(
            SinkSettings,
            self,
            url=self.endpoint(),
            headers={**self.extra_headers, **self.authorization()},
            auth=self.request_auth(),
            protocol=from_fields(self.protocol_settings, self),
            per_record=(),  # a run's templated destination sets it (pipelines/post/destination.py)
        )

    def endpoint(self) -> str:
        """The base URL requests go to."""
        return self.url or ""

    def destination_uri(self) -> str:
        """Where the documents go, as the sink asset's ``dagster/uri``: the endpoint without any
        credentials in it (a template in the destination is shown as written)."""
        parts = urllib.parse.urlsplit(self.endpoint())
        return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))

    def authorization(self) -> dict[str, str]:
        """The sink's auth header(s); extra_headers are sent too, and these win over them."""
        return {}

    def request_auth(self) -> Any:
        """A ``requests`` auth that signs each request as sent (AWS SigV4), or None."""
        return None

    def id_expression(self) -> str | None:
        """Spark SQL for the record id, or None when the sink takes no ids."""
        return None

    def check_connection(self) -> None:
        """Fail fast, before Spark starts, when the endpoint is unreachable or refuses the credentials."""

    def _probe(self, method: str, path: str, settings: SinkSettings, **kwargs) -> requests.Response:
        try:
            response = requests.request(
                method,
                settings.url.rstrip("/") + path,
                headers=settings.headers,
                auth=settings.auth,
                timeout=(self.connect_timeout_s, self.read_timeout_s),
                verify=settings.verify,
                cert=settings.cert,
                **kwargs,
            )
        except SinkAuthError as exc:  # the signer found no credentials: no request was sent
            raise dg.Failure(str(exc), allow_retries=False, metadata={NEEDS_FIX: True}) from None
        except requests.exceptions.SSLError as exc:
            raise dg.Failure(
                f"sink {self.sink_name!r}: TLS verification of {settings.url} failed ({exc}). Set ca_bundle to the "
                f"PEM file of the CA that signed the server certificate.",
                allow_retries=False,
                metadata={NEEDS_FIX: True},
            ) from None
        except requests.ConnectionError as exc:
            raise dg.Failure(
                f"sink {self.sink_name!r}: cannot reach {settings.url} ({type(exc).__name__}). Check the URL and that "
                f"the service is up and reachable from here."
            ) from None
        if response.status_code in (401, 403):
            raise dg.Failure(
                auth_error_message(settings, response.status_code, response.content),
                allow_retries=False,
                metadata={NEEDS_FIX: True},
            )
        return response


class ElasticsearchSinkResource(RestSinkResource):
    """Elasticsearch or OpenSearch `_bulk`. Ids are deterministic, so a replay overwrites, never duplicates."""

    asset_kind: ClassVar[str] = "elasticsearch"
    DESTINATION_FIELDS: ClassVar[tuple[str, ...]] = ("index", "op_type", "pipeline", "id_field", "id_fields")
    protocol_settings: ClassVar[type] = ElasticsearchSettings

    index: str = Field(
        default="events",
        description="Target index, alias or data stream. A template: static text, {feed}, {column}, "
        "{column|default} or a timestamp column's UTC date ({ts:%Y.%m.%d}), e.g. logs-{feed}-{ts:%Y.%m.%d}; "
        "a record whose column is null and has no default is dead-lettered.",
    )
    op_type: Literal["index", "create"] = Field(
        default="index",
        description="'index' overwrites by id; 'create' (required for data streams) keeps the first.",
    )
    pipeline: str | None = Field(
        default=None,
        description="Ingest pipeline to run on each document; a template like index picks one per record "
        "(e.g. {pipeline_column|_none}, where _none means no pipeline).",
    )
    id_field: str | None = Field(
        default=None,
        description="Column whose value is the document id as is (e.g. an event id). Overrides id_fields.",
    )
    id_fields: list[str] = Field(
        default=["_source_file", "_source_row"],
        description="Columns whose values make the document id (SHA-1 of them); empty = a hash of the whole "
        "document (content hash).",
    )
    url: str | None = Field(  # type: ignore[assignment]  # optional here: cloud_id may name the endpoint
        default=None, description="Base URL of the cluster, e.g. https://es.example:9200 (or give cloud_id)."
    )
    cloud_id: str | None = Field(
        default=None,
        description="Elastic Cloud deployment id ('name:base64...'), instead of url: requests go to its "
        "Elasticsearch endpoint, https://<es_uuid>.<host>[:port].",
    )
    # Authentication: at most one of api_key, username/password, bearer_token, aws_sigv4 (two is an error).
    api_key: str | None = Field(
        default=None, repr=False, description="Encoded API key (Authorization: ApiKey ...). Use EnvVar."
    )
    username: str | None = Field(default=None, description="Basic-auth user name.")
    password: str | None = Field(default=None, repr=False, description="Basic-auth password. Use EnvVar.")
    bearer_token: str | None = Field(default=None, repr=False, description="Bearer token. Use EnvVar.")
    aws_sigv4: bool = Field(
        default=False,
        description="Sign every request with AWS SigV4 (Amazon OpenSearch Service or Serverless), with the "
        "given AWS keys or else the AWS default credential chain (renewed before they expire).",
    )
    aws_service: Literal["es", "aoss"] = Field(
        default="es", description="'es' for OpenSearch Service domains, 'aoss' for OpenSearch Serverless."
    )
    aws_region: str | None = Field(
        default=None,
        description="Region of the domain or collection, e.g. us-east-1 (required with aws_sigv4).",
    )
    aws_access_key_id: str | None = Field(
        default=None,
        repr=False,
        description="AWS access key id (unset: the default credential chain). Use EnvVar.",
    )
    aws_secret_access_key: str | None = Field(
        default=None, repr=False, description="AWS secret access key, with aws_access_key_id. Use EnvVar."
    )
    aws_session_token: str | None = Field(
        default=None,
        repr=False,
        description="Session token of temporary keys (these expire and are not renewed: prefer the chain). "
        "Use EnvVar.",
    )
    aws_profile: str | None = Field(
        default=None, description="Profile of the shared AWS config files for the default credential chain."
    )

    @model_validator(mode="after")
    def _one_authentication(self) -> "ElasticsearchSinkResource":
        # Judged by which fields are set, so it holds before EnvVars resolve: a bad combination stops
        # the code location when it loads, not a run hours later.
        problem = es_auth.configuration_problem(self)
        if problem is not None:
            raise ValueError(f"sink {self.sink_name!r}: {problem}.")
        return self

    def endpoint(self) -> str:
        return es_auth.endpoint(self)

    def destination_uri(self) -> str:
        return f"{super().destination_uri().rstrip('/')}/{self.index}"

    def authorization(self) -> dict[str, str]:
        return es_auth.authorization(self)

    def request_auth(self) -> Any:
        return es_auth.request_auth(self)

    def id_expression(self) -> str:
        if self.id_field:
            return f"cast(`{self.id_field}` as string)"
        if not self.id_fields:
            return "sha1(_doc)"
        parts = ", ".join(f"coalesce(cast(`{f}` as string), '')" for f in self.id_fields)
        return f"sha1(concat_ws('\\u0001', {parts}))"

    def check_connection(self) -> None:
        try:
            settings = self.settings()
        except SinkConfigError as exc:
            raise dg.Failure(str(exc), allow_retries=False, metadata={NEEDS_FIX: True}) from None
        self._probe("GET", "/", settings)


class SplunkHecSinkResource(RestSinkResource):
    """Splunk HTTP Event Collector, `/services/collector/event`. HEC has no ids: delivery is at-least-once."""

    asset_kind: ClassVar[str] = "splunk"
    DESTINATION_FIELDS: ClassVar[tuple[str, ...]] = (
        "index",
        "source",
        "sourcetype",
        "host",
        "fields",
        "time_field",
    )
    protocol_settings: ClassVar[type] = HecSettings

    token: str = Field(repr=False, description="HEC token (Authorization: Splunk <token>). Use EnvVar.")
    index: str | None = Field(
        default=None,
        description="Splunk index; the token's default index when unset. A template: static text, {feed}, "
        "{column}, {column|default}, {ts:%Y.%m} (a record whose column is null, without default, is "
        "dead-lettered).",
    )
    source: str | None = Field(default="lakerelay", description="Event source; a template like index.")
    sourcetype: str | None = Field(default="_json", description="Event sourcetype; a template like index.")
    host: str | None = Field(default=None, description="Event host; a template like index (e.g. {hostname}).")
    fields: list[str] = Field(
        default=[],
        description='Columns sent as HEC indexed fields (the envelope\'s "fields" object, values as text; '
        "null values are left out). Empty: none.",
    )
    time_field: str | None = Field(default="ts", description="Timestamp column sent as the event time.")
    ack: bool = Field(
        default=False,
        description="Use indexer acknowledgement: a record counts as delivered only once /ack reports it "
        "indexed; unacknowledged requests are resent after ack_timeout_s (Splunk Enterprise).",
    )
    ack_timeout_s: float = Field(default=300.0, gt=0, description="Resend a request not acked within this.")
    ack_poll_interval_s: float = Field(default=1.0, gt=0, description="Seconds between /ack polls.")

    def authorization(self) -> dict[str, str]:
        return {"Authorization": f"Splunk {self.token}"}

    def check_connection(self) -> None:
        # An empty POST is answered "No data" (400, code 5) with a valid token and 401/403 without one.
        self._probe("POST", "/services/collector/event", self.settings(), data=b"")


class GenericRestSinkResource(RestSinkResource):
    """Any REST API that takes many records per call, as a JSON array or NDJSON; success is the HTTP status.

    There is no per-item answer, so a call is all-or-nothing: a success status accepts every record,
    429/5xx/408 resend the call; 413, 400, 409 and 422 halve it until the refused records stand alone,
    which are dead-lettered; any other status (404, 405, ...) is a configuration error that fails the run.
    """

    protocol_settings: ClassVar[type] = GenericSettings
    DESTINATION_FIELDS: ClassVar[tuple[str, ...]] = ("path", "method", "body_format")

    path: str = Field(default="", description="Path appended to url, e.g. /v1/events.")
    method: Literal["POST", "PUT"] = "POST"
    body_format: Literal["json_array", "ndjson"] = Field(
        default="json_array", description="'json_array': [doc, doc, ...]; 'ndjson': one document per line."
    )
    success_statuses: list[int] = Field(
        default=[200, 201, 202, 204], description="Statuses that mean every record of the call was accepted."
    )
    bearer_token: str | None = Field(default=None, repr=False, description="Bearer token. Use EnvVar.")
    username: str | None = None
    password: str | None = Field(default=None, repr=False, description="Basic-auth password. Use EnvVar.")
    health_path: str | None = Field(
        default=None, description="GET this path before posting to check reachability and credentials."
    )

    def authorization(self) -> dict[str, str]:
        return authorization(self.bearer_token, self.username, self.password)

    def check_connection(self) -> None:
        if self.health_path is not None:
            self._probe("GET", self.health_path, self.settings())
