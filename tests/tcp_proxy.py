"""A TCP proxy on 127.0.0.1 that can cut the network to its upstream for a while, as an outage does.

Armed with a byte pattern, the first client request containing it is not forwarded: every open
connection is reset and new ones are refused (reset at accept) until the outage ends: after a given
number of seconds and a given number of refused connections (so that a test does not depend on how
fast a loaded machine retries), or when ``restore()`` is called.
"""

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Iterator

CHUNK = 64 * 1024


def _reset(sock: socket.socket) -> None:
    """Drop a connection hard (RST), waking a thread blocked on it."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


class CuttableProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._trigger: bytes | None = None
        self._outage_s: float | None = None
        self._cut_until = 0.0
        self._cut_forever = False
        self._min_refusals = 0
        self._refused_in_outage = 0
        self.cuts = 0  # outages that started
        self.refused = 0  # connections reset at accept during an outage
        self._closed = False
        self._spawn(self._accept_loop)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cut_on(self, pattern: bytes, seconds: float | None, refusals: int = 0) -> None:
        """At the first request with ``pattern``, start an outage that lasts ``seconds`` and until
        ``refusals`` connections were refused (``seconds=None``: until ``restore``)."""
        with self._lock:
            self._trigger, self._outage_s, self._min_refusals = pattern, seconds, refusals

    def restore(self) -> None:
        with self._lock:
            self._cut_forever, self._cut_until, self._trigger, self._min_refusals = False, 0.0, None, 0

    def is_cut(self) -> bool:
        with self._lock:
            if not (self._cut_forever or self._cut_until):
                return False
            return (
                self._cut_forever
                or time.monotonic() < self._cut_until
                or self._refused_in_outage < self._min_refusals
            )

    def close(self) -> None:
        self._closed = True
        _reset(self._server)
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            _reset(sock)
        for thread in self._threads:
            thread.join(timeout=10)

    # -- internals ------------------------------------------------------------------------------------
    def _spawn(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True, name="tcp-proxy")
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if self.is_cut():
                with self._lock:
                    self.refused += 1
                    self._refused_in_outage += 1
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self._upstream, timeout=10)
                upstream.settimeout(None)
            except OSError:
                _reset(client)
                continue
            with self._lock:
                self._sockets.update((client, upstream))
            self._spawn(self._pump, client, upstream, True)
            self._spawn(self._pump, upstream, client, False)

    def _pump(self, source: socket.socket, target: socket.socket, from_client: bool) -> None:
        try:
            for chunk in self._chunks(source):
                if from_client and self._fires(chunk):
                    self._start_outage()
                    return
                target.sendall(chunk)
        except OSError:
            pass
        finally:
            _reset(source)
            _reset(target)
            with self._lock:
                self._sockets.discard(source)
                self._sockets.discard(target)

    @staticmethod
    def _chunks(sock: socket.socket) -> Iterator[bytes]:
        while chunk := sock.recv(CHUNK):
            yield chunk

    def _fires(self, chunk: bytes) -> bool:
        with self._lock:
            if self._trigger is None or self._trigger not in chunk:
                return False
            self._trigger, self._refused_in_outage = None, 0
            if self._outage_s is None:
                self._cut_forever = True
            else:
                self._cut_until = time.monotonic() + self._outage_s
            self.cuts += 1
            return True

    def _start_outage(self) -> None:
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            _reset(sock)
