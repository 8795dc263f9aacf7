"""Flow control for one writer: adaptive request concurrency (AIMD, as Vector's ARC) and rate limits."""

import threading
import time


class AdaptiveConcurrency:
    """A concurrency limit that grows by one per window of good responses and shrinks on backpressure.

    As Vector's Adaptive Request Concurrency: start at 1; after ``limit`` responses without
    backpressure and without the round-trip time rising above its moving average by ``rtt_tolerance``,
    allow one more request in flight (additive increase, up to ``ceiling``); on a 429, a 503 or a
    rising round-trip time, multiply the limit by ``decrease_ratio`` (multiplicative decrease).
    Fixed mode (``adaptive=False``) simply allows ``ceiling`` requests in flight.
    """

    def __init__(
        self,
        ceiling: int,
        adaptive: bool,
        decrease_ratio: float = 0.9,
        rtt_tolerance: float = 0.5,
        ewma_alpha: float = 0.3,
    ) -> None:
        self.ceiling = max(1, ceiling)
        self.adaptive = adaptive
        self.limit = 1 if adaptive else self.ceiling
        self.peak = self.limit
        self.decreases = 0
        self._decrease_ratio = decrease_ratio
        self._rtt_tolerance = rtt_tolerance
        self._alpha = ewma_alpha
        self._rtt_ewma: float | None = None
        self._in_flight = 0
        self._good_in_window = 0
        self._condition = threading.Condition()

    def acquire(self) -> None:
        with self._condition:
            while self._in_flight >= self.limit:
                self._condition.wait()
            self._in_flight += 1

    def release(self, rtt_s: float | None, backpressure: bool) -> None:
        """Free one slot and feed back what the response said (``rtt_s`` None = no response)."""
        with self._condition:
            self._in_flight -= 1
            if self.adaptive:
                self._adjust(rtt_s, backpressure)
            self._condition.notify_all()

    def _adjust(self, rtt_s: float | None, backpressure: bool) -> None:
        rising = False
        if rtt_s is not None:
            mean = self._rtt_ewma
            rising = mean is not None and rtt_s > mean * (1 + self._rtt_tolerance)
            self._rtt_ewma = rtt_s if mean is None else mean + self._alpha * (rtt_s - mean)
        if backpressure or rising:
            self.limit = max(1, min(self.limit - 1, int(self.limit * self._decrease_ratio)))
            self.decreases += 1
            self._good_in_window = 0
            return
        self._good_in_window += 1
        if self._good_in_window >= self.limit and self.limit < self.ceiling:
            self.limit += 1
            self.peak = max(self.peak, self.limit)
            self._good_in_window = 0


class TokenBucket:
    """At most ``rate`` units per second on average, with bursts of up to one second's worth."""

    def __init__(self, rate: float) -> None:
        if rate <= 0:
            raise ValueError(f"a rate limit must be positive, got {rate}")
        self.rate = rate
        self.capacity = max(1.0, rate)
        self._tokens = self.capacity
        self._stamp = time.monotonic()
        self._lock = threading.Lock()

    def take(self, units: float) -> None:
        """Block until ``units`` are available. A request larger than the burst waits for its share."""
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            self._tokens -= units
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            time.sleep(wait)


class RateLimits:
    """Requests per second and records per second, each optional."""

    def __init__(self, requests_per_s: float | None, records_per_s: float | None) -> None:
        self._requests = TokenBucket(requests_per_s) if requests_per_s else None
        self._records = TokenBucket(records_per_s) if records_per_s else None

    def wait(self, records: int) -> None:
        if self._requests is not None:
            self._requests.take(1)
        if self._records is not None:
            self._records.take(records)
