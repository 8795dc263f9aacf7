"""Plain, picklable sink settings: what a Spark executor needs to post, and nothing Dagster-specific.

The values come from the sink's Dagster resource once, by name (``from_fields``): every field here
has a resource field of the same name, and the defaults live only on the resource. What only one
protocol needs lives in that protocol's own settings (``protocol``), e.g. HEC's indexer acknowledgement
in ``resources/sinks/hec.py``; the common fields below are what the writer (transport and flow
control) reads.
"""

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, TypeVar

T = TypeVar("T")


class ProtocolSettings(Protocol):
    """A protocol's own settings: ``kind`` names it, ``open`` makes the per-writer protocol object."""

    kind: str
    # Each is a frozen dataclass (routes override fields with dataclasses.replace).
    __dataclass_fields__: ClassVar[dict[str, Any]]

    def open(self, sink: "SinkSettings") -> Any: ...


def per_record_columns(protocol: object) -> dict[str, str]:
    """Which of a protocol's settings may be templates, and the column each then comes from."""
    return dict(getattr(protocol, "per_record_columns", {}))


@dataclass(frozen=True)
class SinkSettings:
    sink_name: str
    url: str
    protocol: ProtocolSettings  # the wire protocol's settings (Elasticsearch, HEC, generic REST)
    headers: dict[str, str] = field(repr=False)  # may hold secrets: never printed
    # Batching and flow control
    max_records_per_call: int
    max_bytes_per_call: int
    max_in_flight: int  # the ceiling when adaptive_concurrency is on
    adaptive_concurrency: bool
    rate_limit_requests_per_s: float | None  # per writer (Spark task) once per_task_settings ran
    rate_limit_records_per_s: float | None
    gzip_level: int
    # Retries: transient failures are retried until this long after a request's first attempt
    delivery_timeout_s: float
    backoff_initial_s: float
    backoff_max_s: float
    # HTTP and TLS
    connect_timeout_s: float
    read_timeout_s: float
    verify_tls: bool
    ca_bundle: str | None
    client_cert: str | None  # PEM with the certificate (and the key when client_key is unset)
    client_key: str | None
    # A requests auth that signs each request as sent (AWS SigV4, ``sigv4.py``), or None. Its secrets are
    # not in its repr; it is last, with a default, so settings built before it existed still build.
    auth: Any = field(default=None, repr=False)
    # Destination values taken per record (``pipelines/post/destination.py`` fills it for a run):
    # (column, what it is, e.g. "index template 'logs-{service}'"). Empty: every destination is static.
    per_record: tuple[tuple[str, str], ...] = ()

    @property
    def kind(self) -> str:
        """The protocol's name: "elasticsearch", "splunk_hec" or "generic"."""
        return self.protocol.kind

    @property
    def verify(self) -> bool | str:
        return self.ca_bundle or self.verify_tls

    @property
    def cert(self) -> str | tuple[str, str] | None:
        if self.client_cert and self.client_key:
            return (self.client_cert, self.client_key)
        return self.client_cert


def from_fields(cls: type[T], source: object, **given: Any) -> T:
    """``cls`` (a dataclass) filled from the same-named attributes of ``source``, except those ``given``.

    Lists become tuples: settings are frozen and travel to executors, so they hold no mutable values.
    """
    values = dict(given)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name not in values:
            value = getattr(source, f.name)
            values[f.name] = tuple(value) if isinstance(value, list) else value
    return cls(**values)
