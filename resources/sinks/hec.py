"""Splunk HEC ``POST /services/collector/event``: concatenated JSON envelopes, no ids (at-least-once).

With indexer acknowledgement on, a 200 only means "parsed": records count as accepted once
``/services/collector/ack`` reports their ack id true, and are resent when that does not happen in time.
"""

import time
import uuid
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import orjson
import pyarrow as pa
import requests

from resources.arrow import pc
from resources.sinks.errors import SinkConfigError
from resources.sinks.protocols import Post, Records, Rejection, Settlement, SinkProtocol
from resources.sinks.records import FIELDS_COLUMN, ArrowRecords, Record, join_columns
from resources.sinks.settings import SinkSettings
from resources.sinks.template import is_template

ACK_PATH = "/services/collector/ack"


@dataclass(frozen=True)
class HecSettings:
    """Same names as ``SplunkHecSinkResource``'s fields, which hold the defaults and descriptions."""

    kind: ClassVar[str] = "splunk_hec"
    # Settings that may be templates, and the per-record column each then comes from.
    per_record_columns: ClassVar[dict[str, str]] = {
        "index": "_hec_index",
        "source": "_source",
        "sourcetype": "_sourcetype",
        "host": "_host",
    }
    index: str | None
    source: str | None
    sourcetype: str | None
    host: str | None
    fields: tuple[str, ...]  # columns sent as indexed fields (the per-record ``_fields`` object)
    ack: bool
    ack_timeout_s: float
    ack_poll_interval_s: float

    def open(self, sink: SinkSettings) -> "SplunkHec":
        return SplunkHec(sink, self)


class SplunkHec(SinkProtocol):
    kind = "splunk_hec"
    path = "/services/collector/event"

    def __init__(self, sink: SinkSettings, options: HecSettings) -> None:
        super().__init__(sink)
        self.options = options
        for name in HecSettings.per_record_columns:
            if is_template(getattr(options, name)):
                raise SinkConfigError(
                    f"sink {sink.sink_name!r}: the {name} {getattr(options, name)!r} is a template that was not "
                    f"resolved for this run; post through the post job (or pipelines.post.destination."
                    f"plan_destination), which evaluates it"
                )
        meta = {
            k: v
            for k, v in (
                ("index", options.index),
                ("source", options.source),
                ("sourcetype", options.sourcetype),
                ("host", options.host),
            )
            if v
        }
        self._meta = orjson.dumps(meta)[1:-1] + b"," if meta else b""
        # Per record, after the static keys: (envelope key, column), in a fixed order.
        per_record = {column for column, _ in sink.per_record}
        self._per_record = [
            (key.encode(), column)
            for key, column in (*HecSettings.per_record_columns.items(), ("fields", FIELDS_COLUMN))
            if column in per_record
        ]
        # One channel per writer (a protocol object is made per writer): acks are tracked per channel.
        self.channel = str(uuid.uuid4())

    def headers(self) -> dict[str, str]:
        return {"X-Splunk-Request-Channel": self.channel}

    def encode(self, records: Records) -> bytes:
        if isinstance(records, ArrowRecords) and (not self._per_record or records.destination_is_plain()):
            # Arrow's shortest round-trip float formatting, as repr() does.
            head = pc.if_else(
                pc.is_null(records.times),
                pa.scalar(b"{", pa.binary()),
                pc.binary_join_element_wise(
                    b'{"time":', records.times.cast(pa.string()).cast(pa.binary()), b",", b""
                ),
            )
            if not self._per_record:
                return join_columns(head, self._meta + b'"event":', records.docs, b"}\n")
            return join_columns(head, self._meta, *self._per_record_parts(records), records.docs, b"}\n")
        meta = self._meta
        parts = []
        for r in records:
            head = b'{"time":' + repr(r.time).encode() + b"," if r.time is not None else b"{"
            if self._per_record:
                head += meta + self._per_record_meta(r)
            else:
                head += meta
            parts.append(head + b'"event":' + r.doc + b"}\n")
        return b"".join(parts)

    def _per_record_parts(self, records: ArrowRecords) -> list:
        """``"key":"value",`` per record for each per-record key (values plain), then ``"event":``."""
        parts: list = []
        for key, column in self._per_record:
            if column == FIELDS_COLUMN:  # a JSON object already
                parts += [b'"' + key + b'":', records.destination[column], b","]
            else:
                parts += [b'"' + key + b'":"', records.destination[column], b'",']
        return [*parts, b'"event":']

    def _per_record_meta(self, r: Record) -> bytes:
        destination = r.destination or {}
        out = b""
        for key, column in self._per_record:
            value = destination.get(column)
            if column == FIELDS_COLUMN:
                encoded = value if isinstance(value, bytes) else (value or "{}").encode()
            else:
                encoded = orjson.dumps(value)
            out += b'"' + key + b'":' + encoded + b","
        return out

    def overhead(self, records: ArrowRecords) -> np.ndarray:
        sizes = np.full(len(records), len(self._meta) + 40, dtype=np.int64)
        for _, column in self._per_record:
            sizes = sizes + 16 + pc.binary_length(records.destination[column]).to_numpy(zero_copy_only=False)
        return sizes

    def settle_refusal(self, records: Records, status: int, body: bytes) -> Settlement | None:
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
            problem="resending after an invalid event",
        )

    def confirm(self, records: Records, body: bytes, settled: Settlement, post: Post) -> Settlement:
        """Poll ``/ack`` until Splunk says the request is indexed; resend it when the ack times out."""
        if not self.options.ack:
            return settled
        s, o = self.sink, self.options
        try:
            ack_id = orjson.loads(body).get("ackId")
        except (orjson.JSONDecodeError, AttributeError):
            ack_id = None
        if not isinstance(ack_id, int):
            raise SinkConfigError(
                f"sink {s.sink_name!r}: ack (indexer acknowledgement) is on but {s.url} answered without an "
                f"ackId. Enable indexer acknowledgement on the HEC token, or set the sink's ack to false."
            )
        deadline = time.monotonic() + o.ack_timeout_s
        while True:
            try:
                answer = post(ACK_PATH, orjson.dumps({"acks": [ack_id]}))
                if answer.status_code == 200 and answer.json().get("acks", {}).get(str(ack_id)):
                    return Settlement(accepted=len(records))
            except (requests.ConnectionError, requests.Timeout, ValueError):
                pass  # polling again is harmless; the deadline bounds it
            if time.monotonic() >= deadline:
                return Settlement(
                    retry=records,
                    retry_reasons=[f"no HEC ack {ack_id} within {o.ack_timeout_s}s"],
                    ack_timeouts=1,
                )
            time.sleep(o.ack_poll_interval_s)
