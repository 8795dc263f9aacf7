"""What a wire protocol decides, as one interface the writer calls; each protocol has its own module.

A protocol (``elasticsearch.py``, ``hec.py``, ``generic.py``) owns, for its sink: the request (method,
path, content type, headers), the encoding of records, the success test, how a successful response
settles each record, which failures are retried, how a refusal is narrowed to the records to blame,
and an acknowledgement hook (HEC's indexer ack). The writer (``writer.py``) only moves bytes and
paces them: it never asks which protocol it talks to.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from resources.sinks.records import ArrowRecords, Record
from resources.sinks.settings import SinkSettings

Records = Sequence[Record] | ArrowRecords  # an ArrowRecords slice behaves like a list of Record
# POST ``body`` to ``path`` of the sink over the writer's session (for follow-up calls such as HEC's /ack).
Post = Callable[[str, bytes], Any]

RETRYABLE_STATUS = frozenset({408, 429})  # and every 5xx


@dataclass
class Rejection:
    record: Record
    status: int | None
    error_type: str
    reason: str


@dataclass
class Settlement:
    """How one response settled the records of its request."""

    accepted: int = 0
    retry: Records = field(default_factory=list)
    retry_reasons: list[str] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    ack_timeouts: int = 0  # acknowledgements that did not come in time (their records are in retry)
    problem: str = ""  # what to say if the retries run out of time


class SinkProtocol:
    """The defaults: 2xx accepts the whole call, 408/429/5xx are retried, 413 is halved."""

    kind = ""
    method = "POST"
    path = ""
    content_type = "application/json"

    def __init__(self, sink: SinkSettings) -> None:
        self.sink = sink

    def headers(self) -> dict[str, str]:
        """Headers of every request of this writer beside auth and content type."""
        return {}

    def encode(self, records: Records) -> bytes:
        raise NotImplementedError

    def overhead(self, records: ArrowRecords) -> np.ndarray:
        """Bytes each record adds to a body beside its document (for cutting calls by bytes)."""
        raise NotImplementedError

    def is_success(self, status: int) -> bool:
        return 200 <= status < 300

    def settle(self, records: Records, body: bytes) -> Settlement:
        """A successful response's verdict per record; by default it accepts them all."""
        return Settlement(accepted=len(records))

    def confirm(self, records: Records, body: bytes, settled: Settlement, post: Post) -> Settlement:
        """After a success: wait for the sink to confirm delivery (HEC's ack). By default it is final."""
        return settled

    def is_retryable(self, status: int) -> bool:
        """A status that says "not now" about the whole call: resend it after a backoff."""
        return status in RETRYABLE_STATUS or status >= 500

    def settle_refusal(self, records: Records, status: int, body: bytes) -> Settlement | None:
        """A refusal that names the records to blame (HEC's code 6), or None."""
        return None

    def splits(self, status: int) -> bool:
        """A refusal of the call as a whole that halving narrows to the records to blame."""
        return status == 413
