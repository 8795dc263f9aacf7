"""Splunk HTTP Event Collector surface: `event` (and its aliases), `raw`, `ack` and `health`.

A batch body is a sequence of JSON envelopes written one after another (no array, separators
optional). It is processed the way Splunk does, in order: when event k is bad (not JSON, not an
object, no `event`, blank `event`, a disallowed index, or a value rejected by fault injection) the
reply is a 400 with `invalid-event-number: k`, events 0..k-1 ARE stored, and events k.. are not.
A client that re-sends the whole batch after such an error therefore duplicates events 0..k-1,
which is exactly the at-least-once behaviour a real HEC gives it.
"""

import base64
import binascii
import hmac
import json
import re
import uuid
from collections.abc import Iterable
from typing import Any

import orjson

from lakerelay.localsink.faults import FaultInjector
from lakerelay.localsink.store import SinkStore
from lakerelay.localsink.wire import BodyError, Reply, Request

DEFAULT_HEC_TOKEN = "lakerelay-local-hec-token"
DEFAULT_HEC_INDEX = "main"
_JSON = ("Content-Type", "application/json; charset=UTF-8")
_WS = re.compile(r"[ \t\n\r]*")

_EVENT_PATHS = frozenset(
    {"/services/collector", "/services/collector/event", "/services/collector/event/1.0"}
)
_RAW_PATHS = frozenset({"/services/collector/raw", "/services/collector/raw/1.0"})
_HEALTH_PATHS = frozenset({"/services/collector/health", "/services/collector/health/1.0"})
_ACK_PATHS = frozenset({"/services/collector/ack", "/services/collector/ack/1.0"})


class HecError(Exception):
    def __init__(self, status: int, code: int, text: str, **extra: Any) -> None:
        super().__init__(text)
        self.status = status
        self.code = code
        self.text = text
        self.extra = extra


def decode_events(body: bytes) -> tuple[list[Any], int | None]:
    """Decode concatenated JSON values. Returns (values decoded, index of the first undecodable one or None)."""
    values: list[Any] = []
    append = values.append
    loads = orjson.loads
    start = 0  # offset of `line` in body, for handing over to the slow path
    # Fast path: clients almost always put one envelope per line, which orjson parses line by line.
    # One C-level split beats a find-and-slice per line.
    for line in body.split(b"\n"):
        try:
            append(loads(line))
        except orjson.JSONDecodeError:
            if line.strip():
                return _decode_slow(body, start, values)
        start += len(line) + 1
    return values, None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _decode_slow(body: bytes, start: int, values: list[Any]) -> tuple[list[Any], int | None]:
    # Envelopes split across lines or glued together (`}{`): decode incrementally from `start`.
    try:
        text = body[start:].decode("utf-8")
    except UnicodeDecodeError:
        return values, len(values)
    decoder = json.JSONDecoder(parse_constant=_reject_constant)
    pos = _WS.match(text, 0).end()  # type: ignore[union-attr]
    while pos < len(text):
        try:
            value, pos = decoder.raw_decode(text, pos)
        except ValueError:
            return values, len(values)
        values.append(value)
        pos = _WS.match(text, pos).end()  # type: ignore[union-attr]
    return values, None


def check_envelope(
    value: Any, allowed_indexes: frozenset[str] | None, faults: FaultInjector
) -> HecError | None:
    """The HEC error for one decoded envelope, or None when it would be indexed."""
    if type(value) is not dict:
        return HecError(400, 6, "Invalid data format")
    if "event" not in value:
        return HecError(400, 12, "Event field is required")
    event = value["event"]
    if event is None or event == "":
        return HecError(400, 13, "Event field cannot be blank")
    index = value.get("index")
    # An empty index means "the token's default", as when the field is absent.
    if index and (type(index) is not str or (allowed_indexes is not None and index not in allowed_indexes)):
        return HecError(400, 7, "Incorrect index")
    if "time" in value and not _valid_time(value["time"]):
        return HecError(400, 6, "Invalid data format")
    if "fields" in value and type(value["fields"]) is not dict:
        return HecError(400, 6, "Invalid data format")
    if faults.rejects(event):
        return HecError(400, 6, "Invalid data format")
    return None


def _valid_time(value: Any) -> bool:
    if type(value) in (int, float):
        return True
    if type(value) is str:
        try:
            float(value)
        except ValueError:
            return False
        return True
    return False


def check_token(authorization: str, token: str) -> HecError | None:
    header = authorization.strip()
    if not header:
        return HecError(401, 2, "Token is required")
    scheme, _, value = header.partition(" ")
    scheme = scheme.lower()
    value = value.strip()
    if scheme == "splunk":
        given = value
    elif scheme == "basic":
        # curl -u x:<token> style: the password is the token.
        try:
            given = base64.b64decode(value, validate=True).decode().partition(":")[2]
        except (binascii.Error, UnicodeDecodeError):
            return HecError(401, 3, "Invalid authorization")
    else:
        return HecError(401, 3, "Invalid authorization")
    if not hmac.compare_digest(given.encode(), token.encode()):
        return HecError(403, 4, "Invalid token")
    return None


class HecApi:
    """HEC endpoints for one token. Batches are applied in order: see the module docstring for what a
    400 with `invalid-event-number` leaves stored."""

    def __init__(
        self,
        store: SinkStore,
        faults: FaultInjector,
        token: str = DEFAULT_HEC_TOKEN,
        ack: bool = False,
        allowed_indexes: Iterable[str] | None = None,
        default_index: str = DEFAULT_HEC_INDEX,
    ) -> None:
        self.store = store
        self.faults = faults
        self.token = token
        self.ack = ack
        self.allowed_indexes = None if allowed_indexes is None else frozenset(allowed_indexes)
        self.default_index = default_index

    def handle(self, req: Request) -> Reply:
        path = req.path.rstrip("/") or "/"
        headers: list[tuple[str, str]] = []
        try:
            if path in _HEALTH_PATHS:
                status, payload = 200, {"text": "HEC is healthy", "code": 17}
            elif path in _EVENT_PATHS or path in _RAW_PATHS:
                status, payload = 200, self._ingest(req, raw=path in _RAW_PATHS)
            elif path in _ACK_PATHS:
                status, payload = 200, self._acks(req)
            else:
                status, payload = (
                    404,
                    {"text": "The requested URL was not found on this server.", "code": 404},
                )
        except HecError as exc:
            status, payload = exc.status, {"text": exc.text, "code": exc.code, **exc.extra}
            if status in (429, 503):
                headers.append(("Retry-After", "1"))
            if status == 401:
                headers.append(("WWW-Authenticate", 'Splunk realm="HEC"'))
        except BodyError as exc:
            status, payload = exc.status, {"text": exc.reason, "code": 6 if exc.status == 400 else 27}
        self.store.record_hec(payload.get("code", -1))
        return Reply(status, orjson.dumps(payload), [_JSON, *headers])

    def _channel(self, req: Request, required: bool) -> str | None:
        channel = req.header("X-Splunk-Request-Channel") or req.query.get("channel", "")
        if not channel:
            if required:
                raise HecError(400, 10, "Data channel is missing")
            return None
        try:
            uuid.UUID(channel)
        except ValueError:
            raise HecError(400, 11, "Invalid data channel") from None
        return channel.lower()

    def _ingest(self, req: Request, raw: bool) -> dict[str, Any]:
        if req.method != "POST":
            raise HecError(405, 8, f"Method {req.method} not allowed; use POST")
        denied = check_token(req.header("Authorization"), self.token)
        if denied:
            raise denied
        channel = self._channel(req, required=self.ack or raw)
        self.faults.delay()
        fault = self.faults.request_fault()
        if fault == 429:
            raise HecError(429, 9, "Server is busy")
        if fault == 503:
            raise HecError(503, 9, "Server is busy")
        body = req.body()
        if not body.strip():
            raise HecError(400, 5, "No data")
        if raw:
            accepted, failure = self._raw_events(req, body), None
        else:
            accepted, failure = self._json_events(body)
        # Earlier events are kept even when a later one fails, as Splunk indexes a batch in order.
        if accepted:
            self.store.hec_add(accepted)
        if failure is not None:
            raise failure
        payload: dict[str, Any] = {"text": "Success", "code": 0}
        if self.ack and channel is not None:
            payload["ackId"] = self.store.issue_ack(channel)
        return payload

    def _json_events(self, body: bytes) -> tuple[list[tuple[str, dict[str, Any]]], HecError | None]:
        values, bad_at = decode_events(body)
        accepted: list[tuple[str, dict[str, Any]]] = []
        append = accepted.append
        default_index = self.default_index
        allowed_indexes = self.allowed_indexes
        faults = self.faults
        for n, value in enumerate(values):
            error = check_envelope(value, allowed_indexes, faults)
            if error is not None:
                error.extra["invalid-event-number"] = n
                return accepted, error
            append((value.get("index") or default_index, value))
        if bad_at is not None:
            return accepted, HecError(400, 6, "Invalid data format", **{"invalid-event-number": bad_at})
        return accepted, None

    def _raw_events(self, req: Request, body: bytes) -> list[tuple[str, dict[str, Any]]]:
        index = req.query.get("index") or self.default_index
        if self.allowed_indexes is not None and index not in self.allowed_indexes:
            raise HecError(400, 7, "Incorrect index")
        meta = {k: req.query[k] for k in ("host", "source", "sourcetype") if k in req.query}
        text = body.decode("utf-8", errors="replace")
        return [
            (index, {"event": line, "index": index, **meta}) for line in text.splitlines() if line.strip()
        ]

    def _acks(self, req: Request) -> dict[str, Any]:
        if req.method != "POST":
            raise HecError(405, 8, f"Method {req.method} not allowed; use POST")
        denied = check_token(req.header("Authorization"), self.token)
        if denied:
            raise denied
        if not self.ack:
            raise HecError(400, 14, "ACK is disabled")
        channel = self._channel(req, required=True)
        assert channel is not None
        try:
            query = orjson.loads(req.body())
        except orjson.JSONDecodeError:
            raise HecError(400, 6, "Invalid data format") from None
        ack_ids = query.get("acks") if type(query) is dict else None
        if type(ack_ids) is not list or not all(type(a) is int for a in ack_ids):
            raise HecError(400, 6, "Invalid data format")
        return {"acks": self.store.query_acks(channel, ack_ids)}
