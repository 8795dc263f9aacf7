"""Any REST API taking many records per call: a JSON array or NDJSON body; success is the HTTP status.

There is no per-item answer, so a call is all-or-nothing: a success status accepts every record;
408/429/5xx resend the call; 413, 400, 409 and 422 halve it until the refused records stand alone.
"""

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from resources.sinks.protocols import Records, SinkProtocol
from resources.sinks.records import ArrowRecords, join_columns
from resources.sinks.settings import SinkSettings

# Statuses with which an API that has no per-item answers refuses the records of a call.
RECORD_STATUS = frozenset({400, 409, 422})


@dataclass(frozen=True)
class GenericSettings:
    """Same names as ``GenericRestSinkResource``'s fields, which hold the defaults and descriptions."""

    kind: ClassVar[str] = "generic"
    path: str
    method: str
    body_format: str  # "json_array" | "ndjson"
    success_statuses: tuple[int, ...]

    def open(self, sink: SinkSettings) -> "GenericRest":
        return GenericRest(sink, self)


class GenericRest(SinkProtocol):
    kind = "generic"

    def __init__(self, sink: SinkSettings, options: GenericSettings) -> None:
        super().__init__(sink)
        if options.body_format not in ("json_array", "ndjson"):
            raise ValueError(
                f"sink {sink.sink_name!r}: body format {options.body_format!r} is unknown; "
                f"use 'json_array' or 'ndjson'"
            )
        self.path = options.path
        self.method = options.method
        self.ndjson = options.body_format == "ndjson"
        self.content_type = "application/x-ndjson" if self.ndjson else "application/json"
        self.success = frozenset(options.success_statuses)

    def encode(self, records: Records) -> bytes:
        if isinstance(records, ArrowRecords):
            if self.ndjson:
                return join_columns(records.docs, b"\n")
            return b"[" + join_columns(records.docs, b",")[:-1] + b"]"
        if self.ndjson:
            return b"\n".join(r.doc for r in records) + b"\n"
        return b"[" + b",".join(r.doc for r in records) + b"]"

    def overhead(self, records: ArrowRecords) -> np.ndarray:
        return np.ones(len(records), dtype=np.int64)

    def is_success(self, status: int) -> bool:
        return status in self.success

    def splits(self, status: int) -> bool:
        # Refused as a whole by an API without per-item answers: halving finds the records to blame.
        return status == 413 or status in RECORD_STATUS
