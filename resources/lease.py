"""A fenced lease with a state payload, kept as an append-only sequence of create-only JSON records.

One lease is a folder (local) or prefix (S3) of immutable records ``<seq:012d>.json``; the record with
the highest seq is the truth. Writing record n+1 is a create-only write (``os.link`` locally,
``PUT If-None-Match: *`` on S3), which exactly one writer wins: a compare-and-set on "the latest is n"
that needs no lock service, no DynamoDB table and no clock agreement for its safety.

A record says who holds the lease (``owner``, e.g. a Dagster run id), its fencing ``token`` (the seq of
the record that took it; 0 when free), until when (``expires_at``) and the ``state`` the lease guards
(for a sink: its progress). The holder renews by appending; it writes state by appending; it releases by
appending a free record. Anyone else may append only when the latest record holds no live lease. A
holder whose append loses the race was fenced out: it must not write state, and ``LeaseLost`` says so.

Generic storage, so it lives in ``resources/`` beside the lake: it knows nothing about sinks or runs
(``pipelines/post/progress.py`` gives it that meaning), and an ingest fence can use it as it is.

Clocks: safety (one holder at a time, state never overwritten by a fenced-out holder) rests on the
create-only writes alone. Liveness uses ``expires_at`` on the writer's clock, compared with the reader's:
hosts must agree to well within a TTL (NTP does), or a takeover comes early or late by the skew.
"""

import contextlib
import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError  # light; boto3 itself is imported only for S3

from resources.filesystem import FileSystemSettings, split_uri

log = logging.getLogger(__name__)

# Records kept after a successful append: the truth is the last one; a few more help an operator see
# what happened (who held it, when it moved). Pruning keeps listings, and so every read, small.
KEEP_RECORDS = 8
_NAME = re.compile(r"^(\d{12})\.json$")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds") if ts else ""


def _from_iso(text: str) -> float:
    return datetime.fromisoformat(text).timestamp() if text else 0.0


@dataclass(frozen=True)
class LeaseRecord:
    """One immutable record of a lease's sequence."""

    seq: int
    token: int = 0  # the seq of the record that took the lease; 0: nobody holds it
    owner: str = ""  # who holds it ("" when free)
    expires_at: float = 0.0  # unix seconds on the writer's clock; 0 when free
    state: dict = field(default_factory=dict)
    action: str = ""  # acquire | renew | settle | release | set: for people reading the folder
    written_at: float = 0.0
    writer: str = ""  # host:pid of the process that wrote it, for people chasing an orphan
    # Tells a writer its own record from another's when a retried PUT finds the key taken.
    nonce: str = field(default_factory=lambda: uuid.uuid4().hex)
    prev: str = ""  # the nonce of the record this one was written on top of: the chain is checkable

    def live(self, now: float | None = None) -> bool:
        """True while someone holds the lease and it has not expired."""
        return bool(self.owner) and self.expires_at > (time.time() if now is None else now)

    def to_json(self) -> bytes:
        document = {
            "seq": self.seq,
            "token": self.token,
            "owner": self.owner,
            "expires_at": _iso(self.expires_at),
            "state": self.state,
            "action": self.action,
            "written_at": _iso(self.written_at),
            "writer": self.writer,
            "nonce": self.nonce,
            "prev": self.prev,
        }
        return json.dumps(document, indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "LeaseRecord":
        d = json.loads(data)
        return cls(
            seq=int(d["seq"]),
            token=int(d.get("token", 0)),
            owner=d.get("owner") or "",
            expires_at=_from_iso(d.get("expires_at", "")),
            state=d.get("state") or {},
            action=d.get("action", ""),
            written_at=_from_iso(d.get("written_at", "")),
            writer=d.get("writer", ""),
            nonce=d.get("nonce", ""),
            prev=d.get("prev", ""),
        )


class LeaseHeld(RuntimeError):
    """Someone else holds a live lease (and it did not come free within the wait)."""

    def __init__(self, record: LeaseRecord, what: str) -> None:
        self.record = record
        super().__init__(f"{what} is held by {record.owner} until {_iso(record.expires_at)}")

    @property
    def owner(self) -> str:
        return self.record.owner

    @property
    def until(self) -> str:
        return _iso(self.record.expires_at)


class LeaseLost(RuntimeError):
    """This holder was fenced out: another writer appended after its last record."""

    def __init__(self, message: str, holder: LeaseRecord | None) -> None:
        self.holder = holder
        super().__init__(message)


class LeaseLog:
    """The record sequence of one lease, in a local folder or under an S3 prefix.

    Picklable (settings and a URI; clients are rebuilt lazily), so Spark tasks can ask it too.
    """

    def __init__(self, uri: str, settings: FileSystemSettings, keep: int | None = None) -> None:
        self.uri = uri.rstrip("/")
        self.settings = settings
        self.keep = max(1, keep if keep is not None else KEEP_RECORDS)
        scheme, path = split_uri(self.uri)
        self.is_s3 = scheme == "s3"
        self._bucket, _, prefix = path.partition("/") if self.is_s3 else ("", "", "")
        self._prefix = f"{prefix}/" if prefix else ""
        self._dir = "" if self.is_s3 else path
        self._client: Any = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_client"] = None  # a boto3 client does not pickle; each process builds its own
        return state

    def __repr__(self) -> str:
        return f"LeaseLog({self.uri!r})"

    def _s3(self) -> Any:
        if self._client is None:
            # The same client as LakeResource.s3_client(), built from the picklable settings: pyarrow's
            # S3 filesystem has no conditional PUT, boto3 does.
            s = self.settings
            import boto3  # here: tasks on a local lake never pay for its import

            self._client = boto3.client(
                "s3",
                endpoint_url=s.endpoint_url,
                region_name=s.region,
                aws_access_key_id=s.access_key,
                aws_secret_access_key=s.secret_key,
            )
        return self._client

    def _key(self, seq: int) -> str:
        return f"{self._prefix}{seq:012d}.json"

    def _path(self, seq: int) -> str:
        return os.path.join(self._dir, f"{seq:012d}.json")

    # -- storage primitives -------------------------------------------------------------------------
    def seqs(self) -> list[int]:
        """Sorted seqs of the records that exist (one listing; pruning keeps it to a few entries)."""
        if self.is_s3:
            names: list[str] = []
            pages = (
                self._s3()
                .get_paginator("list_objects_v2")
                .paginate(Bucket=self._bucket, Prefix=self._prefix, Delimiter="/")
            )
            for page in pages:
                names.extend(item["Key"][len(self._prefix) :] for item in page.get("Contents", []))
        else:
            try:
                names = os.listdir(self._dir)
            except FileNotFoundError:
                return []
        return sorted(int(m.group(1)) for m in map(_NAME.match, names) if m)

    def read(self, seq: int) -> LeaseRecord | None:
        """The record ``seq``, or None when it does not exist (never written, or pruned)."""
        if self.is_s3:
            try:
                body = self._s3().get_object(Bucket=self._bucket, Key=self._key(seq))["Body"].read()
            except ClientError as exc:
                if _code(exc) in ("NoSuchKey", "404"):
                    return None
                raise
        else:
            try:
                with open(self._path(seq), "rb") as f:
                    body = f.read()
            except FileNotFoundError:
                return None
        return LeaseRecord.from_json(body)

    def exists(self, seq: int) -> bool:
        """Whether record ``seq`` exists: one HEAD, the cheapest "has anything changed since n?"."""
        if self.is_s3:
            try:
                self._s3().head_object(Bucket=self._bucket, Key=self._key(seq))
                return True
            except ClientError as exc:
                if _code(exc) in ("NoSuchKey", "404", "NotFound"):
                    return False
                raise
        return os.path.exists(self._path(seq))

    def create(self, record: LeaseRecord) -> bool:
        """Write ``record`` only if its seq does not exist yet; False when another writer has it."""
        data = record.to_json()
        if self.is_s3:
            for attempt in range(5):
                try:
                    self._s3().put_object(
                        Bucket=self._bucket,
                        Key=self._key(record.seq),
                        Body=data,
                        ContentType="application/json",
                        IfNoneMatch="*",
                    )
                    return True
                except ClientError as exc:
                    code = _code(exc)
                    if code in ("PreconditionFailed", "412"):
                        # botocore retries a PUT whose answer was lost: the key may hold our own record.
                        return self._is_ours(record)
                    # S3 answers 409 to conditional writes racing on one key: whoever won is visible
                    # after a moment; if nobody did, try again.
                    if code not in ("ConditionalRequestConflict", "409"):
                        raise
                    time.sleep(0.05 * (attempt + 1))
                    if self.exists(record.seq):
                        return self._is_ours(record)
            return False
        os.makedirs(self._dir, exist_ok=True)
        # A hidden temp name never matches a record name; link() fails if the target exists: the local
        # equivalent of If-None-Match: *, atomic on POSIX filesystems.
        tmp = os.path.join(self._dir, f".{record.seq:012d}.{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            try:
                os.link(tmp, self._path(record.seq))
            except FileExistsError:
                return False
            return True
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def _is_ours(self, record: LeaseRecord) -> bool:
        existing = self.read(record.seq)
        return existing is not None and existing.nonce == record.nonce

    def delete(self, seqs: list[int]) -> None:
        if not seqs:
            return
        if self.is_s3:
            for start in range(0, len(seqs), 1000):  # DeleteObjects takes at most 1000 keys
                batch = [{"Key": self._key(s)} for s in seqs[start : start + 1000]]
                self._s3().delete_objects(Bucket=self._bucket, Delete={"Objects": batch, "Quiet": True})
        else:
            for seq in seqs:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._path(seq))

    # -- the sequence ---------------------------------------------------------------------------------
    def latest(self) -> LeaseRecord | None:
        """The truth: the record with the highest seq (a listing and one GET), None for no records."""
        for _ in range(10):
            seqs = self.seqs()
            if not seqs:
                return None
            record = self.read(seqs[-1])
            if record is not None:
                return record
            # Pruned between the listing and the GET: only happens when newer records exist; look again.
        raise RuntimeError(f"lease records under {self.uri} keep vanishing while being read")

    def append(self, record: LeaseRecord) -> bool:
        """Create ``record`` as the next of the sequence; False when it is not (the CAS lost).

        After the create, a writer holding an old view could have "won" a seq that pruning had freed
        below the real latest. So when the listing shows a higher seq, the record after ours must
        have been written on top of ours (a successor that came quickly, after a release); otherwise
        ours is a ghost: it is removed and counts as a lost race. Then records older than the last
        ``keep`` are deleted.
        """
        if not self.create(record):
            return False
        seqs = self.seqs()
        if seqs and seqs[-1] > record.seq:
            successor = self.read(record.seq + 1)
            if successor is None or successor.prev != record.nonce:
                self.delete([record.seq])
                return False
            return True  # superseded already; the successor's writer prunes
        try:
            self.delete([s for s in seqs if s <= record.seq - self.keep])
        except Exception as exc:  # pruning is housekeeping: the next append tries again
            log.warning("could not prune old lease records under %s: %s", self.uri, exc)
        return True


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _writer() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class LeaseGuard:
    """What a worker needs to tell whether the lease it works under is still held: picklable, cheap.

    ``lost_reason()`` answers from memory until ``expires_at`` and looks at storage at most every
    ``check_s``: a HEAD of the next seq and of the known one (the next absent and the known present:
    nothing changed), and a listing plus one GET only when something was appended (a renewal, or
    someone else's record) or the known record was pruned (a task that started long after its guard
    was made).
    """

    def __init__(self, log: LeaseLog, record: LeaseRecord, check_s: float, label: str = "") -> None:
        self.log = log
        self.token = record.token
        self.owner = record.owner
        self.label = label or log.uri
        self.check_s = check_s
        self._seq = record.seq
        self._expires_at = record.expires_at
        self._checked_at = 0.0  # monotonic; 0: storage not asked yet in this process
        self._reason: str | None = None
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
            except Exception as exc:  # a storage hiccup is no verdict: the expiry below still is
                log.warning("lease check of %s failed: %s", self.label, exc)
        if time.time() >= self._expires_at:
            return (
                f"{self.label}: the lease of {self.owner} (token {self.token}) expired at "
                f"{_iso(self._expires_at)} without renewal (its driver stopped renewing); stopped posting, "
                f"the rest stays pending"
            )
        return None

    def _next_wait(self) -> float:
        return max(0.05, min(self.check_s, self._expires_at - time.time()))

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
        stop = threading.Event()

        def watch() -> None:
            while not stop.wait(self._next_wait()):
                reason = self.lost_reason()
                if reason:
                    on_lost(reason)
                    return

        thread = threading.Thread(target=watch, name="lease-watch", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()


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
            record = LeaseRecord(
                seq=current.seq + 1,
                token=0 if release else current.token,
                owner="" if release else current.owner,
                expires_at=0.0 if release else now + self.ttl_s,
                state=current.state if state is None else state,
                action=action,
                written_at=now,
                writer=_writer(),
                prev=current.nonce,
            )
            try:
                appended = self.log.append(record)
            except Exception:
                self._unsure = record
                raise
            if not appended:
                holder = self.log.latest()
                who = (
                    f"{holder.owner} (token {holder.token}, until {_iso(holder.expires_at)})"
                    if holder is not None and holder.owner
                    else "another writer"
                )
                self.lost = LeaseLost(
                    f"{self.label}: {current.owner} (token {current.token}) was fenced out: record "
                    f"{record.seq} was written by {who} after its last record {current.seq}",
                    holder,
                )
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
        if self.lost is not None or self.released:
            return
        with contextlib.suppress(LeaseLost):
            self._append("release", release=True)

    def guard(self, check_s: float | None = None) -> LeaseGuard:
        """A picklable guard for workers: lost once the token changes or the lease expires."""
        return LeaseGuard(self.log, self._record, check_s or min(1.0, self.ttl_s / 4), self.label)

    @contextlib.contextmanager
    def keep_alive(
        self, interval_s: float | None = None, on_error: Callable[[Exception], None] | None = None
    ) -> Iterator["Lease"]:
        """Renew every ``interval_s`` (default TTL/4) from a daemon thread while the block runs.

        TTL/4 tolerates three failed renewals (a storage hiccup, a long GC pause) before the lease
        lapses. A renewal that finds the lease lost stops; ``self.lost`` then says so.
        """
        interval = interval_s or self.ttl_s / 4
        stop = threading.Event()

        def renew() -> None:
            while not stop.wait(interval):
                try:
                    self.renew()
                except LeaseLost:
                    return
                except Exception as exc:  # transient storage errors: try again at the next tick
                    if on_error is not None:
                        on_error(exc)

        thread = threading.Thread(target=renew, name="lease-renew", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join(timeout=60)


def acquire(
    log: LeaseLog,
    owner: str,
    ttl_s: float,
    wait_s: float = 0.0,
    seed: Callable[[], dict | None] | None = None,
    label: str = "",
    poll_s: float = 1.0,
    on_wait: Callable[[LeaseRecord], None] | None = None,
) -> Lease:
    """Take the lease for ``owner``: when the latest record holds no live lease, append one that does.

    The new record carries the latest state (or ``seed()`` for an empty sequence: a migration). While
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
        state = latest.state if latest is not None else (seed() if seed else None) or {}
        record = LeaseRecord(
            seq=seq,
            token=seq,
            owner=owner,
            expires_at=now + ttl_s,
            state=state,
            action="acquire",
            written_at=now,
            writer=_writer(),
            prev=latest.nonce if latest is not None else "",
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
        record = LeaseRecord(
            seq=latest.seq + 1 if latest is not None else 1,
            state=state,
            action="set",
            written_at=now,
            writer=_writer(),
            prev=latest.nonce if latest is not None else "",
        )
        if log.append(record):
            return record
