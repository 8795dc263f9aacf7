"""The picklable guard a Spark task checks to tell whether the lease it works under is still held."""

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator

from resources.lease.beacon import BeaconWatch
from resources.lease.log import STORAGE_ERRORS, LeaseLog
from resources.lease.record import LeaseRecord, iso_time, ticking

log = logging.getLogger(__name__)


class LeaseGuard:
    """What a worker needs to tell whether the lease it works under is still held: picklable, cheap.

    ``lost_reason()`` answers from memory until ``expires_at`` and looks at storage at most every
    ``check_s``: a HEAD of the next seq and of the known one (the next absent and the known present:
    nothing changed), and a listing plus one GET only when something was appended (a renewal, or
    someone else's record) or the known record was pruned (a task that started long after its guard
    was made).

    With a ``beacon`` (the holder's liveness listener), every check also asks the connection to it:
    a holder whose process died or that gave the lease up is seen at the next tick, not at expiry.
    """

    def __init__(
        self,
        log: LeaseLog,
        record: LeaseRecord,
        check_s: float,
        label: str = "",
        beacon: BeaconWatch | None = None,
    ) -> None:
        self.log = log
        self.token = record.token
        self.owner = record.owner
        self.label = label or log.uri
        self.check_s = check_s
        self._seq = record.seq
        self._expires_at = record.expires_at
        self._checked_at = 0.0  # monotonic; 0: storage not asked yet in this process
        self._reason: str | None = None
        self._beacon = beacon
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def lost_reason(self, force: bool = False) -> str | None:
        """None while the lease is held by this token; once lost, why (and it stays lost)."""
        with self._lock:
            if self._reason is None:
                self._reason = self._check(force)
            return self._reason

    def _check(self, force: bool) -> str | None:
        if self._beacon is not None and self._beacon.gone():
            return (
                f"{self.label}: the run {self.owner} (token {self.token}) that holds the lease is gone (its "
                f"process ended, or it lost or released the lease); stopped posting, the rest stays pending"
            )
        due = force or time.monotonic() - self._checked_at >= self.check_s
        if due:
            try:
                # Pruning deletes the oldest records first, so "next absent, known present" means
                # the known record is still the latest; anything else needs the listing.
                if self.log.exists(self._seq + 1) or not self.log.exists(self._seq):
                    record = self.log.latest()
                    if record is None or record.token != self.token or record.owner != self.owner:
                        holder = (
                            f"run {record.owner} (record {record.seq})"
                            if record is not None and record.owner
                            else "nobody (released)"
                        )
                        return (
                            f"{self.label}: the lease of {self.owner} (token {self.token}) now belongs to "
                            f"{holder}; stopped posting, the rest stays pending"
                        )
                    self._seq, self._expires_at = record.seq, record.expires_at
                self._checked_at = time.monotonic()
            except STORAGE_ERRORS as exc:  # a storage hiccup is no verdict: the expiry below still is
                log.warning("lease check of %s failed: %s", self.label, exc)
        if time.time() >= self._expires_at:
            return (
                f"{self.label}: the lease of {self.owner} (token {self.token}) expired at "
                f"{iso_time(self._expires_at)} without renewal (its driver stopped renewing); stopped posting, "
                f"the rest stays pending"
            )
        return None

    def _next_wait(self) -> float:
        # The beacon costs no storage call: ask it often, so an orphan stops within a second.
        every = min(self.check_s, 0.5) if self._beacon is not None else self.check_s
        return max(0.05, min(every, self._expires_at - time.time()))

    @contextlib.contextmanager
    def watching(self, on_lost: Callable[[str], None]) -> Iterator["LeaseGuard"]:
        """Call ``on_lost(reason)`` (once) as soon as the lease is lost, from a daemon thread.

        The first check is synchronous, so work that starts after the lease was lost does nothing.
        """
        reason = self.lost_reason(force=True)
        if reason:
            on_lost(reason)
            yield self
            return

        def check() -> bool:
            reason = self.lost_reason()
            if reason:
                on_lost(reason)
            return bool(reason)

        try:
            with ticking(check, self._next_wait, "lease-watch"):
                yield self
        finally:
            if self._beacon is not None:
                self._beacon.close()
