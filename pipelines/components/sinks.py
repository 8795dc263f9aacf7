"""``lakerelay.ElasticsearchSink``, ``lakerelay.SplunkHecSink``, ``lakerelay.RestSink``: named endpoints.

A sink is an endpoint, its credentials and how it is posted to; where records go in it (index,
sourcetype, path...) is a default each route may override. Secrets are never written in YAML: a
``*_env`` field names the environment variable that holds the secret, which reaches the resource
as ``dg.EnvVar`` (resolved when a run starts, never shown in the UI). URLs and other per-deployment
values come from ``{{ env.X }}`` or ``{{ env('X', 'default') }}``.
"""

import os
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar, Literal

import dagster as dg
from pydantic import Field

from pipelines.components.declaration import Declaration, only_set
from resources.sinks.resource import (
    ElasticsearchSinkResource,
    GenericRestSinkResource,
    RestSinkResource,
    SplunkHecSinkResource,
)


class Sink(Declaration):
    """Fields every sink shares; unset ones take the resource's defaults (``resources/sinks/resource.py``)."""

    resource_type: ClassVar[type[RestSinkResource]]
    # YAML field naming an environment variable → the resource field it fills with dg.EnvVar.
    SECRET_FIELDS: ClassVar[dict[str, str]] = {}
    REQUIRED_SECRETS: ClassVar[tuple[str, ...]] = ()

    name: str = Field(description="The sink's name: routes name it, and it is its resource key.")
    url: str = Field(description="Base URL, e.g. https://es.example:9200 (use {{ env.X }} per deployment).")
    max_records_per_call: int | None = Field(default=None, gt=0)
    max_bytes_per_call: int | None = Field(default=None, gt=0)
    max_in_flight: int | None = Field(default=None, gt=0)
    adaptive_concurrency: bool | None = None
    rate_limit_requests_per_s: float | None = Field(default=None, gt=0)
    rate_limit_records_per_s: float | None = Field(default=None, gt=0)
    gzip_level: int | None = Field(default=None, ge=0, le=9)
    delivery_timeout_s: float | None = Field(default=None, gt=0)
    backoff_initial_s: float | None = Field(default=None, ge=0)
    backoff_max_s: float | None = Field(default=None, ge=0)
    connect_timeout_s: float | None = Field(default=None, gt=0)
    read_timeout_s: float | None = Field(default=None, gt=0)
    verify_tls: bool | None = None
    ca_bundle: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    extra_headers: dict[str, str] | None = None

    def resource(self, defaults: Mapping[str, Any] = MappingProxyType({})) -> RestSinkResource:
        """The sink's Dagster resource: set values over ``defaults`` (the deployment's), secrets as
        ``EnvVar`` of the variables named."""
        values: dict[str, Any] = dict(defaults) | only_set(
            self, "name", "development_token", *self.SECRET_FIELDS
        )
        for yaml_field, resource_field in self.SECRET_FIELDS.items():
            variable = getattr(self, yaml_field)
            # An optional secret whose variable is unset here is no secret (the sink is used without
            # that credential, as with the variable left out); a required one stays an EnvVar, whose
            # run then fails naming the variable to set.
            if variable and (os.environ.get(variable) or yaml_field in self.REQUIRED_SECRETS):
                values[resource_field] = dg.EnvVar(variable)
        values |= self.development_values()
        try:
            return self.resource_type(sink_name=self.name, **values)
        except Exception as exc:  # pydantic's message names the field and the rule
            raise ValueError(f"{self.declared_in}: sink {self.name!r}: {exc}") from None

    def development_values(self) -> dict[str, Any]:
        """Values that stand in for unset secrets on a laptop (none by default)."""
        return {}

    @property
    def kind(self) -> str:
        return self.resource_type.asset_kind

    @property
    def destination_fields(self) -> tuple[str, ...]:
        return self.resource_type.DESTINATION_FIELDS


class ElasticsearchSink(Sink):
    """Elasticsearch or OpenSearch ``_bulk``: deterministic ids, so a replay overwrites, never duplicates."""

    EXAMPLE: ClassVar[str] = """\
# Elasticsearch or OpenSearch sink @name@. Secrets never go in this file: *_env names the
# environment variable holding one. Per-deployment values come from {{ env('X', 'default') }}.
type: @type@

attributes:
  name: @name@
  url: "{{ env('ES_URL', 'http://127.0.0.1:9200') }}"   # or cloud_id: <Elastic Cloud id>
  index: @name@             # routes' default; a route may set its own (templates allowed)
  # api_key_env: ES_API_KEY           # one of: api_key_env | username + password_env | bearer_token_env | aws_sigv4
  # aws_sigv4: true                   # Amazon OpenSearch Service (es) or Serverless (aoss)
  # aws_service: es
  # aws_region: eu-west-1
  # ca_bundle: /etc/ssl/my-ca.pem     # client_cert / client_key for mutual TLS
  # max_bytes_per_call: 5000000       # batching and flow control: docs/reference.md
"""

    resource_type: ClassVar[type[RestSinkResource]] = ElasticsearchSinkResource
    SECRET_FIELDS: ClassVar[dict[str, str]] = {
        "api_key_env": "api_key",
        "password_env": "password",
        "bearer_token_env": "bearer_token",
        "aws_access_key_id_env": "aws_access_key_id",
        "aws_secret_access_key_env": "aws_secret_access_key",
        "aws_session_token_env": "aws_session_token",
    }

    url: str | None = Field(default=None, description="Base URL; or cloud_id for Elastic Cloud.")  # type: ignore[assignment]
    cloud_id: str | None = Field(default=None, description="Elastic Cloud deployment id, instead of url.")

    index: str | None = Field(default=None, description="Default index, alias or data stream of its routes.")
    op_type: Literal["index", "create"] | None = None
    pipeline: str | None = None
    id_field: str | None = None
    id_fields: list[str] | None = None
    username: str | None = None
    api_key_env: str | None = Field(default=None, description="Variable holding the encoded API key.")
    password_env: str | None = Field(default=None, description="Variable holding the basic-auth password.")
    bearer_token_env: str | None = Field(default=None, description="Variable holding a bearer token.")
    aws_sigv4: bool | None = Field(
        default=None, description="Sign requests with AWS SigV4 (Amazon OpenSearch Service or Serverless)."
    )
    aws_service: Literal["es", "aoss"] | None = Field(
        default=None, description="'es': OpenSearch Service; 'aoss': OpenSearch Serverless."
    )
    aws_region: str | None = None
    aws_profile: str | None = Field(default=None, description="AWS profile of the default credential chain.")
    aws_access_key_id_env: str | None = Field(
        default=None, description="Variable holding an access key id (unset: the default credential chain)."
    )
    aws_secret_access_key_env: str | None = None
    aws_session_token_env: str | None = None


class SplunkHecSink(Sink):
    """Splunk HTTP Event Collector: no ids, so delivery is at-least-once within a stated bound."""

    EXAMPLE: ClassVar[str] = """\
# Splunk HTTP Event Collector sink @name@. The token is never in this file: token_env names the
# environment variable holding it.
type: @type@

attributes:
  name: @name@
  url: "{{ env('HEC_URL', 'https://127.0.0.1:8088') }}"
  token_env: HEC_TOKEN
  sourcetype: _json         # routes' default; index, source, sourcetype and host take templates
  # index: main
  # fields: [host, severity]  # columns sent as indexed fields
  # ack: true                 # indexer acknowledgement (Splunk Enterprise)
"""

    resource_type: ClassVar[type[RestSinkResource]] = SplunkHecSinkResource
    SECRET_FIELDS: ClassVar[dict[str, str]] = {"token_env": "token"}
    REQUIRED_SECRETS: ClassVar[tuple[str, ...]] = ("token_env",)

    def development_values(self) -> dict[str, Any]:
        if self.development_token and not os.environ.get(self.token_env):
            return {"token": self.development_token}
        return {}

    token_env: str = Field(description="Variable holding the HEC token.")
    development_token: str | None = Field(
        default=None,
        description="A token that is not a secret (the local sink's), used while token_env's variable is unset.",
    )
    index: str | None = None
    source: str | None = None
    sourcetype: str | None = None
    host: str | None = None
    fields: list[str] | None = Field(default=None, description="Columns sent as HEC indexed fields.")
    time_field: str | None = None
    ack: bool | None = None
    ack_timeout_s: float | None = Field(default=None, gt=0)
    ack_poll_interval_s: float | None = Field(default=None, gt=0)


class RestSink(Sink):
    """Any REST API taking many records per call (JSON array or NDJSON); a call is all-or-nothing."""

    EXAMPLE: ClassVar[str] = """\
# A REST API sink @name@ taking many records per call; a call is all-or-nothing.
type: @type@

attributes:
  name: @name@
  url: "{{ env('API_URL', 'http://127.0.0.1:8080') }}"
  path: /v1/events          # a route may post to its own path
  body_format: json_array   # json_array | ndjson
  # bearer_token_env: API_TOKEN
  # health_path: /health    # checked before posting
"""

    resource_type: ClassVar[type[RestSinkResource]] = GenericRestSinkResource
    SECRET_FIELDS: ClassVar[dict[str, str]] = {"bearer_token_env": "bearer_token", "password_env": "password"}

    path: str | None = None
    method: Literal["POST", "PUT"] | None = None
    body_format: Literal["json_array", "ndjson"] | None = None
    success_statuses: list[int] | None = None
    username: str | None = None
    bearer_token_env: str | None = None
    password_env: str | None = None
    health_path: str | None = None
