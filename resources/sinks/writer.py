"""Posting records to a sink: transport and flow control, whatever the protocol.

The writer cuts Arrow columns into calls by bytes and count, keeps up to N requests in flight over
keep-alive sessions, paces them (adaptive concurrency, rate limits), retries until the delivery
deadline and halves calls when asked to. What a body looks like and what an answer means for each
record is the protocol's (``protocols.py``); the writer never asks which protocol it talks to.
"""

import gzip
import os
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor

import pyarrow as pa
import requests

from resources.arrow import pc
from resources.sinks.errors import SinkAuthError, SinkRequestError, SinkTlsError, auth_error_message
from resources.sinks.flow import AdaptiveConcurrency, RateLimits
from resources.sinks.outcome import PostOutcome
from resources.sinks.protocols import Records, Rejection, Settlement, SinkProtocol
from resources.sinks.records import ArrowRecords, call_boundaries
from resources.sinks.retry import BACKPRESSURE_STATUS, Backoff, retry_after
from resources.sinks.settings import SinkSettings


class SinkWriter:
    """Accepts Arrow columns of records, cuts them into requests by bytes and count, posts N at a time.

    One writer per Spark task: it owns a small thread pool whose threads each keep one keep-alive
    ``requests.Session``. Memory stays bounded: at most ``2 * max_in_flight`` requests are pending.
    Requests in flight are gated by an AIMD limit (adaptive mode) or a fixed one, and by rate limits.
    """

    def __init__(self, settings: SinkSettings) -> None:
        self.settings = settings
        self.protocol: SinkProtocol = settings.protocol.open(settings)
        self.concurrency = AdaptiveConcurrency(settings.max_in_flight, settings.adaptive_concurrency)
        self.rate_limits = RateLimits(settings.rate_limit_requests_per_s, settings.rate_limit_records_per_s)
        self.backoff = Backoff(settings.backoff_initial_s, settings.backoff_max_s)
        self._pool = ThreadPoolExecutor(max_workers=max(1, settings.max_in_flight), thread_name_prefix="sink")
        self._local = threading.local()
        self._pending: list[Future] = []
        self._tail: ArrowRecords | None = None  # the last, not yet full call of add_arrow
        self.outcome = PostOutcome()
        self._gave_up = threading.Event()
        self._give_up_lock = threading.Lock()

    # -- feeding ----------------------------------------------------------------------------------
    def add_arrow(
        self,
        ids: pa.Array,
        docs: pa.Array,
        times: pa.Array,
        destination: Mapping[str, pa.Array] | None = None,
    ) -> None:
        """Add a column slice of records: cut into calls and encoded by Arrow, not record by record.

        ``destination``: the per-record destination columns of a templated destination (``_index``,
        ``_sourcetype``, ...). A record whose template gave no value (a null column, no default) is
        dead-lettered here, before any call: it has nowhere to go.
        """
        chunk = ArrowRecords(ids, docs, times, destination)
        if chunk.destination:
            chunk = self._without_destination_refused(chunk)
        if self._tail is not None:
            tail, self._tail = self._tail, None
            chunk = tail.concat(chunk)
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
            self._tail = last  # the next batch may fill this call up

    def _without_destination_refused(self, chunk: ArrowRecords) -> ArrowRecords:
        """``chunk`` without the records whose destination is null; those become rejections."""
        nulls = [name for name, values in chunk.destination.items() if values.null_count]
        if not nulls:
            return chunk
        missing = pc.is_null(chunk.destination[nulls[0]])
        for name in nulls[1:]:
            missing = pc.or_(missing, pc.is_null(chunk.destination[name]))
        described = dict(self.settings.per_record)
        for record in chunk.filter(missing):
            unresolved = [name for name in nulls if record.destination and record.destination[name] is None]
            what = "; ".join(described.get(name, name) for name in unresolved)
            self.outcome.rejected.append(
                Rejection(
                    record,
                    None,
                    "destination_unresolved",
                    f"{what}: a column it reads is null in this record and the placeholder has no default. "
                    f"Give one ({{column|default}}) or fill the column, then replay the dead letter.",
                )
            )
        return chunk.filter(pc.invert(missing))

    def close(self) -> PostOutcome:
        """Post what is buffered, wait for every request, and return the totals."""
        try:
            if self._tail is not None:
                tail, self._tail = self._tail, None
                self._submit(tail)
            while self._pending:
                self._collect(self._pending.pop(0))
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self.outcome.concurrency_peak = self.concurrency.peak
        self.outcome.concurrency_decreases = self.concurrency.decreases
        return self.outcome

    def __enter__(self) -> "SinkWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _submit(self, chunk: Records) -> None:
        while len(self._pending) >= 2 * self.settings.max_in_flight:
            self._collect(self._pending.pop(0))
        self._pending.append(self._pool.submit(self._deliver, chunk))

    def _collect(self, future: Future) -> None:
        self.outcome.merge(future.result())

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

    # -- delivering one request (runs on a pool thread) -------------------------------------------
    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.headers.update(self.settings.headers)
            session.headers["Content-Type"] = self.protocol.content_type
            if self.settings.gzip_level > 0:
                session.headers["Content-Encoding"] = "gzip"
            session.headers.update(self.protocol.headers())
            session.cert = self.settings.cert
            # A signing auth (SigV4) signs each prepared request: its final URL, headers and the
            # body as sent (gzipped when gzip_level > 0), on every attempt, so a retry is signed anew.
            session.auth = self.settings.auth
            # What requests reads from the environment on every call (proxies, NO_PROXY, the CA
            # bundle variables) is read once here: with trust_env it scanned os.environ per request,
            # 6-10% of a post worker's CPU (py-spy). The answers are the same ones.
            session.proxies = requests.utils.get_environ_proxies(self.settings.url)
            session.verify = self._verify
            session.trust_env = False
            self._local.session = session
        return session

    @property
    def _verify(self) -> bool | str:
        """The configured CA bundle, else requests' own environment variables for it, else True."""
        verify = self.settings.verify
        if verify is True:
            return os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
        return verify

    def _request(self, method: str, path: str, body: bytes) -> requests.Response:
        s = self.settings
        return self._session().request(
            method, s.url.rstrip("/") + path, data=body, timeout=(s.connect_timeout_s, s.read_timeout_s)
        )

    def _post(self, path: str, body: bytes) -> requests.Response:
        """A follow-up call of the protocol (HEC's /ack), outside flow control: it is no new record."""
        return self._request("POST", path, body)

    def _deliver(self, records: Records) -> PostOutcome:
        outcome = PostOutcome()
        queue = [records]
        while queue:
            self._deliver_request(queue.pop(), outcome, queue)
        return outcome

    def _deliver_request(self, records: Records, outcome: PostOutcome, queue: list[Records]) -> None:
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
            settled, wait_at_least = self._attempt(pending, outcome, queue)
            if settled is None:  # split into smaller requests, queued
                return
            outcome.accepted += settled.accepted
            outcome.rejected.extend(settled.rejected)
            outcome.ack_timeouts += settled.ack_timeouts
            if not settled.retry:
                return
            pending = settled.retry
            delay = self.backoff.delay(attempt, wait_at_least)
            if time.monotonic() + delay > deadline:
                self.give_up(
                    f"{settled.problem or 'retryable failures'} for {s.delivery_timeout_s:g}s "
                    f"(delivery_timeout_s) over {attempt} attempts"
                )
                outcome.pending += len(pending)
                return
            outcome.retried += len(pending)
            self._gave_up.wait(delay)  # wakes early when another request gives up

    def _attempt(
        self, pending: Records, outcome: PostOutcome, queue: list[Records]
    ) -> tuple[Settlement | None, float | None]:
        """One HTTP attempt: how it settled ``pending`` (None = split and queued), and Retry-After."""
        s, protocol = self.settings, self.protocol
        body = protocol.encode(pending)
        payload = gzip.compress(body, s.gzip_level) if s.gzip_level > 0 else body
        self.rate_limits.wait(len(pending))
        self.concurrency.acquire()
        rtt: float | None = None  # None: no response came back
        backpressure = False
        started = time.perf_counter()
        outcome.attempts += 1
        try:
            response = self._request(protocol.method, protocol.path, payload)
            rtt = time.perf_counter() - started
            backpressure = response.status_code in BACKPRESSURE_STATUS
        except requests.exceptions.SSLError as exc:
            raise SinkTlsError(
                f"sink {s.sink_name!r}: TLS verification of {s.url} failed ({exc}). If the server uses a "
                f"private CA or a self-signed certificate, set ca_bundle to its PEM file; do not turn "
                f"verification off outside a test."
            ) from None
        except (requests.ConnectionError, requests.Timeout) as exc:
            # The server may have committed before the connection dropped: deterministic ids make
            # the resend an overwrite in Elasticsearch; HEC is at-least-once by nature.
            backpressure = isinstance(exc, requests.Timeout)
            return Settlement(retry=pending, problem=f"{type(exc).__name__}: {exc}"), None
        finally:
            self.concurrency.release(rtt, backpressure)
        outcome.requests += 1
        outcome.bytes_sent += len(payload)
        outcome.records_sent += len(pending)
        outcome.latencies_ms.append((rtt or 0.0) * 1000)
        return self._settle_answer(pending, response, queue)

    def _settle_answer(
        self, pending: Records, response: requests.Response, queue: list[Records]
    ) -> tuple[Settlement | None, float | None]:
        """What the sink's answer to a request of ``pending`` means for each record (None = split and
        queued), and its Retry-After; raises what no retry cures (credentials, a refused request)."""
        s, protocol = self.settings, self.protocol
        status, content = response.status_code, response.content
        if status in (401, 403):
            raise SinkAuthError(auth_error_message(s, status, content))
        if protocol.is_success(status):
            settled = protocol.confirm(pending, content, protocol.settle(pending, content), self._post)
            if settled.retry_reasons:
                settled.problem = f"items answered {settled.retry_reasons[0]}"
            return settled, None
        if protocol.is_retryable(status):
            return Settlement(retry=pending, problem=f"HTTP {status}"), retry_after(response)
        if (narrowed := protocol.settle_refusal(pending, status, content)) is not None:
            return narrowed, None
        if protocol.splits(status):
            # Too large, or refused as a whole by an API without per-item answers: halve the call
            # until the record(s) to blame stand alone, so that only they are dead-lettered.
            if len(pending) > 1:
                half = len(pending) // 2
                queue.extend([pending[:half], pending[half:]])
                return None, None
            reason = content[:2000].decode(errors="replace")
            return Settlement(
                rejected=[Rejection(r, status, f"http_{status}", reason) for r in pending]
            ), None
        raise SinkRequestError(
            f"sink {s.sink_name!r} answered HTTP {status} to {protocol.path or '/'} at {s.url}: "
            f"{content[:300].decode(errors='replace')}. This refuses the request as a whole, not "
            f"a record (per-record rejections come inside a 2xx), so nothing was dead-lettered: check the "
            f"sink's URL, index/path and pipeline settings, then re-run."
        )
