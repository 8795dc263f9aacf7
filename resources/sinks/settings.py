"""Plain, picklable sink settings: what a Spark executor needs to post, and nothing Dagster-specific."""

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SinkSettings:
    kind: str  # "elasticsearch" | "splunk_hec"
    name: str
    url: str
    headers: dict[str, str] = field(default_factory=dict, repr=False)  # may hold secrets: never printed
    # Elasticsearch
    index: str | None = None
    op_type: str = "index"
    pipeline: str | None = None
    # Splunk HEC envelope
    hec_source: str | None = None
    hec_sourcetype: str | None = None
    hec_host: str | None = None
    # Batching and flow control
    max_records_per_call: int = 1000
    max_bytes_per_call: int = 5_000_000
    max_in_flight: int = 4
    gzip_level: int = 0
    # Retries
    max_attempts: int = 6
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    # HTTP
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 60.0
    verify_tls: bool = True
    ca_bundle: str | None = None

    @property
    def verify(self) -> bool | str:
        return self.ca_bundle or self.verify_tls
