"""Test and benchmark API under `/_localsink/`: stats, stored ids and events, reset, fault settings.

Deliberately unauthenticated and never subject to injected faults, so a test can always inspect
what the sink holds whatever it configured the protocols to do.
"""

from typing import Any
from urllib.parse import unquote

import orjson

from lakerelay.localsink.faults import FaultConfig, FaultInjector
from lakerelay.localsink.store import SinkStore
from lakerelay.localsink.wire import BodyError, Reply, Request, json_reply

PREFIX = "/_localsink"


def build_stats(store: SinkStore, faults: FaultInjector) -> dict[str, Any]:
    stats = store.snapshot()
    stats["faults"] = {"injected": faults.counts(), "settings": faults.config.to_dict()}
    return stats


class AdminApi:
    def __init__(self, store: SinkStore, faults: FaultInjector) -> None:
        self.store = store
        self.faults = faults

    def handle(self, req: Request) -> Reply:
        parts = [unquote(p) for p in req.path[len(PREFIX) :].split("/") if p]
        method = req.method
        try:
            return self._route(method, parts, req)
        except (ValueError, TypeError, BodyError) as exc:
            return json_reply(400, {"error": str(exc)})

    def _route(self, method: str, parts: list[str], req: Request) -> Reply:
        if parts == ["health"] and method in ("GET", "HEAD"):
            return json_reply(200, {"ok": True})
        if parts == ["stats"] and method == "GET":
            return json_reply(200, build_stats(self.store, self.faults))
        if parts == ["reset"] and method == "POST":
            self.store.reset()
            self.faults.reset()
            return json_reply(200, {"reset": True})
        if parts == ["faults"]:
            if method == "GET":
                return json_reply(200, self.faults.config.to_dict())
            if method in ("POST", "PUT"):
                body = req.body()
                settings = orjson.loads(body) if body.strip() else {}
                if not isinstance(settings, dict):
                    raise ValueError("fault settings must be a JSON object")
                self.faults.configure(FaultConfig.from_dict(settings))
                return json_reply(200, self.faults.config.to_dict())
        if len(parts) == 2 and parts[0] == "generic" and method == "GET":
            records = self.store.generic_list(parts[1])
            return json_reply(200, {"collection": parts[1], "count": len(records), "records": records})
        if len(parts) == 3 and parts[0] == "es" and method == "GET":
            return self._es(parts[1], parts[2], req)
        if len(parts) == 3 and parts[0] == "hec" and parts[2] == "events" and method == "GET":
            events = self.store.hec_list(parts[1], _limit(req))
            if events is None:
                return json_reply(404, {"error": f"no HEC events for index [{parts[1]}]"})
            return json_reply(
                200, {"index": parts[1], "count": self.store.hec_count(parts[1]), "events": events}
            )
        return json_reply(404, {"error": f"no admin endpoint {method} {req.path}"})

    def _es(self, name: str, what: str, req: Request) -> Reply:
        if what == "ids":
            ids = self.store.es_ids(name)
            if ids is None:
                return json_reply(404, {"error": f"no such index [{name}]"})
            return json_reply(200, {"index": name, "count": len(ids), "ids": ids})
        if what == "docs":
            sources = self.store.es_sources(name, _limit(req))
            if sources is None:
                return json_reply(404, {"error": f"no such index [{name}]"})
            docs = [{"_id": doc_id, "_source": orjson.loads(source)} for doc_id, source in sources]
            return json_reply(200, {"index": name, "count": self.store.es_count(name), "docs": docs})
        return json_reply(404, {"error": f"unknown index view [{what}]"})


def _limit(req: Request) -> int | None:
    raw = req.query.get("limit")
    if raw is None:
        return None
    limit = int(raw)
    if limit < 0:
        raise ValueError("limit must be >= 0")
    return limit
