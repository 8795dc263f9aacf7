"""What a writer reports: records accepted, rejected (dead letters), pending, and how the calls went."""

from dataclasses import dataclass, field

from resources.sinks.protocols import Rejection


@dataclass
class PostOutcome:
    """Totals of one writer. ``requests`` are answered calls, ``attempts`` every try incl. network errors."""

    accepted: int = 0
    retried: int = 0
    requests: int = 0
    attempts: int = 0
    bytes_sent: int = 0
    records_sent: int = 0  # records in answered calls (resends included): records per call = this / requests
    ack_timeouts: int = 0
    pending: int = 0  # records neither accepted nor rejected when the delivery deadline passed
    pending_reason: str = ""
    rejected: list[Rejection] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    concurrency_peak: int = 0  # set by the writer when it closes
    concurrency_decreases: int = 0

    def merge(self, other: "PostOutcome") -> None:
        """Add one request's totals (the concurrency fields are the writer's own, not summed)."""
        self.accepted += other.accepted
        self.retried += other.retried
        self.requests += other.requests
        self.attempts += other.attempts
        self.bytes_sent += other.bytes_sent
        self.records_sent += other.records_sent
        self.ack_timeouts += other.ack_timeouts
        self.pending += other.pending
        self.pending_reason = self.pending_reason or other.pending_reason
        self.rejected.extend(other.rejected)
        self.latencies_ms.extend(other.latencies_ms)

    @property
    def dead_lettered(self) -> int:
        return len(self.rejected)
