"""Elasticsearch `_bulk`: NDJSON parsing, validation and per-item execution against the store.

Semantics follow Elasticsearch's own split between the coordinating node and the shards:

- Whole request 400: body not newline-terminated, malformed action line, unknown action or
  parameter, update body that is not valid JSON, and item validation failures (index or id missing,
  id too long, source missing). ES runs `BulkRequest.validate()` over every item before executing
  any, so one such item fails the whole request and nothing is stored.
- Per item, inside a 200 with `errors: true`: 429 `es_rejected_execution_exception` (injected),
  400 `document_parsing_exception` (source not a JSON object, or a rejected field value),
  400 `invalid_index_name_exception`, 409 `version_conflict_engine_exception`, 404 for deletes
  and updates of missing documents or indices.
"""

import base64
import functools
import os
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import orjson

from lakerelay.localsink.faults import FaultInjector
from lakerelay.localsink.store import EsIndex, SinkStore, StoredDoc

# One node: the replica of each single-shard index is unassigned, as on a laptop cluster.
SHARDS = {"total": 2, "successful": 1, "failed": 0}
_OPS = frozenset({"index", "create", "delete", "update"})
_META_FIELDS = frozenset(
    {
        "_index",
        "_id",
        "routing",
        "version",
        "version_type",
        "if_seq_no",
        "if_primary_term",
        "retry_on_conflict",
        "pipeline",
        "require_alias",
        "require_data_stream",
        "dynamic_templates",
        "op_type",
        "_source",
        "list_executed_pipelines",
    }
)
_UPDATE_FIELDS = frozenset(
    {"doc", "upsert", "doc_as_upsert", "detect_noop", "script", "scripted_upsert", "_source", "lang"}
)
_BAD_INDEX_CHARS = frozenset('\\/*?"<>| ,#:')
MAX_ID_BYTES = 512


class EsError(Exception):
    """A whole-request error, rendered with the ES error envelope."""

    def __init__(self, status: int, error_type: str, reason: str, **extra: Any) -> None:
        super().__init__(reason)
        self.status = status
        self.error_type = error_type
        self.reason = reason
        self.extra = extra

    def payload(self) -> dict[str, Any]:
        return error_payload(self.status, self.error_type, self.reason, **self.extra)


def error_payload(status: int, error_type: str, reason: str, **extra: Any) -> dict[str, Any]:
    cause = {"type": error_type, "reason": reason, **extra}
    return {"error": {"root_cause": [cause], **cause}, "status": status}


def index_not_found(name: str) -> EsError:
    return EsError(
        404,
        "index_not_found_exception",
        f"no such index [{name}]",
        **{"resource.type": "index_or_alias", "resource.id": name, "index_uuid": "_na_", "index": name},
    )


@functools.lru_cache(maxsize=4096)  # a bulk request names few indices but asks once per item
def invalid_index_name(name: str) -> str | None:
    """The reason ES would refuse to create this index, or None."""
    if not name or name in (".", ".."):
        return f"Invalid index name [{name}], must not be '.' or '..'" if name else "index name is empty"
    if name != name.lower():
        return f"Invalid index name [{name}], must be lowercase"
    if name[0] in "_-+":
        return f"Invalid index name [{name}], must not start with '_', '-', or '+'"
    if any(ch in _BAD_INDEX_CHARS for ch in name):
        return f'Invalid index name [{name}], must not contain the following characters [ , ", *, \\, <, |, ,, >, /, ?, #, :]'
    if len(name.encode()) > 255:
        return f"Invalid index name [{name}], index name is too long, (> 255)"
    return None


def auto_id() -> str:
    # ES auto ids are 20 URL-safe base64 characters.
    return base64.urlsafe_b64encode(os.urandom(15)).decode()


@dataclass(slots=True)
class BulkAction:
    op: str
    index: str | None
    doc_id: str | None
    meta: dict[str, Any]
    source: bytes | None
    line: int
    update: dict[str, Any] | None = None
    error: tuple[int, str, str] | None = None


def parse_bulk(body: bytes, default_index: str | None) -> list[BulkAction]:
    """Split an NDJSON bulk body into actions; raises EsError for what ES refuses as a whole."""
    _check_body(body)
    lines = body.split(b"\n")
    last = len(lines) - 1  # lines[last] is the empty tail after the final newline
    loads = orjson.loads
    actions: list[BulkAction] = []
    i = 0
    while i < last:
        raw = lines[i]
        i += 1
        try:
            action = loads(raw)
        except orjson.JSONDecodeError as exc:
            if not raw.strip():
                continue  # ES skips blank action lines
            raise EsError(400, "x_content_parse_exception", f"[{i}:{exc.colno}] {exc.msg}") from None
        # The checks inline and the refusal's wording in a function: this loop runs once per document.
        if type(action) is not dict or len(action) != 1:
            raise _malformed_action(action, i)
        ((op, meta),) = action.items()
        if op not in _OPS or type(meta) is not dict or not meta.keys() <= _META_FIELDS:
            raise _malformed_action(action, i)
        op, index, doc_id = _action_target(op, meta, default_index)
        source = None
        update = None
        line = i
        if op != "delete":
            if i >= last:
                raise EsError(
                    400,
                    "illegal_argument_exception",
                    f"Malformed action/metadata line [{i}], expected a source line after it",
                )
            source = lines[i]
            i += 1
            if source.endswith(b"\r"):
                source = source[:-1]
            if op == "update":
                update = _parse_update(source, i)
        actions.append(BulkAction(op, index, doc_id, meta, source, line, update))
    _validate(actions)
    return actions


def _check_body(body: bytes) -> None:
    if not body:
        raise EsError(400, "parse_exception", "request body is required")
    if not body.endswith(b"\n"):
        raise EsError(
            400, "illegal_argument_exception", "The bulk request must be terminated by a newline [\\n]"
        )


def _malformed_action(action: Any, i: int) -> EsError:
    """ES's refusal of action line ``i`` (1-based), worded as ES words it."""
    if type(action) is not dict or len(action) != 1:
        return EsError(
            400,
            "illegal_argument_exception",
            f"Malformed action/metadata line [{i}], expected an object with one of [create], [delete], [index] or [update]",
        )
    ((op, meta),) = action.items()
    if op not in _OPS:
        return EsError(
            400,
            "illegal_argument_exception",
            f"Malformed action/metadata line [{i}], expected field [create], [delete], [index] or [update] but found [{op}]",
        )
    if type(meta) is not dict:
        return EsError(
            400,
            "illegal_argument_exception",
            f"Malformed action/metadata line [{i}], expected START_OBJECT",
        )
    unknown = sorted(meta.keys() - _META_FIELDS)[0]
    return EsError(
        400,
        "illegal_argument_exception",
        f"Action/metadata line [{i}] contains an unknown parameter [{unknown}]",
    )


def _action_target(
    op: str, meta: dict[str, Any], default_index: str | None
) -> tuple[str, str | None, str | None]:
    """The operation as ES runs it (``index`` with ``op_type: create`` is a create), its index and
    document id (one assigned when the action has none and needs one)."""
    index = meta.get("_index", default_index)
    if index is not None and type(index) is not str:
        index = str(index)
    doc_id = meta.get("_id")
    if doc_id is not None and type(doc_id) is not str:
        doc_id = str(doc_id)
    if op == "index" and "op_type" in meta and str(meta["op_type"]).lower() == "create":
        op = "create"
    if doc_id is None and op != "delete" and op != "update":
        # ES assigns ids on the coordinating node, so even failed items report theirs.
        doc_id = auto_id()
    return op, index, doc_id


def _parse_update(source: bytes, line: int) -> dict[str, Any]:
    # Update bodies are parsed by the coordinating node, so their errors fail the whole request.
    try:
        update = orjson.loads(source)
    except orjson.JSONDecodeError as exc:
        raise EsError(400, "x_content_parse_exception", f"[{line}:{exc.colno}] {exc.msg}") from None
    if type(update) is not dict:
        raise EsError(400, "x_content_parse_exception", f"[{line}:1] [UpdateRequest] Expected START_OBJECT")
    unknown = sorted(update.keys() - _UPDATE_FIELDS)
    if unknown:
        raise EsError(
            400, "x_content_parse_exception", f"[{line}:2] [UpdateRequest] unknown field [{unknown[0]}]"
        )
    return update


def _validate(actions: list[BulkAction]) -> None:
    errors: list[str] = []
    for a in actions:
        if not a.index:
            errors.append("index is missing")
        if a.doc_id is None:
            if a.op in ("delete", "update"):
                errors.append("id is missing")
        elif not a.doc_id:
            errors.append("if _id is specified it must not be empty")
        # UTF-8 takes at most 4 bytes a character, so short ids skip the encoding.
        elif len(a.doc_id) * 4 > MAX_ID_BYTES and len(a.doc_id.encode()) > MAX_ID_BYTES:
            errors.append(
                f"id [{a.doc_id}] is too long, must be no longer than {MAX_ID_BYTES} bytes but was: {len(a.doc_id.encode())}"
            )
        # isspace() stops at the first non-blank byte, where strip() would copy the whole source.
        if a.op in ("index", "create") and (not a.source or a.source.isspace()):
            errors.append("source is missing")
        if a.op == "create" and "if_seq_no" in a.meta:
            errors.append("create operations do not support compare and set. use index instead")
        if a.update is not None:
            if "script" in a.update:
                errors.append("localsink does not run scripts; send a partial [doc] update")
            elif "doc" not in a.update:
                errors.append("script or doc is missing")
    if not actions:
        errors.append("no requests added")
    if errors:
        reason = "Validation Failed: " + "".join(f"{n}: {e};" for n, e in enumerate(errors, 1))
        raise EsError(400, "action_request_validation_exception", reason)


def _prepare(a: BulkAction, faults: FaultInjector, rejected_429: bool) -> None:
    """Shard-side checks that need no index state, done before taking the store lock."""
    if rejected_429:
        a.error = (
            429,
            "es_rejected_execution_exception",
            "rejected execution of primary operation [coordinating_and_primary_bytes=0, replica_bytes=0] "
            "on EsThreadPoolExecutor[name = localsink/write, queue capacity = 10000] (injected by localsink)",
        )
        return
    bad_name = invalid_index_name(a.index or "")
    if bad_name:
        a.error = (400, "invalid_index_name_exception", bad_name)
        return
    if a.op in ("index", "create"):
        try:
            doc = orjson.loads(a.source or b"")
        except orjson.JSONDecodeError as exc:
            a.error = (400, "document_parsing_exception", f"[1:{exc.colno}] failed to parse: {exc.msg}")
            return
        if type(doc) is not dict:
            a.error = (
                400,
                "document_parsing_exception",
                "[1:1] failed to parse: Malformed content, must start with an object",
            )
            return
        if faults.rejects(doc):
            a.error = _rejected_reason(faults, doc, a.doc_id)
    elif a.op == "update" and a.update is not None:
        for part in ("doc", "upsert"):
            if part in a.update and type(a.update[part]) is not dict:
                a.error = (
                    400,
                    "document_parsing_exception",
                    f"[1:1] failed to parse: [{part}] must be an object",
                )
                return
            if faults.rejects(a.update.get(part)):
                a.error = _rejected_reason(faults, a.update[part], a.doc_id)
                return


def _rejected_reason(faults: FaultInjector, doc: dict[str, Any], doc_id: str | None) -> tuple[int, str, str]:
    field = faults.config.reject_field
    value = doc.get(field) if field in doc else "..."
    return (
        400,
        "document_parsing_exception",
        f"[1:1] failed to parse field [{field}] of type [long] in document with id '{doc_id}'. "
        f"Preview of field's value: '{value}' (rejected by localsink fault injection)",
    )


# A success item is the same JSON shape every time, so it is written from a template instead of
# building and serialising a dict per item. Key order is the one ES uses.
_OK_TEMPLATE = (
    b'{"%b":{"_index":%b,"_id":%b,"_version":%d,"result":"%b",'
    b'"_shards":{"total":2,"successful":1,"failed":0},"_seq_no":%d,"_primary_term":1,"status":%d}}'
)
assert orjson.dumps(SHARDS) == b'{"total":2,"successful":1,"failed":0}'  # the template inlines it


@functools.lru_cache(maxsize=1024)
def _json_str(value: str) -> bytes:
    # Index names repeat in every item of a request: encode each once.
    return orjson.dumps(value)


Item = tuple[int, bytes, bool]  # (item status, the item's encoded JSON, whether it failed)


def _ok(op: str, name: str, doc_id: str, doc: StoredDoc, result: str, status: int) -> Item:
    encoded = _OK_TEMPLATE % (
        op.encode(),
        _json_str(name),
        orjson.dumps(doc_id),
        doc.version,
        result.encode(),
        doc.seq_no,
        status,
    )
    return status, encoded, False


def _fail(
    op: str,
    name: str | None,
    doc_id: str | None,
    status: int,
    etype: str,
    reason: str,
    index: EsIndex | None = None,
) -> Item:
    error: dict[str, Any] = {"type": etype, "reason": reason}
    if index is not None:
        error.update(index_uuid=index.uuid, shard="0", index=index.name)
    elif name and etype == "index_not_found_exception":
        error.update(
            {"resource.type": "index_expression", "resource.id": name, "index_uuid": "_na_", "index": name}
        )
    return status, orjson.dumps({op: {"_index": name, "_id": doc_id, "status": status, "error": error}}), True


def _cas_conflict(a: BulkAction, index: EsIndex, doc_id: str) -> Item | None:
    if "if_seq_no" not in a.meta:
        return None
    want = a.meta["if_seq_no"]
    term = a.meta.get("if_primary_term", 1)
    current = index.docs.get(doc_id)
    if current is None:
        reason = f"[{doc_id}]: version conflict, required seqNo [{want}], primary term [{term}] but no document was found"
    elif current.seq_no != want or term != 1:
        reason = (
            f"[{doc_id}]: version conflict, required seqNo [{want}], primary term [{term}]. "
            f"current document has seqNo [{current.seq_no}] and primary term [1]"
        )
    else:
        return None
    return _fail(a.op, index.name, doc_id, 409, "version_conflict_engine_exception", reason, index)


def _merge(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    # Partial updates merge objects recursively and replace everything else, like ES.
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            target[key] = _merge(dict(target[key]), value)
        else:
            target[key] = value
    return target


def apply_action(a: BulkAction, store: SinkStore) -> Item:
    """Execute one prepared action; returns (item status, encoded item). The caller holds `store.lock`."""
    op = a.op
    name = a.index or ""
    if a.error is not None:
        status, etype, reason = a.error
        return _fail(op, a.index, a.doc_id, status, etype, reason, store.es_index(name))
    if op == "index":
        index = store.es_index(name, create=True)
        assert index is not None
        doc_id = a.doc_id or ""
        if "if_seq_no" in a.meta:  # checked here, as few requests compare-and-set
            conflict = _cas_conflict(a, index, doc_id)
            if conflict:
                return conflict
        created, doc = index.put(doc_id, a.source or b"")
        return _ok(op, name, doc_id, doc, "created" if created else "updated", 201 if created else 200)
    if op == "create":
        index = store.es_index(name, create=True)
        assert index is not None
        doc_id = a.doc_id or ""
        stored = index.create(doc_id, a.source or b"")
        if stored is None:
            current = index.docs[doc_id]
            reason = (
                f"[{doc_id}]: version conflict, document already exists (current version [{current.version}])"
            )
            return _fail(op, name, doc_id, 409, "version_conflict_engine_exception", reason, index)
        return _ok(op, name, doc_id, stored, "created", 201)
    doc_id = a.doc_id or ""
    if op == "delete":
        existing = store.es_index(name)
        if existing is None:
            return _fail(op, name, doc_id, 404, "index_not_found_exception", f"no such index [{name}]")
        conflict = _cas_conflict(a, existing, doc_id)
        if conflict:
            return conflict
        tombstone = existing.delete(doc_id)
        if tombstone is None:
            return _ok(op, name, doc_id, StoredDoc(b"", 1, existing.take_seq_no()), "not_found", 404)
        return _ok(op, name, doc_id, tombstone, "deleted", 200)
    return _apply_update(a, store, name, doc_id)


def _apply_update(a: BulkAction, store: SinkStore, name: str, doc_id: str) -> Item:
    update = a.update or {}
    index = store.es_index(name, create=True)
    assert index is not None
    current = index.docs.get(doc_id)
    patch = update.get("doc")
    if current is None:
        if update.get("doc_as_upsert") and patch is not None:
            new_doc = patch
        elif "upsert" in update:
            new_doc = update["upsert"]
        else:
            return _fail(
                "update",
                name,
                doc_id,
                404,
                "document_missing_exception",
                f"[{doc_id}]: document missing",
                index,
            )
        _, stored = index.put(doc_id, orjson.dumps(new_doc))
        return _ok("update", name, doc_id, stored, "created", 201)
    old = orjson.loads(current.source)
    merged = _merge(dict(old), patch or {})
    if merged == old and update.get("detect_noop", True):
        return _ok("update", name, doc_id, current, "noop", 200)
    _, stored = index.put(doc_id, orjson.dumps(merged))
    return _ok("update", name, doc_id, stored, "updated", 200)


@dataclass(slots=True)
class BulkResponse:
    """A `_bulk` reply whose items are already encoded JSON.

    Serialising ~1000 item dicts per request was a large share of the sink's time; the bytes are
    joined instead, and only the rare callers that need the document (`filter_path`, single-document
    APIs) decode it with `payload()`.
    """

    took: int
    errors: bool
    items: list[bytes]

    def encode(self) -> bytes:
        errors = b"true" if self.errors else b"false"
        return b'{"took":%d,"errors":%b,"items":[%b]}' % (self.took, errors, b",".join(self.items))

    def payload(self) -> dict[str, Any]:
        return orjson.loads(self.encode())


def bulk(
    body: bytes,
    default_index: str | None,
    store: SinkStore,
    faults: FaultInjector,
    default_pipeline: str | None = None,
) -> tuple[int, dict[str, Any] | BulkResponse]:
    """Handle one `_bulk` body; returns (HTTP status, error document or the encoded response).

    ``default_pipeline`` is the request's ``?pipeline=``; an action line's ``pipeline`` wins over it,
    and ``_none`` means no pipeline, as in Elasticsearch. Stored documents are counted per pipeline.
    """
    started = time.perf_counter()
    try:
        actions = parse_bulk(body, default_index)
    except EsError as exc:
        return exc.status, exc.payload()
    mask = faults.item_429_mask(len(actions))
    for n, action in enumerate(actions):
        _prepare(action, faults, bool(mask and mask[n]))
    statuses: list[int] = []
    items: list[bytes] = []
    errors = False
    with store.lock:  # once per request: the whole bulk is applied atomically
        for action in actions:
            status, item, failed = apply_action(action, store)
            statuses.append(status)
            items.append(item)
            errors = errors or failed
        # Counted once per request from plain lists (Counter counts in C), not per item.
        store.record_bulk(
            Counter(statuses),
            Counter([a.op for a in actions]),
            _pipelines(actions, statuses, default_pipeline),
        )
    took = int((time.perf_counter() - started) * 1000)
    return 200, BulkResponse(took, errors, items)


def _pipelines(
    actions: list[BulkAction], statuses: list[int], default_pipeline: str | None
) -> Counter[tuple[str, str]] | None:
    """(pipeline, index) of each document stored through an ingest pipeline."""
    if default_pipeline is None and not any("pipeline" in a.meta for a in actions):
        return None  # the common case: no pipeline anywhere, nothing to count
    counted: Counter[tuple[str, str]] = Counter()
    for action, status in zip(actions, statuses, strict=True):
        pipeline = action.meta.get("pipeline", default_pipeline)
        if action.op in ("index", "create") and 200 <= status < 300 and pipeline and pipeline != "_none":
            counted[(str(pipeline), action.index or "")] += 1
    return counted
