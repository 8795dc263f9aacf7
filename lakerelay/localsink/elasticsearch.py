"""Elasticsearch 9 REST surface: routing, auth, `GET /`, `_bulk`, `_count`, `_doc`, `_refresh`, indices.

Every reply carries `X-Elastic-Product: Elasticsearch` (the official clients refuse servers without
it). Query bodies of `_count` are ignored: the count is always of every document in the index.
"""

from collections.abc import Callable
from fnmatch import fnmatchcase
from typing import Any
from urllib.parse import unquote

import orjson

from lakerelay.localsink.auth import WWW_AUTHENTICATE, EsAuth
from lakerelay.localsink.es_bulk import (
    SHARDS,
    BulkResponse,
    EsError,
    bulk,
    error_payload,
    index_not_found,
    invalid_index_name,
)
from lakerelay.localsink.faults import FaultInjector
from lakerelay.localsink.filter_path import apply_filter_path
from lakerelay.localsink.store import EsIndex, SinkStore
from lakerelay.localsink.wire import BodyError, Reply, Request

ES_VERSION = "9.1.0"
COMPAT_CONTENT_TYPE = "application/vnd.elasticsearch+json;compatible-with=9"
PRODUCT_HEADER = ("X-Elastic-Product", "Elasticsearch")
CLUSTER_UUID = "bG9jYWxzaW5rLWNsdXN0ZXI"

INFO = {
    "name": "lakerelay.localsink",
    "cluster_name": "lakerelay-localsink",
    "cluster_uuid": CLUSTER_UUID,
    "version": {
        "number": ES_VERSION,
        "build_flavor": "default",
        "build_type": "docker",
        "build_hash": "lakerelay.localsink",
        "build_date": "2025-07-17T00:00:00.000000000Z",
        "build_snapshot": False,
        "lucene_version": "10.2.2",
        "minimum_wire_compatibility_version": "8.19.0",
        "minimum_index_compatibility_version": "8.0.0",
    },
    "tagline": "You Know, for Search",
}


def _content_type(req: Request) -> str:
    # The 9.x client asks for the compatibility media type; echo it back like ES does.
    accept = req.header("Accept")
    return COMPAT_CONTENT_TYPE if "vnd.elasticsearch+json" in accept else "application/json"


class ElasticsearchApi:
    def __init__(self, store: SinkStore, faults: FaultInjector, auth: EsAuth | None = None) -> None:
        self.store = store
        self.faults = faults
        self.auth = auth or EsAuth()

    def handle(self, req: Request) -> Reply:
        try:
            status, payload, extra = self._route(req)
        except EsError as exc:
            status, payload = exc.status, exc.payload()
            extra = [("WWW-Authenticate", v) for v in WWW_AUTHENTICATE] if status == 401 else []
            if status in (429, 503):
                extra.append(("Retry-After", "1"))
        except BodyError as exc:
            etype = "content_too_long_exception" if exc.status == 413 else "parse_exception"
            status, payload, extra = exc.status, error_payload(exc.status, etype, exc.reason), []
        filter_path = req.query.get("filter_path")
        if filter_path and payload is not None:
            if isinstance(payload, BulkResponse):
                payload = payload.payload()
            payload = apply_filter_path(payload, filter_path)
        headers = [PRODUCT_HEADER, ("Content-Type", _content_type(req)), *extra]
        if isinstance(payload, BulkResponse):
            body = payload.encode()
        else:
            body = b"" if payload is None else orjson.dumps(payload)
        return Reply(status, body, headers)

    def _check_auth(self, req: Request) -> None:
        verdict = self.auth.check(req.header("Authorization"))
        if verdict:
            return
        if verdict is None:
            reason = f"missing authentication credentials for REST request [{req.path}]"
        else:
            reason = "unable to authenticate with provided credentials and anonymous access is not allowed for this request"
        raise EsError(401, "security_exception", reason, header={"WWW-Authenticate": list(WWW_AUTHENTICATE)})

    def _route(self, req: Request) -> tuple[int, Any, list[tuple[str, str]]]:
        self._check_auth(req)
        parts = [unquote(p) for p in req.path.split("/") if p]
        method = req.method
        n = len(parts)
        if n == 0:
            self._allow(req, "GET", "HEAD")
            return 200, (None if method == "HEAD" else INFO), []
        if parts[-1] == "_bulk" and n <= 2:
            self._allow(req, "POST", "PUT")
            return self._ingest(
                req,
                lambda: bulk(
                    req.body(),
                    parts[0] if n == 2 else None,
                    self.store,
                    self.faults,
                    req.query.get("pipeline"),
                ),
            )
        if parts[-1] == "_count" and n <= 2:
            self._allow(req, "GET", "POST")
            return 200, {"count": self._count(parts[0] if n == 2 else "_all"), "_shards": _SHARD_SUMMARY}, []
        if parts[-1] == "_refresh" and n <= 2:
            self._allow(req, "GET", "POST")
            if n == 2:
                self._resolve(parts[0])
            return 200, {"_shards": SHARDS}, []
        if parts[0] == "_cluster" and parts[1:] == ["health"]:
            return 200, self._health(), []
        if n == 3 and parts[1] in ("_doc", "_create"):
            return self._document(req, parts[0], parts[1], parts[2])
        if n == 2 and parts[1] == "_doc":
            self._allow(req, "POST")
            return self._document(req, parts[0], "_doc", None)
        if n == 1 and not parts[0].startswith("_"):
            return self._index_admin(req, parts[0])
        raise EsError(
            400, "illegal_argument_exception", f"no handler found for uri [{req.path}] and method [{method}]"
        )

    @staticmethod
    def _allow(req: Request, *methods: str) -> None:
        if req.method not in methods:
            raise EsError(
                405,
                "illegal_argument_exception",
                f"Incorrect HTTP method for uri [{req.path}] and method [{req.method}], allowed: [{', '.join(methods)}]",
            )

    def _ingest(
        self, req: Request, run: Callable[[], tuple[int, Any]]
    ) -> tuple[int, Any, list[tuple[str, str]]]:
        self.faults.delay()
        fault = self.faults.request_fault()
        if fault == 429:
            raise EsError(
                429,
                "es_rejected_execution_exception",
                "rejected execution of coordinating operation [coordinating_and_primary_bytes=0, "
                "replica_bytes=0, all_bytes=0, coordinating_operation_bytes=0, max_coordinating_and_primary_bytes=0] "
                "(injected by localsink)",
            )
        if fault == 503:
            raise EsError(
                503,
                "unavailable_shards_exception",
                "primary shard is not active Timeout: [1m] (injected by localsink)",
            )
        status, payload = run()
        return status, payload, []

    def _resolve(self, expression: str) -> list[EsIndex]:
        """Indices named by a comma-separated list with wildcards; explicit missing names are a 404."""
        with self.store.lock:
            all_indices = self.store.indices
            found: dict[str, EsIndex] = {}
            for name in expression.split(","):
                if name in ("_all", "*"):
                    found.update(all_indices)
                elif "*" in name or "?" in name:
                    found.update({k: v for k, v in all_indices.items() if fnmatchcase(k, name)})
                elif name in all_indices:
                    found[name] = all_indices[name]
                else:
                    raise index_not_found(name)
            return list(found.values())

    def _count(self, expression: str) -> int:
        with self.store.lock:
            return sum(len(index) for index in self._resolve(expression))

    def _health(self) -> dict[str, Any]:
        with self.store.lock:
            n = len(self.store.indices)
        return {
            "cluster_name": INFO["cluster_name"],
            "status": "yellow" if n else "green",
            "timed_out": False,
            "number_of_nodes": 1,
            "number_of_data_nodes": 1,
            "active_primary_shards": n,
            "active_shards": n,
            "relocating_shards": 0,
            "initializing_shards": 0,
            "unassigned_shards": n,
            "active_shards_percent_as_number": 50.0 if n else 100.0,
        }

    def _document(
        self, req: Request, name: str, endpoint: str, doc_id: str | None
    ) -> tuple[int, Any, list[tuple[str, str]]]:
        method = req.method
        if method in ("GET", "HEAD") and endpoint == "_doc" and doc_id is not None:
            with self.store.lock:
                index = self.store.es_index(name)
                doc = None if index is None else index.docs.get(doc_id)
            if index is None:
                raise index_not_found(name)
            if method == "HEAD":
                return (200 if doc else 404), None, []
            if doc is None:
                return 404, {"_index": name, "_id": doc_id, "found": False}, []
            return (
                200,
                {
                    "_index": name,
                    "_id": doc_id,
                    "_version": doc.version,
                    "_seq_no": doc.seq_no,
                    "_primary_term": 1,
                    "found": True,
                    "_source": orjson.loads(doc.source),
                },
                [],
            )
        if method in ("PUT", "POST"):
            op = "create" if endpoint == "_create" or req.query.get("op_type") == "create" else "index"
            line = orjson.dumps({op: {"_index": name, **({"_id": doc_id} if doc_id is not None else {})}})
            return self._ingest(req, lambda: self._single(line + b"\n" + req.body().strip() + b"\n", op))
        if method == "DELETE" and endpoint == "_doc" and doc_id is not None:
            line = orjson.dumps({"delete": {"_index": name, "_id": doc_id}})
            return self._ingest(req, lambda: self._single(line + b"\n", "delete"))
        raise EsError(
            405,
            "illegal_argument_exception",
            f"Incorrect HTTP method for uri [{req.path}] and method [{method}]",
        )

    def _single(self, ndjson: bytes, op: str) -> tuple[int, dict[str, Any]]:
        # Single-document APIs are a one-item bulk whose item error becomes the HTTP error.
        status, response = bulk(ndjson, None, self.store, self.faults)
        payload = response.payload() if isinstance(response, BulkResponse) else response
        if "items" not in payload:
            return status, payload
        result = payload["items"][0][op]
        if "error" in result:
            err = result["error"]
            extra = {k: v for k, v in err.items() if k not in ("type", "reason")}
            return result["status"], error_payload(result["status"], err["type"], err["reason"], **extra)
        return result.pop("status"), result

    def _index_admin(self, req: Request, name: str) -> tuple[int, Any, list[tuple[str, str]]]:
        method = req.method
        if method == "PUT":
            reason = invalid_index_name(name)
            if reason:
                raise EsError(400, "invalid_index_name_exception", reason, index=name, index_uuid="_na_")
            with self.store.lock:
                if self.store.es_index(name) is not None:
                    raise EsError(
                        400,
                        "resource_already_exists_exception",
                        f"index [{name}/{self.store.indices[name].uuid}] already exists",
                    )
                self.store.es_index(name, create=True)
            return 200, {"acknowledged": True, "shards_acknowledged": True, "index": name}, []
        if method == "HEAD":
            with self.store.lock:
                exists = self.store.es_index(name) is not None
            return (200 if exists else 404), None, []
        if method == "DELETE":
            for index in self._resolve(name):
                self.store.es_delete_index(index.name)
            return 200, {"acknowledged": True}, []
        if method == "GET":
            return (
                200,
                {
                    index.name: {
                        "aliases": {},
                        "mappings": {},
                        "settings": {
                            "index": {"number_of_shards": "1", "number_of_replicas": "1", "uuid": index.uuid}
                        },
                    }
                    for index in self._resolve(name)
                },
                [],
            )
        raise EsError(
            405,
            "illegal_argument_exception",
            f"Incorrect HTTP method for uri [{req.path}] and method [{method}]",
        )


_SHARD_SUMMARY = {"total": 1, "successful": 1, "skipped": 0, "failed": 0}
