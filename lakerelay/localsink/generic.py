"""A generic REST collector under `/_generic/<collection>`: takes a JSON array or NDJSON body of records.

It stands for "any REST API" in the seed's sense: no per-item answer, so a request is accepted or
refused as a whole. Auth and request-level faults are those of the Elasticsearch surface; a record
matching the reject rule refuses the whole request with a 400, as a validating API would.
"""

from typing import Any
from urllib.parse import unquote

import orjson

from lakerelay.localsink.auth import EsAuth
from lakerelay.localsink.faults import FaultInjector
from lakerelay.localsink.store import SinkStore
from lakerelay.localsink.wire import BodyError, Reply, Request, json_reply

PREFIX = "/_generic"


class GenericApi:
    def __init__(self, store: SinkStore, faults: FaultInjector, auth: EsAuth) -> None:
        self.store = store
        self.faults = faults
        self.auth = auth

    def handle(self, req: Request) -> Reply:
        parts = [unquote(p) for p in req.path[len(PREFIX) :].split("/") if p]
        if len(parts) != 1:
            return json_reply(404, {"error": f"use {PREFIX}/<collection>"})
        if req.method not in ("POST", "PUT"):
            return json_reply(405, {"error": f"method {req.method} not allowed; use POST or PUT"})
        if not self.auth.check(req.header("Authorization")):
            return json_reply(401, {"error": "missing or wrong credentials"})
        self.faults.delay()
        fault = self.faults.request_fault()
        if fault is not None:
            return json_reply(fault, {"error": "injected by localsink"}, [("Retry-After", "1")])
        try:
            records = _decode(req.body())
        except (BodyError, ValueError) as exc:
            return json_reply(400, {"error": f"body is not a JSON array or NDJSON: {exc}"})
        for n, record in enumerate(records):
            if self.faults.rejects(record):
                return json_reply(400, {"error": f"record {n} rejected by validation"})
        self.store.generic_add(parts[0], records)
        return json_reply(200, {"accepted": len(records)})


def _decode(body: bytes) -> list[Any]:
    text = body.strip()
    if not text:
        raise ValueError("empty body")
    if text.startswith(b"["):
        value = orjson.loads(text)
        if not isinstance(value, list):
            raise ValueError("not an array")
        return value
    return [orjson.loads(line) for line in text.split(b"\n") if line.strip()]
