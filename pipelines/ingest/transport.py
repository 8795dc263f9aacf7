"""Reads of the landing zone that ride out transport faults: a network cut, a throttled or failing S3,
a local I/O error are retried with backoff up to the feed's ``read_deadline``, then fail the run.

Transport is not content: a file that could not be *fetched* says nothing about its bytes, so it is
never quarantined. The run fails instead, with its batch still planned in the ledger, and the next run
(or the asset's retry) replays that batch with the same files. Only bytes that do not parse,
decompress or decode are quarantined (``reader``).
"""

import threading
import time
from collections.abc import Callable
from typing import TypeVar

from botocore.exceptions import BotoCoreError, ClientError

from resources.sinks.retry import Backoff

T = TypeVar("T")

# S3 error codes that say "try again" rather than "you may not" or "it is not there".
_TRANSIENT_S3_CODES = frozenset(
    {
        "InternalError",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "ServiceUnavailable",
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "500",
        "502",
        "503",
        "504",
    }
)
# pyarrow reports S3 failures as OSError with the SDK's error name in the text.
_PERMANENT_MARKERS = ("ACCESS_DENIED", "AccessDenied", "INVALID_ACCESS_KEY_ID", "SIGNATURE_DOES_NOT_MATCH")


class LandingUnreachable(Exception):
    """The landing zone did not answer within the read deadline; the run fails, its batch stays planned."""


def is_transport_error(exc: BaseException) -> bool:
    """True for a fault of the way to the bytes (network, storage service, local I/O) that a retry can
    cure; False for content errors, a missing file, and refusals a retry cannot cure (permissions)."""
    if isinstance(exc, FileNotFoundError | PermissionError | IsADirectoryError | NotADirectoryError):
        return False
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        status = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        return error.get("Code") in _TRANSIENT_S3_CODES or status.startswith("5")
    if isinstance(exc, BotoCoreError):
        return True  # endpoint unreachable, connection closed, read timeout, ...
    if isinstance(exc, OSError):
        return not any(marker in str(exc) for marker in _PERMANENT_MARKERS)
    return False


def with_retries(
    action: Callable[[], T],
    what: str,
    deadline_s: float,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    backoff: Backoff | None = None,
    gave_up: threading.Event | None = None,
) -> T:
    """``action()``, attempted again after each transport error until ``deadline_s`` seconds have passed
    since the first attempt; then ``LandingUnreachable`` naming ``what``. Other errors propagate at once.

    ``gave_up`` is shared by the reads of one batch: the first read that gives up sets it, and the
    others stop at their next failure (or before they start) instead of each waiting out its deadline.
    """
    backoff = backoff or Backoff(initial_s=0.25, max_s=5.0)
    if gave_up is not None and gave_up.is_set():
        raise LandingUnreachable(f"{what} not attempted: another read of the batch gave up")
    started = clock()
    attempt = 0
    last_attempt = False  # the one made when the deadline falls
    while True:
        try:
            return action()
        except Exception as exc:  # classified here: only a transport error is retried, the rest re-raised
            if not is_transport_error(exc):
                raise
            attempt += 1
            elapsed = clock() - started
            if last_attempt or elapsed >= deadline_s or (gave_up is not None and gave_up.is_set()):
                if gave_up is not None:
                    gave_up.set()
                raise LandingUnreachable(
                    f"{what} failed for {elapsed:.0f} s ({attempt} attempts; last: {_one_line(exc)}); the batch "
                    "stays planned and the next run retries it: check the network and the landing storage"
                ) from exc
            delay = backoff.delay(attempt, None)
            if delay >= deadline_s - elapsed:
                # Sleep to the deadline and try once more, then give up: shrinking steps towards the
                # deadline would never reach it in floating point (an injected clock spun here forever).
                delay, last_attempt = deadline_s - elapsed, True
            if gave_up is not None and sleep is time.sleep:
                gave_up.wait(delay)  # wakes at once when another read gives up
            else:
                sleep(delay)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}"
