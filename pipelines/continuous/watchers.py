"""Discovery for the continuous run: say *that* files may have landed, at no cost while nothing does.

A watcher only wakes the loop; the ingest's own listing (cursor, late names, ledger) still decides
which files are new, so a lost, repeated or early notification can delay a file but never ingest it
twice or skip it. Three kinds:

- ``FolderWatcher``: a local landing folder, by inotify (watchdog): a file closed after writing or
  renamed into place wakes the loop within milliseconds; nothing is listed while the folder is quiet.
- ``QueueWatcher``: an S3 landing zone with object-created notifications delivered to SQS; the loop
  long-polls the queue (no LIST call while idle) and deletes what it received.
- ``PollWatcher``: anything else (S3 without a queue): a cheap "anything waiting?" probe every
  ``interval_s``.

Every watcher also wakes the loop every ``backfill_s`` (the feed's ``backfill_interval``), the listing
that finds what a notification missed.
"""

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import unquote_plus

import orjson
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

# An SQS long poll waits at most this long: the loop sees a stop request within it.
QUEUE_WAIT_S = 5


class Watcher(Protocol):
    def wait(self, timeout_s: float) -> bool:
        """True when files may have landed since the last call (or a backfill is due); False after
        ``timeout_s`` of nothing."""
        ...

    def close(self) -> None: ...


class _Backfill:
    """Due every ``interval_s`` of the injected monotonic clock (the loop's first pass is the first)."""

    def __init__(self, interval_s: float, clock: Callable[[], float]) -> None:
        self.interval_s, self.clock = interval_s, clock
        self.last = clock()

    def due(self) -> bool:
        now = self.clock()
        if now - self.last >= self.interval_s:
            self.last = now
            return True
        return False

    def remaining_s(self) -> float:
        return max(0.0, self.interval_s - (self.clock() - self.last))


class _WakeOnLanding(FileSystemEventHandler):
    """Sets ``woken`` when a file is finished in the folder: closed after writing, or renamed in.

    A file being written in place is not taken at its creation, only when its writer closes it
    (inotify's close-after-write); ``wake_on_created`` is for observers that report no close.
    """

    def __init__(self, woken: threading.Event, wake_on_created: bool = False) -> None:
        self.woken = woken
        self.wake_on_created = wake_on_created
        self.woken_at: float | None = None  # wall time of the first event since the loop last woke

    def _wake(self) -> None:
        if not self.woken.is_set():
            self.woken_at = time.time()
        self.woken.set()

    def on_created(self, event: FileSystemEvent) -> None:
        if self.wake_on_created:
            self._wake()

    def on_closed(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self._wake()

    def on_moved(self, event: FileSystemEvent) -> None:
        self._wake()  # a file or a whole directory renamed into place


class FolderWatcher:
    """Wakes on files landing in a local folder (recursively), by inotify."""

    def __init__(self, folder: str, backfill_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.woken = threading.Event()
        self.woken_at: float | None = None  # wall time of the event that ended the last wait (timing only)
        self.backfill = _Backfill(backfill_s, clock)
        try:
            from watchdog.observers.inotify import InotifyObserver

            # Full events: a file renamed in from outside the folder is a move (inotify's IN_MOVED_TO),
            # not a creation that a writer may still be filling.
            self.observer = InotifyObserver(generate_full_events=True)
            inotify = True
        except (ImportError, OSError):  # not Linux: the platform's observer, which may report no close
            self.observer, inotify = Observer(), False
        self.observer.daemon = True
        self.handler = _WakeOnLanding(self.woken, wake_on_created=not inotify)
        self.observer.schedule(self.handler, folder, recursive=True)
        self.observer.start()

    def wait(self, timeout_s: float) -> bool:
        if self.backfill.due():
            return True
        woken = self.woken.wait(min(timeout_s, self.backfill.remaining_s()))
        self.woken_at = self.handler.woken_at if woken else None
        self.woken.clear()  # before the ingest lists: a file landing during it wakes the next wait
        return woken or self.backfill.due()

    def close(self) -> None:
        self.observer.stop()
        self.observer.join(timeout=5)


class QueueWatcher:
    """Wakes on S3 object-created notifications in an SQS queue; counts what it received."""

    def __init__(
        self,
        sqs: Any,
        queue_url: str,
        prefix: str,
        backfill_s: float,
        clock: Callable[[], float] = time.monotonic,
        log: logging.Logger | logging.LoggerAdapter | None = None,
    ) -> None:
        self.sqs, self.queue_url, self.prefix = sqs, queue_url, prefix.strip("/")
        self.backfill = _Backfill(backfill_s, clock)
        self.log = log or logging.getLogger(__name__)
        self.notified_keys = 0
        self.receive_calls = 0

    def wait(self, timeout_s: float) -> bool:
        if self.backfill.due():
            return True
        wait_s = int(max(0, min(timeout_s, QUEUE_WAIT_S, self.backfill.remaining_s())))
        self.receive_calls += 1
        messages = self.sqs.receive_message(
            QueueUrl=self.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=wait_s
        ).get("Messages", [])
        if messages:
            # Deleted on receipt: the listing that follows finds the files whatever the queue says,
            # and a run that dies before it lists does so at its start.
            self.sqs.delete_message_batch(
                QueueUrl=self.queue_url,
                Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)],
            )
        keys = [key for m in messages for key in landed_keys(m.get("Body", ""))]
        ours = [k for k in keys if not self.prefix or k.startswith(self.prefix + "/")]
        self.notified_keys += len(ours)
        return bool(ours) or self.backfill.due()

    def close(self) -> None:
        pass


def landed_keys(body: str) -> list[str]:
    """Object keys of the ``ObjectCreated`` records in an S3 notification (none in ``s3:TestEvent``).

    Keys arrive URL-encoded (``events%2Fa.json``), on AWS as on moto.
    """
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return []
    records = document.get("Records", []) if isinstance(document, dict) else []
    return [
        unquote_plus(r["s3"]["object"]["key"])
        for r in records
        if str(r.get("eventName", "")).startswith("ObjectCreated") and "s3" in r
    ]


class PollWatcher:
    """Asks ``probe`` (anything waiting?) every ``interval_s``; for landing zones without notifications."""

    def __init__(
        self,
        probe: Callable[[], bool],
        interval_s: float,
        backfill_s: float,
        stop: threading.Event,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.probe, self.interval_s, self.stop = probe, interval_s, stop
        self.backfill = _Backfill(backfill_s, clock)
        self.probes = 0

    def wait(self, timeout_s: float) -> bool:
        if self.backfill.due():
            return True
        if self.stop.wait(min(timeout_s, self.interval_s)):
            return False
        self.probes += 1
        return self.probe() or self.backfill.due()

    def close(self) -> None:
        pass
