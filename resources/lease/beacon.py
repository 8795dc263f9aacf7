"""A liveness beacon: a TCP listener in the lease holder's process that workers stay connected to.

A worker that loses its connection knows within one check that the holder is gone: its process died
(the kernel closes its sockets, SIGKILL included) or it closed the beacon (it lost or released the
lease). No clock and no storage call is involved, so workers stop in about a second instead of at
the lease's expiry. A holder that is only frozen (SIGSTOP, a long pause) keeps its connections open;
the lease's expiry still stops its workers then.

Each connection starts with the beacon's secret, so a worker that reaches some other listener (an
address that means another host to it) treats the beacon as unreachable, never as gone.
"""

import contextlib
import logging
import secrets
import selectors
import socket
import threading

log = logging.getLogger(__name__)


class HolderBeacon:
    """Listens on ``host`` (an ephemeral port) and holds every connection open until ``close()``."""

    def __init__(self, host: str) -> None:
        self.secret = secrets.token_bytes(16)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._server = socket.create_server((host, 0), family=family, backlog=128)
        self.address: tuple[str, int] = (host, self._server.getsockname()[1])
        self._connections: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, name="lease-beacon", daemon=True).start()

    def _accept(self) -> None:
        """Accept workers and forget those that hung up (one connection per task: they come and go).

        A selector (epoll on Linux), not select(): a Dagster process may hold descriptors above 1024.
        """
        with selectors.DefaultSelector() as selector:
            selector.register(self._server, selectors.EVENT_READ)
            while not self._closed:
                try:
                    events = selector.select(timeout=1.0)
                except OSError:
                    continue
                for key, _ in events:
                    sock = key.fileobj
                    if sock is self._server:
                        connection = self._take_connection()
                        # close() may have closed it meanwhile (fd -1): nothing left to watch then.
                        if connection is not None:
                            with contextlib.suppress(ValueError, OSError):
                                selector.register(connection, selectors.EVENT_READ)
                    else:
                        with contextlib.suppress(KeyError, ValueError):
                            selector.unregister(sock)
                        self._drop_if_hung_up(sock)  # type: ignore[arg-type]

    def _take_connection(self) -> socket.socket | None:
        try:
            connection, _ = self._server.accept()
        except OSError:
            return None  # closed, or the worker gave up already
        with self._lock:
            if self._closed:
                connection.close()
                return None
            self._connections.append(connection)
        with contextlib.suppress(OSError):
            connection.sendall(self.secret)
        return connection

    def _drop_if_hung_up(self, connection: socket.socket) -> None:
        """Workers send nothing: a readable connection is one that hung up."""
        with self._lock:
            if connection in self._connections:
                self._connections.remove(connection)
        with contextlib.suppress(OSError):
            connection.close()

    @property
    def connected(self) -> int:
        """Workers connected now."""
        with self._lock:
            return len(self._connections)

    def close(self) -> None:
        """Every worker connected sees its connection end: the holder is gone for them."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            connections, self._connections = self._connections, []
        with contextlib.suppress(OSError):
            self._server.close()
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
            connection.close()


class BeaconWatch:
    """A worker's side: connected once, then ``gone()`` asks the connection without blocking.

    Picklable before it connects (a Spark task receives it inside its guard).
    """

    def __init__(self, address: tuple[str, int], secret: bytes, connect_timeout_s: float = 3.0) -> None:
        self.address = address
        self.secret = secret
        self.connect_timeout_s = connect_timeout_s
        self._socket: socket.socket | None = None
        self._usable = True
        self._gone = False

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_socket"] = None
        return state

    def _connect(self) -> None:
        sock: socket.socket | None = None
        received = b""
        try:
            sock = socket.create_connection(self.address, timeout=self.connect_timeout_s)
            while len(received) < len(self.secret):
                chunk = sock.recv(len(self.secret) - len(received))
                if not chunk:
                    break
                received += chunk
        except OSError as exc:
            # Unreachable is no verdict (a firewall, an address that is not the holder's here): the
            # lease's expiry still stops this worker if its holder dies.
            log.warning(
                "lease beacon %s:%s unreachable (%s); relying on the lease's expiry", *self.address, exc
            )
            received = b""
        if received != self.secret:
            if sock is not None:
                sock.close()
            if received:
                log.warning("%s:%s is not this lease's beacon; relying on the lease's expiry", *self.address)
            self._usable = False
            return
        assert sock is not None  # the secret came through it
        sock.setblocking(False)
        self._socket = sock

    def gone(self) -> bool:
        """True once the holder's process ended or it closed the beacon; False while connected or unknown."""
        if self._gone:
            return True
        if not self._usable:
            return False
        if self._socket is None:
            self._connect()
            if self._socket is None:
                return False
        try:
            data = self._socket.recv(64)  # non-blocking: nothing to read while the holder is there
        except BlockingIOError:
            return False
        except OSError:
            data = b""  # reset
        if data:
            return False  # the beacon sends nothing after its secret
        self._gone = True  # closed: the holder is gone for good
        self.close()
        return True

    def close(self) -> None:
        if self._socket is not None:
            with contextlib.suppress(OSError):
                self._socket.close()
            self._socket = None
