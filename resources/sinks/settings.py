"""Plain, picklable sink settings: what a Spark executor needs to post, and nothing Dagster-specific."""

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SinkSettings:
    kind: str  # "elasticsearch" | "splunk_hec" | "generic"
    name: str
    url: str
    headers: dict[str, str] = field(default_factory=dict, repr=False)  # may hold secrets: never printed
    # Elasticsearch
    index: str | None = None
    op_type: str = "index"
    pipeline: str | None = None
    # Splunk HEC envelope and indexer acknowledgement
    hec_source: str | None = None
    hec_sourcetype: str | None = None
    hec_host: str | None = None
    hec_ack: bool = False
    hec_ack_timeout_s: float = 300.0
    hec_ack_poll_interval_s: float = 1.0
    # Generic REST API
    generic_path: str = ""
    generic_method: str = "POST"
    generic_format: str = "json_array"  # "json_array" | "ndjson"
    generic_success_statuses: tuple[int, ...] = (200, 201, 202, 204)
    # Batching and flow control
    max_records_per_call: int = 1000
    max_bytes_per_call: int = 5_000_000
    max_in_flight: int = 4  # the ceiling when adaptive_concurrency is on
    adaptive_concurrency: bool = False
    rate_limit_requests_per_s: float | None = None  # per writer (Spark task)
    rate_limit_records_per_s: float | None = None  # per writer (Spark task)
    gzip_level: int = 0
    # Retries: transient failures are retried until this long after a request's first attempt
    delivery_timeout_s: float = 600.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    # HTTP and TLS
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 60.0
    verify_tls: bool = True
    ca_bundle: str | None = None
    client_cert: str | None = None  # PEM with the certificate (and the key when client_key is unset)
    client_key: str | None = None

    @property
    def verify(self) -> bool | str:
        return self.ca_bundle or self.verify_tls

    @property
    def cert(self) -> str | tuple[str, str] | None:
        if self.client_cert and self.client_key:
            return (self.client_cert, self.client_key)
        return self.client_cert
