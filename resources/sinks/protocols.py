"""Wire protocols: how records become a request body and how a response settles each record."""

from dataclasses import dataclass, field

import orjson

from resources.sinks.settings import SinkSettings


@dataclass(frozen=True)
class Record:
    """One document to post: a deterministic id, its JSON bytes, and an event time (epoch seconds)."""

    id: str
    doc: bytes
    time: float | None = None


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
        self.path = "/_bulk" + (f"?pipeline={settings.pipeline}" if settings.pipeline else "")
        self.op_type = settings.op_type
        # Ids are hex digests computed in Spark, so they need no JSON escaping.
        self._action_prefix = (
            b'{"' + settings.op_type.encode() + b'":{"_index":' + orjson.dumps(settings.index) + b',"_id":"'
        )

    def encode(self, records: list[Record]) -> bytes:
        prefix = self._action_prefix
        parts = []
        for r in records:
            parts.append(prefix + r.id.encode() + b'"}}\n' + r.doc + b"\n")
        return b"".join(parts)

    def record_size(self, record: Record) -> int:
        return len(self._action_prefix) + len(record.id) + len(record.doc) + 6

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

    def encode(self, records: list[Record]) -> bytes:
        meta = self._meta
        parts = []
        for r in records:
            head = b'{"time":' + repr(r.time).encode() + b"," if r.time is not None else b"{"
            parts.append(head + meta + b'"event":' + r.doc + b"}\n")
        return b"".join(parts)

    def record_size(self, record: Record) -> int:
        return len(self._meta) + len(record.doc) + 40

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


def protocol_for(settings: SinkSettings) -> ElasticsearchBulk | SplunkHec:
    if settings.kind == "elasticsearch":
        return ElasticsearchBulk(settings)
    if settings.kind == "splunk_hec":
        return SplunkHec(settings)
    raise ValueError(f"unknown sink kind {settings.kind!r}: use 'elasticsearch' or 'splunk_hec'")
