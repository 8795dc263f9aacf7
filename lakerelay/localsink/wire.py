"""Request and reply values passed between the HTTP plumbing and the protocol handlers.

Keeping them plain lets the Elasticsearch, HEC and admin handlers be tested without sockets.
"""

import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

DEFAULT_MAX_CONTENT_LENGTH = 100 * 1024 * 1024  # Elasticsearch's http.max_content_length default


class BodyError(Exception):
    """The request body cannot be used: bad compression, unknown encoding or too large."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(slots=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: Mapping[str, str]
    raw_body: bytes = b""
    max_content_length: int = DEFAULT_MAX_CONTENT_LENGTH
    # Set by the transport when it refused to read the body (too large): raised on first use.
    body_error: BodyError | None = None
    target: str = ""  # the request line's path and query as received (what a SigV4 signature covers)
    _decoded: bytes | None = field(default=None, repr=False)

    def header(self, name: str, default: str = "") -> str:
        value = self.headers.get(name)
        return default if value is None else value

    def body(self) -> bytes:
        """The body after `Content-Encoding` is undone; the size limit applies to the decoded bytes, as in ES."""
        if self.body_error is not None:
            raise self.body_error
        if self._decoded is None:
            self._decoded = decode_body(
                self.raw_body, self.header("Content-Encoding"), self.max_content_length
            )
        return self._decoded

    @property
    def decoded_size(self) -> int:
        return len(self.raw_body) if self._decoded is None else len(self._decoded)


@dataclass(slots=True)
class Reply:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)


def json_reply(status: int, payload: Any, headers: Iterable[tuple[str, str]] = ()) -> Reply:
    return Reply(status, orjson.dumps(payload), [("Content-Type", "application/json"), *headers])


def decode_body(raw: bytes, encoding: str, limit: int) -> bytes:
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        data = raw
    elif encoding in ("gzip", "x-gzip"):
        data = _inflate(raw, 16 + zlib.MAX_WBITS, limit)
    elif encoding == "deflate":
        # HTTP "deflate" is meant to be zlib-wrapped, but many clients send raw deflate.
        try:
            data = _inflate(raw, zlib.MAX_WBITS, limit)
        except BodyError:
            data = _inflate(raw, -zlib.MAX_WBITS, limit)
    else:
        raise BodyError(415, f"unsupported Content-Encoding [{encoding}]")
    if len(data) > limit:
        raise BodyError(413, f"request body of {len(data)} bytes exceeds the limit of {limit} bytes")
    return data


def _inflate(raw: bytes, wbits: int, limit: int) -> bytes:
    # Bounded output guards against compression bombs; the loop handles multi-member gzip streams.
    parts: list[bytes] = []
    total = 0
    data = raw
    try:
        while data:
            inflater = zlib.decompressobj(wbits)
            chunk = inflater.decompress(data, limit + 1 - total)
            parts.append(chunk)
            total += len(chunk)
            if total > limit:
                raise BodyError(413, f"decompressed request body exceeds the limit of {limit} bytes")
            if not inflater.eof:
                raise BodyError(400, "truncated compressed request body")
            data = inflater.unused_data
            if not data.strip(b"\x00"):
                break
    except zlib.error as exc:
        raise BodyError(400, f"cannot decompress request body: {exc}") from exc
    return b"".join(parts)
