"""Posting records to a sink: batches by bytes and count, requests in flight, retries, per-item results."""

import gzip
import random
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import requests

from resources.sinks.flow import AdaptiveConcurrency, RateLimits
from resources.sinks.protocols import GenericRest, Rejection, Settlement, SplunkHec, protocol_for
from resources.sinks.records import ArrowRecords, Record, call_boundaries
from resources.sinks.settings import SinkSettings

RETRYABLE_STATUS = {408, 429}  # and every 5xx
# Statuses with which an API that has no per-item answers refuses the records of a call.
RECORD_STATUS = {400, 409, 422}
BACKPRESSURE_STATUS = {429, 503}
HEC_ACK_PATH = "/services/collector/ack"


class SinkAuthError(RuntimeError):
    """The sink refused our credentials: retrying cannot help, so the run stops at once."""


class SinkConfigError(RuntimeError):
    """The sink answers in a way the configuration does not expect (e.g. no HEC ack id): fix the config."""


class SinkRequestError(RuntimeError):
    """The sink refused a request as a whole (e.g. 404, a bad pipeline): the configuration must change."""


class SinkTlsError(RuntimeError):
    """The sink's certificate did not verify: a configuration problem, not worth retrying."""


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
    concurrency_peak: int = 0
    concurrency_decreases: int = 0

    def merge(self, other: "PostOutcome") -> None:
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


def auth_error_message(settings: SinkSettings, status: int, body: bytes) -> str:
    return (
        f"sink {settings.name!r} ({settings.kind} at {settings.url}) refused the credentials with HTTP {status}: "
        f"{body[:300].decode(errors='replace')}. Check the token/API key configured for this sink "
        f"(environment variable behind its EnvVar) and its permissions on the target index."
    )


class SinkWriter:
    """Accepts records, cuts them into requests by bytes and count, and posts up to N at a time.

    One writer per Spark task: it owns a small thread pool whose threads each keep one keep-alive
    ``requests.Session``. Memory stays bounded: at most ``2 * max_in_flight`` requests are pending.
    Requests in flight are gated by an AIMD limit (adaptive mode) or a fixed one, and by rate limits.
    """

    def __init__(self, settings: SinkSettings) -> None:
        self.settings = settings
        self.protocol = protocol_for(settings)
        self.concurrency = AdaptiveConcurrency(settings.max_in_flight, settings.adaptive_concurrency)
        self.rate_limits = RateLimits(settings.rate_limit_requests_per_s, settings.rate_limit_records_per_s)
        # One HEC channel per writer: acks are tracked per channel, so all its requests share it.
        self.hec_channel = str(uuid.uuid4())
        self._pool = ThreadPoolExecutor(max_workers=max(1, settings.max_in_flight), thread_name_prefix="sink")
        self._local = threading.local()
        self._pending: list[Future] = []
        self._buffer: list[Record] = []
        self._buffer_bytes = 0
        self._tail: ArrowRecords | None = None  # the last, not yet full call of add_arrow
        self.outcome = PostOutcome()
        self._rng = random.Random()
        self._gave_up = threading.Event()
        self._give_up_lock = threading.Lock()

    # -- feeding ----------------------------------------------------------------------------------
    def add(self, record: Record) -> None:
        size = self.protocol.record_size(record)
        if self._buffer and (
            len(self._buffer) >= self.settings.max_records_per_call
            or self._buffer_bytes + size > self.settings.max_bytes_per_call
        ):
            self._flush()
        self._buffer.append(record)
        self._buffer_bytes += size

    def add_arrow(self, ids: pa.Array, docs: pa.Array, times: pa.Array) -> None:
        """Add a column slice of records: cut into calls and encoded by Arrow, not record by record."""
        if self._buffer:
            self._flush()
        chunk = ArrowRecords(ids, docs, times)
        if self._tail is not None:
            tail, self._tail = self._tail, None
            chunk = ArrowRecords(
                pa.concat_arrays([tail.ids, ids.cast(tail.ids.type)]),
                pa.concat_arrays([tail.docs, docs.cast(tail.docs.type)]),
                pa.concat_arrays([tail.times, times.cast(tail.times.type)]),
            )
        if not len(chunk):
            return
        s = self.settings
        sizes = pc.binary_length(chunk.docs).to_numpy(zero_copy_only=False) + self.protocol.overhead(chunk)
        cuts = call_boundaries(sizes, s.max_records_per_call, s.max_bytes_per_call)
        for start, stop in cuts[:-1]:
            self._submit(chunk[start:stop])
        start, stop = cuts[-1]
        last = chunk[start:stop]
        if (
            stop - start >= s.max_records_per_call
            or int(sizes[start:stop].sum()) >= 0.9 * s.max_bytes_per_call
        ):
            self._submit(last)
        else:
            self._tail = last

    def close(self) -> PostOutcome:
        """Post what is buffered, wait for every request, and return the totals."""
        try:
            if self._tail is not None:
                tail, self._tail = self._tail, None
                self._submit(tail)
            if self._buffer:
                self._flush()
            while self._pending:
                self._collect(self._pending.pop(0))
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self.outcome.concurrency_peak = self.concurrency.peak
        self.outcome.concurrency_decreases = self.concurrency.decreases
        return self.outcome

    def __enter__(self) -> "SinkWriter":
        return self

    def __exit__(self, *exc) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _flush(self) -> None:
        if self._tail is not None:
            tail, self._tail = self._tail, None
            self._submit(tail)
        chunk, self._buffer, self._buffer_bytes = self._buffer, [], 0
        self._submit(chunk)

    def _submit(self, chunk: list[Record] | ArrowRecords) -> None:
        while len(self._pending) >= 2 * self.settings.max_in_flight:
            self._collect(self._pending.pop(0))
        self._pending.append(self._pool.submit(self._deliver, chunk))

    def _collect(self, future: Future) -> None:
        self.outcome.merge(future.result())

    # -- delivering one request (runs on a pool thread) -------------------------------------------
    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.headers.update(self.settings.headers)
            session.headers["Content-Type"] = self.protocol.content_type
            if self.settings.gzip_level > 0:
                session.headers["Content-Encoding"] = "gzip"
            if self.settings.kind == "splunk_hec":
                session.headers["X-Splunk-Request-Channel"] = self.hec_channel
            session.cert = self.settings.cert
            session.verify = self.settings.verify
            self._local.session = session
        return session

    def _deliver(self, records: list[Record] | ArrowRecords) -> PostOutcome:
        outcome = PostOutcome()
        queue = [records]
        while queue:
            self._deliver_request(queue.pop(), outcome, queue)
        return outcome

    def _deliver_request(
        self, records: list[Record] | ArrowRecords, outcome: PostOutcome, queue: list
    ) -> None:
        """Post one request until each of its records is accepted or rejected, or the deadline passes.

        Retry by kind, as Logstash and Kafka Connect do: whole-request 429/5xx/408, network errors and
        per-item 429/5xx are transient and retried with backoff until ``delivery_timeout_s`` after the
        first attempt; only a per-record rejection (a 4xx item) becomes a dead letter. When the
        deadline passes, the writer gives up as a whole and reports what is still pending, so the
        run fails without settling and the next run resumes: "we stopped trying" is never a dead letter.
        """
        s = self.settings
        pending = records
        deadline = time.monotonic() + s.delivery_timeout_s
        attempt = 0
        while True:
            if self._gave_up.is_set():
                outcome.pending += len(pending)
                return
            attempt += 1
            settled, retry_after, problem = self._attempt(pending, outcome, queue)
            if settled is None:  # split into smaller requests, queued
                return
            outcome.accepted += settled.accepted
            outcome.rejected.extend(settled.rejected)
            if not settled.retry:
                return
            pending = settled.retry
            delay = self._backoff(attempt, retry_after)
            if time.monotonic() + delay > deadline:
                self.give_up(
                    f"{problem or 'retryable failures'} for {s.delivery_timeout_s:g}s "
                    f"(delivery_timeout_s) over {attempt} attempts"
                )
                outcome.pending += len(pending)
                return
            outcome.retried += len(pending)
            self._gave_up.wait(delay)  # wakes early when another request gives up

    def _attempt(
        self, pending: list[Record] | ArrowRecords, outcome: PostOutcome, queue: list
    ) -> tuple[Settlement | None, float | None, str]:
        """One HTTP attempt: how it settled ``pending`` (None = split and queued), Retry-After, the problem."""
        s = self.settings
        url = s.url.rstrip("/") + self.protocol.path
        body = self.protocol.encode(pending)
        payload = gzip.compress(body, s.gzip_level) if s.gzip_level > 0 else body
        self.rate_limits.wait(len(pending))
        self.concurrency.acquire()
        rtt, backpressure = None, False
        started = time.perf_counter()
        outcome.attempts += 1
        try:
            response = self._session().request(
                s.generic_method if isinstance(self.protocol, GenericRest) else "POST",
                url,
                data=payload,
                timeout=(s.connect_timeout_s, s.read_timeout_s),
                verify=s.verify,  # per request too: REQUESTS_CA_BUNDLE would override the session's
            )
            rtt = time.perf_counter() - started
            backpressure = response.status_code in BACKPRESSURE_STATUS
        except requests.exceptions.SSLError as exc:
            raise SinkTlsError(
                f"sink {s.name!r}: TLS verification of {s.url} failed ({exc}). If the server uses a "
                f"private CA or a self-signed certificate, set ca_bundle to its PEM file; do not turn "
                f"verification off outside a test."
            ) from None
        except (requests.ConnectionError, requests.Timeout) as exc:
            # The server may have committed before the connection dropped: deterministic ids make
            # the resend an overwrite in Elasticsearch; HEC is at-least-once by nature.
            backpressure = isinstance(exc, requests.Timeout)
            return Settlement(retry=pending), None, f"{type(exc).__name__}: {exc}"
        finally:
            self.concurrency.release(rtt, backpressure)
        outcome.requests += 1
        outcome.bytes_sent += len(payload)
        outcome.records_sent += len(pending)
        outcome.latencies_ms.append(rtt * 1000)
        status = response.status_code
        if status in (401, 403):
            raise SinkAuthError(auth_error_message(s, status, response.content))
        if self._is_success(status):
            settled = self.protocol.settle(pending, response.content)
            if s.hec_ack and isinstance(self.protocol, SplunkHec):
                settled = self._await_hec_ack(pending, response.content, outcome)
            reason = settled.retry_reasons[0] if settled.retry_reasons else ""
            return settled, None, f"items answered {reason}" if reason else ""
        if status in RETRYABLE_STATUS or status >= 500:
            return Settlement(retry=pending), _retry_after(response), f"HTTP {status}"
        if isinstance(self.protocol, SplunkHec) and (
            split := self.protocol.settle_invalid(pending, response.content)
        ):
            return split, None, "resending after an invalid event"
        if status == 413 or (isinstance(self.protocol, GenericRest) and status in RECORD_STATUS):
            # Too large, or refused as a whole by an API without per-item answers: halve the call
            # until the record(s) to blame stand alone, so that only they are dead-lettered.
            if len(pending) > 1:
                half = len(pending) // 2
                queue.extend([pending[:half], pending[half:]])
                return None, None, ""
            reason = response.content[:2000].decode(errors="replace")
            return (
                Settlement(rejected=[Rejection(r, status, f"http_{status}", reason) for r in pending]),
                None,
                "",
            )
        raise SinkRequestError(
            f"sink {s.name!r} answered HTTP {status} to {self.protocol.path or '/'} at {s.url}: "
            f"{response.content[:300].decode(errors='replace')}. This refuses the request as a whole, not "
            f"a record (per-record rejections come inside a 2xx), so nothing was dead-lettered: check the "
            f"sink's URL, index/path and pipeline settings, then re-run."
        )

    def give_up(self, reason: str) -> None:
        """Stop delivering (out of time, or the run lost its lease): what is not yet sent stays pending."""
        with self._give_up_lock:
            if not self._gave_up.is_set():
                self.outcome.pending_reason = reason
                self._gave_up.set()

    @property
    def gave_up(self) -> bool:
        """True once a request ran out of delivery time: the rest of this writer's input stays pending."""
        return self._gave_up.is_set()

    def _is_success(self, status: int) -> bool:
        if isinstance(self.protocol, GenericRest):
            return status in self.protocol.success
        return 200 <= status < 300

    def _await_hec_ack(self, records: list[Record], body: bytes, outcome: PostOutcome) -> Settlement:
        """Poll ``/services/collector/ack`` until Splunk says the request is indexed; resend on timeout.

        A 200 without ack only means "parsed": with acknowledgement on, records count as accepted
        when their ack id is reported true. Until then (or when the ack is lost) they are resent.
        """
        s = self.settings
        try:
            ack_id = orjson.loads(body).get("ackId")
        except (orjson.JSONDecodeError, AttributeError):
            ack_id = None
        if not isinstance(ack_id, int):
            raise SinkConfigError(
                f"sink {s.name!r}: hec_ack is on but {s.url} answered without an ackId. Enable indexer "
                f"acknowledgement on the HEC token, or set hec_ack to false."
            )
        deadline = time.monotonic() + s.hec_ack_timeout_s
        url = s.url.rstrip("/") + HEC_ACK_PATH
        while True:
            try:
                answer = self._session().post(
                    url,
                    data=orjson.dumps({"acks": [ack_id]}),
                    timeout=(s.connect_timeout_s, s.read_timeout_s),
                    verify=s.verify,
                )
                if answer.status_code == 200 and answer.json().get("acks", {}).get(str(ack_id)):
                    return Settlement(accepted=len(records))
            except (requests.ConnectionError, requests.Timeout, ValueError):
                pass  # polling again is harmless; the deadline bounds it
            if time.monotonic() >= deadline:
                outcome.ack_timeouts += 1
                return Settlement(
                    retry=records, retry_reasons=[f"no HEC ack {ack_id} within {s.hec_ack_timeout_s}s"]
                )
            time.sleep(s.hec_ack_poll_interval_s)

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        s = self.settings
        delay = min(s.backoff_max_s, s.backoff_initial_s * 2 ** (attempt - 1)) * self._rng.uniform(0.5, 1.0)
        if retry_after is not None:
            delay = max(delay, min(retry_after, s.backoff_max_s))
        return delay


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
