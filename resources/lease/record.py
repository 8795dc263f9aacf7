"""The records of a lease's sequence, and the errors a holder or a contender is told."""

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime


def iso_time(ts: float) -> str:
    """Unix seconds as ISO 8601 UTC with milliseconds; "" for 0 (never set)."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds") if ts else ""


def from_iso_time(text: str) -> float:
    return datetime.fromisoformat(text).timestamp() if text else 0.0


def writer_id() -> str:
    """host:pid of this process, written into each record for people chasing an orphan."""
    return f"{socket.gethostname()}:{os.getpid()}"


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
            "expires_at": iso_time(self.expires_at),
            "state": self.state,
            "action": self.action,
            "written_at": iso_time(self.written_at),
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
            expires_at=from_iso_time(d.get("expires_at", "")),
            state=d.get("state") or {},
            action=d.get("action", ""),
            written_at=from_iso_time(d.get("written_at", "")),
            writer=d.get("writer", ""),
            nonce=d.get("nonce", ""),
            prev=d.get("prev", ""),
        )


class LeaseHeld(RuntimeError):
    """Someone else holds a live lease (and it did not come free within the wait)."""

    def __init__(self, record: LeaseRecord, what: str) -> None:
        self.record = record
        super().__init__(f"{what} is held by {record.owner} until {iso_time(record.expires_at)}")

    @property
    def owner(self) -> str:
        return self.record.owner

    @property
    def until(self) -> str:
        return iso_time(self.record.expires_at)


class LeaseLost(RuntimeError):
    """This holder was fenced out: another writer appended after its last record."""

    def __init__(self, message: str, holder: LeaseRecord | None) -> None:
        self.holder = holder
        super().__init__(message)


def successor(latest: "LeaseRecord | None", now: float, **fields: object) -> "LeaseRecord":
    """The record to append after ``latest`` (None: the first), written now by this process."""
    return LeaseRecord(
        seq=latest.seq + 1 if latest is not None else 1,
        written_at=now,
        writer=writer_id(),
        prev=latest.nonce if latest is not None else "",
        **fields,  # type: ignore[arg-type]
    )


@contextlib.contextmanager
def ticking(
    tick: Callable[[], bool], wait_s: Callable[[], float], name: str, join_s: float = 0.0
) -> Iterator[None]:
    """Call ``tick()`` from a daemon thread after every ``wait_s()`` until it returns True or the block ends."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(wait_s()):
            if tick():
                return

    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        if join_s:
            thread.join(timeout=join_s)
