"""Taking, renewing, settling and releasing a lease: each step one create-only append."""

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator

from resources.lease.beacon import BeaconWatch, HolderBeacon
from resources.lease.guard import LeaseGuard
from resources.lease.log import LeaseLog
from resources.lease.record import LeaseHeld, LeaseLost, LeaseRecord, iso_time, successor, ticking

log = logging.getLogger(__name__)


class Lease:
    """A held lease: renew, write state and release it through the fence. Thread-safe."""

    def __init__(self, log: LeaseLog, record: LeaseRecord, ttl_s: float, label: str = "") -> None:
        self.log = log
        self.ttl_s = ttl_s
        self.label = label or log.uri
        self.acquired = record
        self._record = record
        self._unsure: LeaseRecord | None = None  # an append that raised: it may have landed
        self._lock = threading.Lock()
        self.lost: LeaseLost | None = None
        self.released = False
        self._beacon: HolderBeacon | None = None

    @property
    def token(self) -> int:
        return self._record.token

    @property
    def owner(self) -> str:
        return self._record.owner

    @property
    def record(self) -> LeaseRecord:
        """This holder's last record."""
        return self._record

    @property
    def state(self) -> dict:
        return self._record.state

    def _append(self, action: str, state: dict | None = None, release: bool = False) -> LeaseRecord:
        with self._lock:
            if self.lost is not None:
                raise self.lost
            if self.released:
                raise LeaseLost(f"{self.label}: the lease of {self.owner} was already released", None)
            if self._unsure is not None:
                # A write that failed in transit may still have landed; if so it is our latest record,
                # and building on the one before would look like being fenced out by ourselves.
                landed = self.log.read(self._unsure.seq)
                if landed is not None and landed.nonce == self._unsure.nonce:
                    self._record = landed
                self._unsure = None
            current = self._record
            now = time.time()
            record = successor(
                current,
                now,
                token=0 if release else current.token,
                owner="" if release else current.owner,
                expires_at=0.0 if release else now + self.ttl_s,
                state=current.state if state is None else state,
                action=action,
            )
            try:
                appended = self.log.append(record)
            except Exception:  # re-raised: it only notes that the append may have landed unseen
                self._unsure = record
                raise
            if not appended:
                holder = self.log.latest()
                who = (
                    f"{holder.owner} (token {holder.token}, until {iso_time(holder.expires_at)})"
                    if holder is not None and holder.owner
                    else "another writer"
                )
                self.lost = LeaseLost(
                    f"{self.label}: {current.owner} (token {current.token}) was fenced out: record "
                    f"{record.seq} was written by {who} after its last record {current.seq}",
                    holder,
                )
                self.close_beacon()  # its workers stop now, not at their next storage check
                raise self.lost
            if release:
                self.released = True
            self._record = record
            return record

    def renew(self) -> LeaseRecord:
        """Extend the lease by its TTL; LeaseLost when someone else appended meanwhile."""
        return self._append("renew")

    def settle(self, state: dict) -> LeaseRecord:
        """Write new state, only while this holder is still the latest; LeaseLost otherwise."""
        return self._append("settle", state=state)

    def release(self) -> None:
        """Append a free record carrying the state, so the next holder need not wait for the TTL.

        Nothing to do when already fenced out or released.
        """
        self.close_beacon()
        if self.lost is not None or self.released:
            return
        with contextlib.suppress(LeaseLost):
            self._append("release", release=True)

    def open_beacon(self, host: str) -> None:
        """Listen on ``host`` for workers' liveness connections (see ``beacon.py``) until released or lost.

        Guards made after this carry its address. Best effort: a host that cannot be bound only
        leaves workers to the lease's expiry, as without a beacon.
        """
        if self._beacon is not None or self.lost is not None or self.released:
            return
        try:
            self._beacon = HolderBeacon(host)
        except OSError as exc:
            log.warning(
                "%s: no liveness beacon on %s (%s); workers stop at the lease's expiry", self.label, host, exc
            )

    def close_beacon(self) -> None:
        beacon, self._beacon = self._beacon, None
        if beacon is not None:
            beacon.close()

    def guard(self, check_s: float | None = None) -> LeaseGuard:
        """A picklable guard for workers: lost once the token changes, the lease expires or the beacon ends."""
        beacon = self._beacon
        watch = BeaconWatch(beacon.address, beacon.secret) if beacon is not None else None
        return LeaseGuard(self.log, self._record, check_s or min(1.0, self.ttl_s / 4), self.label, watch)

    @contextlib.contextmanager
    def keep_alive(
        self, interval_s: float | None = None, on_error: Callable[[Exception], None] | None = None
    ) -> Iterator["Lease"]:
        """Renew every ``interval_s`` (default TTL/4) from a daemon thread while the block runs.

        TTL/4 tolerates three failed renewals (a storage hiccup, a long GC pause) before the lease
        lapses. A renewal that finds the lease lost stops; ``self.lost`` then says so.
        """
        interval = interval_s or self.ttl_s / 4

        def renew() -> bool:
            try:
                self.renew()
            except LeaseLost:
                return True
            # Every error, not only storage's: this thread must outlive a bug too (a dead renewer would
            # pass for a dead driver at expiry), and on_error puts each one in the run's log.
            except Exception as exc:  # try again at the next tick
                if on_error is not None:
                    on_error(exc)
            return False

        try:
            with ticking(renew, lambda: interval, "lease-renew", join_s=60):
                yield self
        finally:
            self.close_beacon()


def acquire(
    log: LeaseLog,
    owner: str,
    ttl_s: float,
    wait_s: float = 0.0,
    label: str = "",
    poll_s: float = 1.0,
    on_wait: Callable[[LeaseRecord], None] | None = None,
) -> Lease:
    """Take the lease for ``owner``: when the latest record holds no live lease, append one that does.

    The new record carries the latest state (an empty one for an empty sequence). While
    someone else holds it, look again every ``poll_s`` for up to ``wait_s``, then raise LeaseHeld;
    ``on_wait(holder)`` is told once when the wait starts.
    """
    if not owner:
        raise ValueError("a lease owner must be named")
    deadline = time.monotonic() + wait_s
    waiting = False
    while True:
        latest = log.latest()
        now = time.time()
        if latest is not None and latest.live(now):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LeaseHeld(latest, label or log.uri)
            if not waiting and on_wait is not None:
                on_wait(latest)
            waiting = True
            # Wake when it expires if that comes first, so a dead holder's lease is taken promptly.
            time.sleep(max(0.05, min(poll_s, remaining, latest.expires_at - now + 0.05)))
            continue
        seq = latest.seq + 1 if latest is not None else 1
        state = latest.state if latest is not None else {}
        record = successor(
            latest, now, token=seq, owner=owner, expires_at=now + ttl_s, state=state, action="acquire"
        )
        if log.append(record):
            return Lease(log, record, ttl_s, label)
        # Another writer appended first: look again (it may hold the lease now).


def put_state(log: LeaseLog, state: dict, label: str = "") -> LeaseRecord:
    """Write state without holding the lease (an operator's reset, a test): only while nobody holds it.

    LeaseHeld when a live holder exists, so such a write can never slip under a running holder.
    """
    while True:
        latest = log.latest()
        now = time.time()
        if latest is not None and latest.live(now):
            raise LeaseHeld(latest, label or log.uri)
        record = successor(latest, now, state=state, action="set")
        if log.append(record):
            return record
