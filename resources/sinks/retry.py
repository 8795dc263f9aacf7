"""Retry timing: exponential backoff with jitter, at least what the sink's Retry-After asks, capped.

Which answers are retried is the protocol's call (``SinkProtocol.is_retryable`` and per-item
settlement); how long is ``delivery_timeout_s`` from a request's first attempt (the writer's loop).
"""

import random

import requests

# Answers that say "slow down": the adaptive concurrency limit shrinks on them.
BACKPRESSURE_STATUS = frozenset({429, 503})


class Backoff:
    def __init__(self, initial_s: float, max_s: float) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self._rng = random.Random()

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before attempt ``attempt + 1``, jittered between half and all of the step."""
        # The exponent is capped: a loop retrying for minutes with a tiny initial step reaches
        # attempts whose 2**n no float holds (OverflowError), long after the cap max_s applies.
        step = self.initial_s * 2.0 ** min(max(attempt - 1, 0), 60)
        delay = min(self.max_s, step) * self._rng.uniform(0.5, 1.0)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_s))
        return delay


def retry_after(response: requests.Response) -> float | None:
    """The Retry-After header in seconds (the HTTP-date form is not used by these sinks)."""
    value = response.headers.get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
