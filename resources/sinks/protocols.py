"""Wire protocols: how records become a request body and how a response settles each record."""

from dataclasses import dataclass, field
from urllib.parse import quote

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from resources.sinks.records import ArrowRecords, Record, join_columns
from resources.sinks.settings import SinkSettings

__all__ = ["ArrowRecords", "Record"]


@dataclass
class Rejection:
    record: Record
    status: int | None
    error_type: str
    reason: str


@dataclass
class Settlement:
    """How one 2xx response settled the records of its request."""

    accepted: int = 0
    retry: list[Record] = field(default_factory=list)
    retry_reasons: list[str] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)


class ElasticsearchBulk:
    """`POST /_bulk` with NDJSON action+source pairs; every item of a 200 is read, in request order."""

    content_type = "application/x-ndjson"

    def __init__(self, settings: SinkSettings) -> None:
        if not settings.index:
            raise ValueError(f"sink {settings.name!r}: an Elasticsearch index is required")
        # A pipeline name may hold characters a query string must escape ("&", " ", "#").
        self.path = "/_bulk" + (f"?pipeline={quote(settings.pipeline, safe='')}" if settings.pipeline else "")
        self.op_type = settings.op_type
        self._action_prefix = (
            b'{"' + settings.op_type.encode() + b'":{"_index":' + orjson.dumps(settings.index) + b',"_id":'
        )

    def encode(self, records: list[Record] | ArrowRecords) -> bytes:
        if isinstance(records, ArrowRecords) and records.ids_are_plain():
            return join_columns(self._action_prefix + b'"', records.ids, b'"}}\n', records.docs, b"\n")
        prefix = self._action_prefix
        dumps = orjson.dumps  # ids taken from a field may need JSON escaping; hashes cost the same
        parts = []
        for r in records:
            parts.append(prefix + dumps(r.id) + b"}}\n" + r.doc + b"\n")
        return b"".join(parts)

    def record_size(self, record: Record) -> int:
        return len(self._action_prefix) + len(record.id) + len(record.doc) + 6

    def overhead(self, records: ArrowRecords) -> np.ndarray:
        """Bytes each record adds beside its document (the action line)."""
        return len(self._action_prefix) + 6 + pc.binary_length(records.ids).to_numpy(zero_copy_only=False)

    def settle(self, records: list[Record], body: bytes) -> Settlement:
        response = orjson.loads(body)
        settlement = Settlement()
        if not response.get("errors"):
            settlement.accepted = len(records)
            return settlement
        items = response.get("items") or []
        if len(items) != len(records):
            raise ValueError(f"_bulk answered {len(items)} items for {len(records)} actions")
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
                settlement.retry.append(record)
                settlement.retry_reasons.append(f"{status} {error.get('type', '')}".strip())
            else:
                settlement.rejected.append(
                    Rejection(record, status, str(error.get("type", "")), str(error.get("reason", ""))[:2000])
                )
        return settlement


class SplunkHec:
    """`POST /services/collector/event` with concatenated JSON envelopes; HEC has no ids (at-least-once)."""

    content_type = "application/json"
    path = "/services/collector/event"

    def __init__(self, settings: SinkSettings) -> None:
        meta = {
            k: v
            for k, v in (
                ("index", settings.index),
                ("source", settings.hec_source),
                ("sourcetype", settings.hec_sourcetype),
                ("host", settings.hec_host),
            )
            if v
        }
        self._meta = orjson.dumps(meta)[1:-1] + b"," if meta else b""

    def encode(self, records: list[Record] | ArrowRecords) -> bytes:
        if isinstance(records, ArrowRecords):
            # Arrow's shortest round-trip float formatting, as repr() does.
            head = pc.if_else(
                pc.is_null(records.times),
                pa.scalar(b"{", pa.binary()),
                pc.binary_join_element_wise(
                    b'{"time":', records.times.cast(pa.string()).cast(pa.binary()), b",", b""
                ),
            )
            return join_columns(head, self._meta + b'"event":', records.docs, b"}\n")
        meta = self._meta
        parts = []
        for r in records:
            head = b'{"time":' + repr(r.time).encode() + b"," if r.time is not None else b"{"
            parts.append(head + meta + b'"event":' + r.doc + b"}\n")
        return b"".join(parts)

    def record_size(self, record: Record) -> int:
        return len(self._meta) + len(record.doc) + 40

    def overhead(self, records: ArrowRecords) -> np.ndarray:
        return np.full(len(records), len(self._meta) + 40, dtype=np.int64)

    def settle(self, records: list[Record], body: bytes) -> Settlement:
        # A 2xx from HEC accepts the whole request.
        return Settlement(accepted=len(records))

    def settle_invalid(self, records: list[Record], body: bytes) -> Settlement | None:
        """Code 6 names the first bad event: the ones before it were indexed, the rest can be resent."""
        try:
            answer = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        bad = answer.get("invalid-event-number")
        if answer.get("code") != 6 or not isinstance(bad, int) or not 0 <= bad < len(records):
            return None
        return Settlement(
            accepted=bad,
            retry=records[bad + 1 :],
            retry_reasons=["after an invalid event"] * (len(records) - bad - 1),
            rejected=[Rejection(records[bad], 400, "invalid_data_format", str(answer.get("text", "")))],
        )


class GenericRest:
    """Any REST API taking many records per call: a JSON array or NDJSON body; success is the HTTP status."""

    def __init__(self, settings: SinkSettings) -> None:
        self.path = settings.generic_path
        self.ndjson = settings.generic_format == "ndjson"
        if settings.generic_format not in ("json_array", "ndjson"):
            raise ValueError(
                f"sink {settings.name!r}: body format {settings.generic_format!r} is unknown; "
                f"use 'json_array' or 'ndjson'"
            )
        self.content_type = "application/x-ndjson" if self.ndjson else "application/json"
        self.success = frozenset(settings.generic_success_statuses)

    def encode(self, records: list[Record] | ArrowRecords) -> bytes:
        if isinstance(records, ArrowRecords):
            if self.ndjson:
                return join_columns(records.docs, b"\n")
            return b"[" + join_columns(records.docs, b",")[:-1] + b"]"
        if self.ndjson:
            return b"\n".join(r.doc for r in records) + b"\n"
        return b"[" + b",".join(r.doc for r in records) + b"]"

    def record_size(self, record: Record) -> int:
        return len(record.doc) + 1

    def overhead(self, records: ArrowRecords) -> np.ndarray:
        return np.ones(len(records), dtype=np.int64)

    def settle(self, records: list[Record], body: bytes) -> Settlement:
        return Settlement(accepted=len(records))


Protocol = ElasticsearchBulk | SplunkHec | GenericRest


def protocol_for(settings: SinkSettings) -> Protocol:
    if settings.kind == "elasticsearch":
        return ElasticsearchBulk(settings)
    if settings.kind == "splunk_hec":
        return SplunkHec(settings)
    if settings.kind == "generic":
        return GenericRest(settings)
    raise ValueError(f"unknown sink kind {settings.kind!r}: use 'elasticsearch', 'splunk_hec' or 'generic'")
