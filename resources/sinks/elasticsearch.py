"""Elasticsearch/OpenSearch ``POST /_bulk``: NDJSON action+source pairs; every item of a 200 is read."""

from dataclasses import dataclass
from typing import ClassVar
from urllib.parse import quote

import numpy as np
import orjson

from resources.arrow import pc
from resources.sinks.errors import SinkConfigError
from resources.sinks.protocols import Records, Rejection, Settlement, SinkProtocol
from resources.sinks.records import ArrowRecords, Record, join_columns
from resources.sinks.settings import SinkSettings
from resources.sinks.template import is_template


@dataclass(frozen=True)
class ElasticsearchSettings:
    """Same names as ``ElasticsearchSinkResource``'s fields, which hold the defaults and descriptions."""

    kind: ClassVar[str] = "elasticsearch"
    # Settings that may be templates, and the per-record column each then comes from.
    per_record_columns: ClassVar[dict[str, str]] = {"index": "_index", "pipeline": "_pipeline"}
    index: str | None  # None when it comes per record (``_index``)
    op_type: str
    pipeline: str | None

    def open(self, sink: SinkSettings) -> "ElasticsearchBulk":
        return ElasticsearchBulk(sink, self)


class ElasticsearchBulk(SinkProtocol):
    kind = "elasticsearch"
    content_type = "application/x-ndjson"

    def __init__(self, sink: SinkSettings, options: ElasticsearchSettings) -> None:
        super().__init__(sink)
        per_record = {column for column, _ in sink.per_record}
        for name in ("index", "pipeline"):
            if is_template(getattr(options, name)):
                raise SinkConfigError(
                    f"sink {sink.sink_name!r}: the {name} {getattr(options, name)!r} is a template that was not "
                    f"resolved for this run; post through the post job (or pipelines.post.destination."
                    f"plan_destination), which evaluates it"
                )
        self.per_record_index = "_index" in per_record
        self.per_record_pipeline = "_pipeline" in per_record
        if not options.index and not self.per_record_index:
            raise ValueError(f"sink {sink.sink_name!r}: an Elasticsearch index is required")
        # A pipeline name may hold characters a query string must escape ("&", " ", "#").
        self.path = "/_bulk" + (f"?pipeline={quote(options.pipeline, safe='')}" if options.pipeline else "")
        self.op_type = options.op_type
        self._action_prefix = (
            b'{"' + options.op_type.encode() + b'":{"_index":' + orjson.dumps(options.index) + b',"_id":'
        )
        self._op_prefix = b'{"' + options.op_type.encode() + b'":{"_index":'
        self._templated = self.per_record_index or self.per_record_pipeline

    def encode(self, records: Records) -> bytes:
        if not self._templated:
            if isinstance(records, ArrowRecords) and records.ids_are_plain():
                return join_columns(self._action_prefix + b'"', records.ids, b'"}}\n', records.docs, b"\n")
            prefix = self._action_prefix
            dumps = orjson.dumps  # ids taken from a field may need JSON escaping; hashes cost the same
            parts = []
            for r in records:
                parts.append(prefix + dumps(r.id) + b"}}\n" + r.doc + b"\n")
            return b"".join(parts)
        if isinstance(records, ArrowRecords) and records.ids_are_plain() and records.destination_is_plain():
            return join_columns(*self._templated_action(records), b"}}\n", records.docs, b"\n")
        return b"".join(self._templated_line(r) for r in records)

    def _templated_action(self, records: ArrowRecords) -> list:
        """The action line's parts, per record where the destination is (every value plain)."""
        if self.per_record_index:
            parts = [self._op_prefix + b'"', records.destination["_index"], b'","_id":"', records.ids, b'"']
        else:
            parts = [self._action_prefix + b'"', records.ids, b'"']
        if self.per_record_pipeline:
            parts += [b',"pipeline":"', records.destination["_pipeline"], b'"']
        return parts

    def _templated_line(self, r: Record) -> bytes:
        dumps, destination = orjson.dumps, r.destination or {}
        if self.per_record_index:
            head = self._op_prefix + dumps(destination.get("_index")) + b',"_id":'
        else:
            head = self._action_prefix
        head += dumps(r.id)
        if self.per_record_pipeline:
            head += b',"pipeline":' + dumps(destination.get("_pipeline"))
        return head + b"}}\n" + r.doc + b"\n"

    def overhead(self, records: ArrowRecords) -> np.ndarray:
        """The action line of each record."""
        sizes = len(self._action_prefix) + 6 + pc.binary_length(records.ids).to_numpy(zero_copy_only=False)
        for column in ("_index", "_pipeline"):
            if column in records.destination:
                sizes = (
                    sizes + 16 + pc.binary_length(records.destination[column]).to_numpy(zero_copy_only=False)
                )
        return sizes

    def settle(self, records: Records, body: bytes) -> Settlement:
        settlement = Settlement()
        if _no_errors(body):
            settlement.accepted = len(records)
            return settlement
        response = orjson.loads(body)
        if not response.get("errors"):
            settlement.accepted = len(records)
            return settlement
        items = response.get("items") or []
        if len(items) != len(records):
            raise ValueError(f"_bulk answered {len(items)} items for {len(records)} actions")
        retry: list[Record] = []
        for record, item in zip(records, items, strict=True):
            result = next(iter(item.values()))
            status = int(result.get("status", 0))
            error = result.get("error") or {}
            if 200 <= status < 300:
                settlement.accepted += 1
            elif status == 409 and self.op_type == "create":
                # Same deterministic id already indexed by an earlier attempt: the record is there.
                settlement.accepted += 1
            elif status == 429 or status >= 500:
                retry.append(record)
                settlement.retry_reasons.append(f"{status} {error.get('type', '')}".strip())
            else:
                settlement.rejected.append(
                    Rejection(record, status, str(error.get("type", "")), str(error.get("reason", ""))[:2000])
                )
        settlement.retry = retry
        return settlement


def _no_errors(body: bytes) -> bool:
    """True when a ``_bulk`` reply says ``"errors":false`` among its top-level keys, before ``items``.

    Elasticsearch and OpenSearch write ``took``, ``errors`` (and ``ingest_took``) before ``items``, so
    the answer is in the first bytes; parsing the whole reply (about 150 bytes per item) only to read
    that flag was the largest share of the post stage's Python CPU. Anything else, including another
    spelling, gets the full parse: this is a shortcut, never a different answer.
    """
    head = body[:96]
    flag, items = head.find(b'"errors":false'), head.find(b'"items"')
    return flag > 0 and (items < 0 or flag < items)
