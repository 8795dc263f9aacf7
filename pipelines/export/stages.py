"""Run generator stages on their own threads, linked by bounded queues.

``staged(source, f, g)`` yields what ``g(f(source))`` would, but ``source``, ``f`` and ``g`` each run on
a thread of their own, so reading, encoding and compressing overlap (Arrow, zlib and zstd release the
GIL) while at most ``maxsize`` items wait between two stages: memory stays bounded by the queue sizes,
never by the input. An error in any stage is raised in the consumer; when the consumer stops early
(an error while uploading, or ``close()``), every stage thread is told to stop and is joined.
"""

import contextlib
import queue
import threading
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import Any

_DONE = object()
_POLL_S = 0.1


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class _Stopped(Exception):
    """Raised inside a stage thread when the consumer went away."""


def _feed(items: Iterable[Any], out: queue.Queue, stop: threading.Event) -> None:
    def put(item: Any) -> None:
        while not stop.is_set():
            try:
                out.put(item, timeout=_POLL_S)
                return
            except queue.Full:
                continue
        raise _Stopped

    try:
        for item in items:
            put(item)
        put(_DONE)
    except _Stopped:
        pass
    except BaseException as exc:  # handed to the consumer, which re-raises it
        with contextlib.suppress(_Stopped):
            put(_Failed(exc))
    finally:
        close = getattr(items, "close", None)
        if close is not None:
            close()  # a generator's finally blocks run on this thread, now


def _drain(inbox: queue.Queue, stop: threading.Event) -> Iterator[Any]:
    while True:
        try:
            item = inbox.get(timeout=_POLL_S)
        except queue.Empty:
            if stop.is_set():
                raise _Stopped from None
            continue
        if item is _DONE:
            return
        if isinstance(item, _Failed):
            raise item.error
        yield item


def staged(
    source: Iterable[Any], *stages: Callable[[Iterator[Any]], Iterable[Any]], maxsize: int = 4
) -> Generator[Any, None, None]:
    """``stages[-1](...stages[0](source))`` with one thread per step and bounded queues between them."""
    stop = threading.Event()
    threads = []
    inbox: queue.Queue = queue.Queue(maxsize)
    threads.append(threading.Thread(target=_feed, args=(iter(source), inbox, stop), daemon=True))
    for index, stage in enumerate(stages):
        outbox: queue.Queue = queue.Queue(maxsize)
        items = stage(_drain(inbox, stop))
        threads.append(
            threading.Thread(
                target=_feed, args=(iter(items), outbox, stop), name=f"export-stage-{index}", daemon=True
            )
        )
        inbox = outbox
    for thread in threads:
        thread.start()
    try:
        yield from _drain(inbox, stop)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
