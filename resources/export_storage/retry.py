"""S3 calls retried with backoff until a deadline, so an export rides out a short outage like the sinks.

botocore retries a few times within seconds; a network cut of ten seconds outlasts that. Each export
call (create, upload and complete a part, the manifest, listings, deletes) is tried again with the
sinks' jittered exponential backoff (``resources.sinks.retry.Backoff``) until ``deadline_s`` has
passed since its first attempt; then the export fails with a one-line error and cleans up. Only
transport errors and S3's "try again" answers are retried: a refused credential fails at once.
"""

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from botocore.exceptions import ClientError, HTTPClientError, IncompleteReadError, SSLError
from botocore.exceptions import ConnectionError as BotoConnectionError

from resources.sinks.retry import Backoff

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_DEADLINE_S = 600.0  # the sinks' default delivery deadline
BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 15.0
# S3's answers that mean "the service could not do it now", not "this request is wrong".
TRANSIENT_CODES = frozenset(
    {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "Throttling", "ThrottlingException"}
)


class S3Unavailable(Exception):
    """S3 stayed unreachable (or kept answering "try again") until the retry deadline passed."""


def is_transient(exc: BaseException) -> bool:
    """True for a dropped or refused connection, a timeout, a 5xx or a "slow down"; not for TLS."""
    if isinstance(exc, SSLError):
        return False  # a certificate problem does not heal by waiting
    if isinstance(exc, BotoConnectionError | HTTPClientError | IncompleteReadError):
        return True
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return error.get("Code") in TRANSIENT_CODES or status >= 500 or status in (408, 429)
    return False


class Retrying:
    """Runs S3 calls, retrying transient failures until ``deadline_s`` after each call's first try."""

    def __init__(
        self,
        deadline_s: float = DEFAULT_DEADLINE_S,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.deadline_s = deadline_s
        self.backoff = backoff or Backoff(BACKOFF_INITIAL_S, BACKOFF_MAX_S)
        self.clock = clock
        self.sleep = sleep

    def call(self, what: str, attempt_once: Callable[[int], T]) -> T:
        """``attempt_once(attempt)`` (1, 2, ...) until it returns; ``what`` names it in errors.

        The attempt number lets a call that is not idempotent notice that an earlier attempt may
        have been applied with its answer lost (a completed upload, a created manifest).
        """
        started = self.clock()
        attempt = 0
        while True:
            attempt += 1
            try:
                return attempt_once(attempt)
            except Exception as exc:  # sorted at once: only what is_transient knows is retried
                if not is_transient(exc):
                    raise
                waited = self.clock() - started
                delay = self.backoff.delay(attempt, None)
                if waited + delay > self.deadline_s:
                    raise S3Unavailable(
                        f"{what}: S3 still failing after {waited:.0f}s and {attempt} attempt(s) "
                        f"({exc}); run the export again once S3 is reachable"
                    ) from exc
                log.warning("%s failed (%s); attempt %d in %.1fs", what, exc, attempt + 1, delay)
                self.sleep(delay)
