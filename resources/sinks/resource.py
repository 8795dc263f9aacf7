"""Dagster resources for the REST sinks. They turn configuration (secrets via EnvVar) into settings."""

import base64
from typing import Literal

import dagster as dg
import requests
from pydantic import Field

from resources.sinks.settings import SinkSettings
from resources.sinks.writer import auth_error_message


class RestSinkResource(dg.ConfigurableResource):
    """Settings every REST sink shares: endpoint, batching, concurrency, retries, TLS."""

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
    max_in_flight: int = Field(default=4, gt=0, description="Requests in flight per Spark task.")
    gzip_level: int = Field(default=0, ge=0, le=9, description="Gzip request bodies at this level (0 = off).")
    max_attempts: int = Field(default=6, gt=0, description="Attempts per request, the first included.")
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

    def settings(self) -> SinkSettings:
        raise NotImplementedError

    def id_expression(self) -> str | None:
        """Spark SQL for the record id, or None when the sink takes no ids."""
        return None

    def check_connection(self) -> None:
        """Fail fast, before Spark starts, when the endpoint is unreachable or refuses the credentials."""

    def _common(self) -> dict:
        return {
            "name": self.sink_name,
            "url": self.url,
            "max_records_per_call": self.max_records_per_call,
            "max_bytes_per_call": self.max_bytes_per_call,
            "max_in_flight": self.max_in_flight,
            "gzip_level": self.gzip_level,
            "max_attempts": self.max_attempts,
            "backoff_initial_s": self.backoff_initial_s,
            "backoff_max_s": self.backoff_max_s,
            "connect_timeout_s": self.connect_timeout_s,
            "read_timeout_s": self.read_timeout_s,
            "verify_tls": self.verify_tls,
            "ca_bundle": self.ca_bundle,
        }

    def _probe(self, method: str, path: str, settings: SinkSettings, **kwargs) -> requests.Response:
        try:
            response = requests.request(
                method,
                self.url.rstrip("/") + path,
                headers=settings.headers,
                timeout=(self.connect_timeout_s, self.read_timeout_s),
                verify=settings.verify,
                **kwargs,
            )
        except requests.exceptions.SSLError as exc:
            raise dg.Failure(
                f"sink {self.sink_name!r}: TLS verification of {self.url} failed ({exc}). Set ca_bundle to the "
                f"PEM file of the CA that signed the server certificate."
            ) from None
        except requests.ConnectionError as exc:
            raise dg.Failure(
                f"sink {self.sink_name!r}: cannot reach {self.url} ({type(exc).__name__}). Check the URL and that "
                f"the service is up and reachable from here."
            ) from None
        if response.status_code in (401, 403):
            raise dg.Failure(auth_error_message(settings, response.status_code, response.content))
        return response


class ElasticsearchSinkResource(RestSinkResource):
    """Elasticsearch or OpenSearch `_bulk`. Ids are deterministic, so a replay overwrites, never duplicates."""

    index: str = Field(default="events", description="Target index, alias or data stream.")
    op_type: Literal["index", "create"] = Field(
        default="index",
        description="'index' overwrites by id; 'create' (required for data streams) keeps the first.",
    )
    pipeline: str | None = Field(default=None, description="Ingest pipeline to run on each document.")
    id_fields: list[str] = Field(
        default=["_source_file", "_source_row"],
        description="Columns whose values make the document id (hashed); empty = a hash of the whole document.",
    )
    api_key: str | None = Field(
        default=None, description="Encoded API key (Authorization: ApiKey ...). Use EnvVar."
    )
    username: str | None = None
    password: str | None = Field(default=None, description="Basic-auth password. Use EnvVar.")
    bearer_token: str | None = Field(default=None, description="Bearer token. Use EnvVar.")

    def settings(self) -> SinkSettings:
        headers = {}
        if self.api_key:
            headers["Authorization"] = f"ApiKey {self.api_key}"
        elif self.bearer_token:
            headers["Authorization"] = f"Bearer {self.bearer_token}"
        elif self.username:
            token = base64.b64encode(f"{self.username}:{self.password or ''}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        return SinkSettings(
            kind="elasticsearch",
            headers=headers,
            index=self.index,
            op_type=self.op_type,
            pipeline=self.pipeline,
            **self._common(),
        )

    def id_expression(self) -> str:
        if not self.id_fields:
            return "sha1(_doc)"
        parts = ", ".join(f"coalesce(cast(`{f}` as string), '')" for f in self.id_fields)
        return f"sha1(concat_ws('\\u0001', {parts}))"

    def check_connection(self) -> None:
        self._probe("GET", "/", self.settings())


class SplunkHecSinkResource(RestSinkResource):
    """Splunk HTTP Event Collector, `/services/collector/event`. HEC has no ids: delivery is at-least-once."""

    token: str = Field(description="HEC token (Authorization: Splunk <token>). Use EnvVar.")
    index: str | None = Field(default=None, description="Splunk index; the token's default index when unset.")
    source: str | None = "lakerelay"
    sourcetype: str | None = "_json"
    host: str | None = None
    time_field: str | None = Field(default="ts", description="Timestamp column sent as the event time.")

    def settings(self) -> SinkSettings:
        return SinkSettings(
            kind="splunk_hec",
            headers={"Authorization": f"Splunk {self.token}"},
            index=self.index,
            hec_source=self.source,
            hec_sourcetype=self.sourcetype,
            hec_host=self.host,
            **self._common(),
        )

    def check_connection(self) -> None:
        # An empty POST is answered "No data" (400, code 5) with a valid token and 401/403 without one.
        self._probe("POST", "/services/collector/event", self.settings(), data=b"")
