"""HTTP plumbing: a keep-alive `ThreadingHTTPServer`, routing by path prefix, and `LocalSinkServer`.

Routes: `/_localsink/...` → admin API, `/services/collector...` → Splunk HEC, anything else →
Elasticsearch. Each response is written with a single `write` and Nagle disabled, because a
headers-then-body pair of small writes stalls keep-alive clients on delayed ACKs (~40 ms a request).
"""

import contextlib
import socket
import socketserver
import ssl
import struct
import sys
import threading
import traceback
from collections.abc import Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from lakerelay.localsink.admin import PREFIX as ADMIN_PREFIX
from lakerelay.localsink.admin import AdminApi, build_stats
from lakerelay.localsink.auth import EsAuth
from lakerelay.localsink.elasticsearch import ElasticsearchApi
from lakerelay.localsink.faults import FaultConfig, FaultInjector
from lakerelay.localsink.generic import PREFIX as GENERIC_PREFIX
from lakerelay.localsink.generic import GenericApi
from lakerelay.localsink.sigv4 import SigV4Verifier
from lakerelay.localsink.splunk import DEFAULT_HEC_INDEX, DEFAULT_HEC_TOKEN, HecApi
from lakerelay.localsink.store import SinkStore
from lakerelay.localsink.wire import DEFAULT_MAX_CONTENT_LENGTH, BodyError, Reply, Request, json_reply

_HEC_PREFIX = "/services/collector"
_HEC_INGEST = ("/services/collector", "/services/collector/event", "/services/collector/raw")


def is_ingest(path: str) -> bool:
    """Paths that write data: the only ones connection-reset faults hit."""
    trimmed = path.rstrip("/").removesuffix("/1.0")
    return trimmed.endswith("/_bulk") or trimmed in _HEC_INGEST or path.startswith(GENERIC_PREFIX + "/")


class SinkApp:
    """Routes a parsed request to the protocol that owns its path."""

    def __init__(
        self,
        store: SinkStore,
        faults: FaultInjector,
        es: ElasticsearchApi,
        hec: HecApi,
        sigv4: SigV4Verifier | None = None,
    ) -> None:
        self.store = store
        self.faults = faults
        self.es = es
        self.hec = hec
        self.sigv4 = sigv4
        self.admin = AdminApi(store, faults)
        self.generic = GenericApi(store, faults, es.auth)

    def handle(self, req: Request) -> Reply:
        path = req.path
        if path == "/health":
            return json_reply(200, {"status": "ok"})
        if path == ADMIN_PREFIX or path.startswith(ADMIN_PREFIX + "/"):
            return self.admin.handle(req)
        if path.startswith(GENERIC_PREFIX + "/"):
            return self.generic.handle(req)
        if path == _HEC_PREFIX or path.startswith(_HEC_PREFIX + "/"):
            return self.hec.handle(req)
        if self.sigv4 is not None:  # Amazon OpenSearch: every Elasticsearch call is signed
            refusal = self.sigv4.refusal(req.method, req.target or req.path, req.headers, req.raw_body)
            if refusal is not None:
                return json_reply(403, {"message": refusal})
        return self.es.handle(req)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "lakerelay.localsink"
    sys_version = ""
    disable_nagle_algorithm = True
    timeout = 300  # idle keep-alive connections are dropped after this many seconds
    server: "_SinkHTTPServer"

    def setup(self) -> None:
        # TLS handshakes happen here, on the connection's own thread, not in the accept loop.
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(10)
            self.request.do_handshake()
            self.request.settimeout(None)
        super().setup()

    def do_GET(self) -> None:
        self._serve()

    do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_GET

    def _serve(self) -> None:
        server = self.server
        split = urlsplit(self.path)
        req = Request(
            method=self.command,
            path=split.path or "/",
            query=dict(parse_qsl(split.query, keep_blank_values=True)),
            headers=self.headers,  # type: ignore[arg-type]  # email.message.Message is a case-insensitive mapping
            max_content_length=server.max_content_length,
            target=self.path,
        )
        if not self._read_body(req):
            return
        reset = server.app.faults.connection_reset() if is_ingest(req.path) else None
        if reset == "before":
            self._reset_connection()
            return
        try:
            reply = server.app.handle(req)
        except Exception:  # the server's boundary: a 500 for the client, the traceback on stderr
            traceback.print_exc(file=sys.stderr)
            reply = json_reply(500, {"error": "internal error in localsink; see its stderr"})
        server.app.store.record_http(len(req.raw_body), req.decoded_size, reply.status)
        if reset == "after":
            self._reset_connection()
            return
        self._write(reply)

    def _reset_connection(self) -> None:
        """Drop the connection with a TCP RST and no answer, as a crashed proxy or node would."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()

    def _read_body(self, req: Request) -> bool:
        """Fill `req.raw_body`; False when the connection is unusable and was answered or dropped."""
        limit = self.server.max_content_length
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            try:
                req.raw_body = self._read_chunked(limit)
            except BodyError as exc:
                req.body_error = exc
                self.close_connection = True
            except ValueError:
                self._write(json_reply(400, {"error": "malformed chunked body"}), force_close=True)
                return False
            return True
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self._write(json_reply(400, {"error": "invalid Content-Length"}), force_close=True)
            return False
        if length > limit:
            # Leave the body unread and close afterwards, so a huge upload costs nothing.
            req.body_error = BodyError(
                413, f"request body of {length} bytes exceeds the limit of {limit} bytes"
            )
            self.close_connection = True
            return True
        if length:
            req.raw_body = self.rfile.read(length)
            if len(req.raw_body) < length:
                self.close_connection = True
                return False
        return True

    def _read_chunked(self, limit: int) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            size = int(self.rfile.readline(65537).split(b";")[0].strip(), 16)
            if size == 0:
                while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(parts)
            total += size
            if total > limit:
                raise BodyError(413, f"request body exceeds the limit of {limit} bytes")
            parts.append(self.rfile.read(size))
            self.rfile.readline()

    def _write(self, reply: Reply, force_close: bool = False) -> None:
        if force_close:
            self.close_connection = True
        body = reply.body
        try:
            phrase = HTTPStatus(reply.status).phrase
        except ValueError:
            phrase = ""
        lines = [
            f"HTTP/1.1 {reply.status} {phrase}",
            f"Date: {self.date_time_string()}",
            f"Content-Length: {len(body)}",
        ]
        lines.extend(f"{name}: {value}" for name, value in reply.headers)
        if self.close_connection:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.wfile.write(head if self.command == "HEAD" else head + body)
        self.log_request(reply.status, len(body))

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            super().log_message(format, *args)


class _SinkHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        app: SinkApp,
        max_content_length: int,
        verbose: bool,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.app = app
        self.max_content_length = max_content_length
        self.verbose = verbose
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)
        if tls is not None:
            self.socket = tls.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, a reverse DNS lookup that can stall startup.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        # Keep-alive connections would otherwise keep being served by their threads after stop().
        with self._connections_lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError | ssl.SSLError | OSError):
            return  # clients dropping connections (or refusing our certificate) is normal
        super().handle_error(request, client_address)


class LocalSinkServer:
    """An in-process Elasticsearch + Splunk HEC sink on 127.0.0.1.

    `start()` serves from a background thread; `stop()` closes the listener and every open
    connection. Reads such as `es_count` go to the store directly, not over HTTP.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        es_api_key: str | None = None,
        es_basic: tuple[str, str] | str | None = None,
        hec_token: str = DEFAULT_HEC_TOKEN,
        hec_ack: bool = False,
        faults: FaultConfig | Mapping[str, Any] | None = None,
        *,
        es_bearer: str | None = None,
        hec_indexes: list[str] | None = None,
        hec_default_index: str = DEFAULT_HEC_INDEX,
        max_content_length: int = DEFAULT_MAX_CONTENT_LENGTH,
        verbose: bool = False,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        tls_client_ca: str | None = None,
        sigv4: SigV4Verifier | None = None,
    ) -> None:
        """``tls_cert`` (PEM, with the key unless ``tls_key`` is given) switches the server to HTTPS;
        ``tls_client_ca`` then requires clients to present a certificate signed by that CA (mutual TLS).
        ``sigv4`` makes the Elasticsearch API verify AWS SigV4 signatures, as Amazon OpenSearch does."""
        self.tls: ssl.SSLContext | None = None
        if tls_cert:
            self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.tls.load_cert_chain(tls_cert, tls_key)
            if tls_client_ca:
                self.tls.verify_mode = ssl.CERT_REQUIRED
                self.tls.load_verify_locations(tls_client_ca)
        self.host = host
        self.requested_port = port
        self.max_content_length = max_content_length
        self.verbose = verbose
        self.store = SinkStore()
        self.faults = FaultInjector(_fault_config(faults))
        es = ElasticsearchApi(self.store, self.faults, EsAuth(es_api_key, es_basic, es_bearer))
        hec = HecApi(self.store, self.faults, hec_token, hec_ack, hec_indexes, hec_default_index)
        self.app = SinkApp(self.store, self.faults, es, hec, sigv4)
        self._httpd: _SinkHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> "LocalSinkServer":
        if self._httpd is not None:
            return self
        httpd = _SinkHTTPServer(
            (self.host, self.requested_port), self.app, self.max_content_length, self.verbose, self.tls
        )
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"localsink-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        httpd, thread = self._httpd, self._thread
        if httpd is None:
            return
        self._httpd = self._thread = None
        httpd.shutdown()
        httpd.close_connections()
        httpd.server_close()
        if thread is not None:
            thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._httpd is not None

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("LocalSinkServer is not started")
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        host = self.host if ":" not in self.host else f"[{self.host}]"
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    def __enter__(self) -> "LocalSinkServer":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- direct reads and controls, bypassing HTTP ---------------------------------------------

    def es_count(self, index: str) -> int:
        """Documents in `index`; 0 when it does not exist."""
        return self.store.es_count(index) or 0

    def es_ids(self, index: str) -> list[str]:
        return self.store.es_ids(index) or []

    def es_pipelines(self) -> dict[str, dict[str, int]]:
        """Per ingest pipeline named in ``_bulk`` requests, the documents stored through it per index."""
        return self.store.es_pipelines()

    def hec_count(self, index: str = DEFAULT_HEC_INDEX) -> int:
        return self.store.hec_count(index)

    def generic_records(self, collection: str) -> list[Any]:
        return self.store.generic_list(collection)

    def hec_events(self, index: str = DEFAULT_HEC_INDEX, limit: int | None = None) -> list[dict[str, Any]]:
        return self.store.hec_list(index, limit) or []

    def stats(self) -> dict[str, Any]:
        return build_stats(self.store, self.faults)

    def reset(self) -> None:
        self.store.reset()
        self.faults.reset()

    def set_faults(self, faults: FaultConfig | Mapping[str, Any] | None) -> None:
        self.faults.configure(_fault_config(faults))


def _fault_config(faults: FaultConfig | Mapping[str, Any] | None) -> FaultConfig:
    if faults is None:
        return FaultConfig()
    if isinstance(faults, FaultConfig):
        return faults
    return FaultConfig.from_dict(faults)
