"""Posting records to a sink: batches by bytes and count, requests in flight, retries, per-item results."""

import gzip
import random
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import requests

from resources.sinks.protocols import Record, Rejection, Settlement, SplunkHec, protocol_for
from resources.sinks.settings import SinkSettings

RETRYABLE_STATUS = {408, 429, 500, 502, 503, 504}


class SinkAuthError(RuntimeError):
    """The sink refused our credentials: retrying cannot help, so the run stops at once."""


class SinkTlsError(RuntimeError):
    """The sink's certificate did not verify: a configuration problem, not worth retrying."""


@dataclass
class PostOutcome:
    accepted: int = 0
    retried: int = 0
    requests: int = 0
    bytes_sent: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)

    def merge(self, other: "PostOutcome") -> None:
        self.accepted += other.accepted
        self.retried += other.retried
        self.requests += other.requests
        self.bytes_sent += other.bytes_sent
        self.rejected.extend(other.rejected)
        self.latencies_ms.extend(other.latencies_ms)


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
    """

    def __init__(self, settings: SinkSettings) -> None:
        self.settings = settings
        self.protocol = protocol_for(settings)
        self._pool = ThreadPoolExecutor(max_workers=max(1, settings.max_in_flight), thread_name_prefix="sink")
        self._local = threading.local()
        self._pending: list[Future] = []
        self._buffer: list[Record] = []
        self._buffer_bytes = 0
        self.outcome = PostOutcome()
        self._rng = random.Random()

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

    def close(self) -> PostOutcome:
        """Post what is buffered, wait for every request, and return the totals."""
        try:
            if self._buffer:
                self._flush()
            while self._pending:
                self._collect(self._pending.pop(0))
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
        return self.outcome

    def __enter__(self) -> "SinkWriter":
        return self

    def __exit__(self, *exc) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _flush(self) -> None:
        chunk, self._buffer, self._buffer_bytes = self._buffer, [], 0
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
            self._local.session = session
        return session

    def _deliver(self, records: list[Record]) -> PostOutcome:
        outcome = PostOutcome()
        queue = [records]
        while queue:
            self._deliver_request(queue.pop(), outcome, queue)
        return outcome

    def _deliver_request(self, records: list[Record], outcome: PostOutcome, queue: list) -> None:
        s = self.settings
        pending = records
        last_problem = ""
        for attempt in range(1, s.max_attempts + 1):
            body = self.protocol.encode(pending)
            payload = gzip.compress(body, s.gzip_level) if s.gzip_level > 0 else body
            started = time.perf_counter()
            retry_after = None
            try:
                response = self._session().post(
                    s.url.rstrip("/") + self.protocol.path,
                    data=payload,
                    timeout=(s.connect_timeout_s, s.read_timeout_s),
                    verify=s.verify,
                )
            except requests.exceptions.SSLError as exc:
                raise SinkTlsError(
                    f"sink {s.name!r}: TLS verification of {s.url} failed ({exc}). If the server uses a "
                    f"private CA or a self-signed certificate, set ca_bundle to its PEM file; do not turn "
                    f"verification off outside a test."
                ) from None
            except (requests.ConnectionError, requests.Timeout) as exc:
                # The server may have committed before the connection dropped: deterministic ids make
                # the resend an overwrite in Elasticsearch; HEC is at-least-once by nature.
                last_problem = f"{type(exc).__name__}: {exc}"
            else:
                outcome.requests += 1
                outcome.bytes_sent += len(payload)
                outcome.latencies_ms.append((time.perf_counter() - started) * 1000)
                status = response.status_code
                if status in (401, 403):
                    raise SinkAuthError(auth_error_message(s, status, response.content))
                if 200 <= status < 300:
                    settled = self.protocol.settle(pending, response.content)
                elif status == 413 and len(pending) > 1:
                    half = len(pending) // 2
                    queue.extend([pending[:half], pending[half:]])
                    return
                elif status in RETRYABLE_STATUS:
                    settled = Settlement(retry=pending, retry_reasons=[f"HTTP {status}"])
                    retry_after = _retry_after(response)
                elif isinstance(self.protocol, SplunkHec) and (
                    split := self.protocol.settle_invalid(pending, response.content)
                ):
                    settled = split
                else:
                    reason = response.content[:2000].decode(errors="replace")
                    settled = Settlement(
                        rejected=[Rejection(r, status, f"http_{status}", reason) for r in pending]
                    )
                outcome.accepted += settled.accepted
                outcome.rejected.extend(settled.rejected)
                if not settled.retry:
                    return
                pending = settled.retry
                last_problem = settled.retry_reasons[0] if settled.retry_reasons else "retryable"
            if attempt < s.max_attempts:
                outcome.retried += len(pending)
                time.sleep(self._backoff(attempt, retry_after))
        outcome.rejected.extend(
            Rejection(
                r, None, "retries_exhausted", f"gave up after {s.max_attempts} attempts: {last_problem}"
            )
            for r in pending
        )

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
