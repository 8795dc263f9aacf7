"""Thread-safe in-memory state: Elasticsearch indices, HEC events, indexer acks and the counters.

One lock guards everything. Handlers parse and validate outside it and hold it only to apply a whole
request, so a bulk request is applied atomically with respect to counts and stats readers.
"""

import itertools
import threading
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class StoredDoc:
    source: bytes
    version: int
    seq_no: int


class EsIndex:
    """One index: documents by `_id`, with per-document versions and a per-index sequence number."""

    __slots__ = ("docs", "name", "next_seq_no", "uuid")

    def __init__(self, name: str) -> None:
        self.name = name
        self.uuid = uuid.uuid4().hex[:22]
        self.docs: dict[str, StoredDoc] = {}
        self.next_seq_no = 0

    def take_seq_no(self) -> int:
        seq_no = self.next_seq_no
        self.next_seq_no += 1
        return seq_no

    def put(self, doc_id: str, source: bytes) -> tuple[bool, StoredDoc]:
        """Index (add or replace). Returns (created, stored document)."""
        docs = self.docs
        old = docs.get(doc_id)
        seq_no = self.next_seq_no  # take_seq_no() inlined: this runs once per indexed document
        self.next_seq_no = seq_no + 1
        doc = docs[doc_id] = StoredDoc(source, 1 if old is None else old.version + 1, seq_no)
        return old is None, doc

    def create(self, doc_id: str, source: bytes) -> StoredDoc | None:
        """Add only if absent; None means the id exists (a version conflict for the caller)."""
        if doc_id in self.docs:
            return None
        doc = StoredDoc(source, 1, self.take_seq_no())
        self.docs[doc_id] = doc
        return doc

    def delete(self, doc_id: str) -> StoredDoc | None:
        """Remove; returns the tombstone (version + 1, new seq_no) or None when the id was absent."""
        old = self.docs.pop(doc_id, None)
        if old is None:
            return None
        return StoredDoc(b"", old.version + 1, self.take_seq_no())

    def __len__(self) -> int:
        return len(self.docs)


class SinkStore:
    """Everything the server accepted, plus counters for `/_localsink/stats`."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.indices: dict[str, EsIndex] = {}
            self.hec_events: dict[str, list[dict[str, Any]]] = {}
            self._ack_next: dict[str, int] = {}
            self._ack_pending: dict[str, set[int]] = {}
            self.http_requests = 0
            self.bytes_received = 0
            self.bytes_decoded = 0
            self.responses_by_status: Counter[int] = Counter()
            self.bulk_requests = 0
            self.items_by_status: Counter[int] = Counter()
            self.items_by_op: Counter[str] = Counter()
            # (ingest pipeline, index) -> documents stored through it: no pipeline runs here, but a
            # test can see which pipeline each request or action line named for which index.
            self.docs_by_pipeline: Counter[tuple[str, str]] = Counter()
            self.hec_requests = 0
            self.hec_responses_by_code: Counter[int] = Counter()
            self.generic_records: dict[str, list[Any]] = {}

    # --- Elasticsearch -------------------------------------------------------------------------

    def es_index(self, name: str, create: bool = False) -> EsIndex | None:
        """Caller holds `lock` when it goes on to mutate the index."""
        index = self.indices.get(name)
        if index is None and create:
            index = self.indices[name] = EsIndex(name)
        return index

    def es_delete_index(self, name: str) -> bool:
        with self.lock:
            return self.indices.pop(name, None) is not None

    def es_count(self, name: str) -> int | None:
        with self.lock:
            index = self.indices.get(name)
            return None if index is None else len(index)

    def es_ids(self, name: str) -> list[str] | None:
        with self.lock:
            index = self.indices.get(name)
            return None if index is None else list(index.docs)

    def es_sources(self, name: str, limit: int | None = None) -> list[tuple[str, bytes]] | None:
        with self.lock:
            index = self.indices.get(name)
            if index is None:
                return None
            items = list(index.docs.items())
        if limit is not None:
            items = items[:limit]
        return [(doc_id, doc.source) for doc_id, doc in items]

    def es_sources_after(self, name: str, offset: int) -> list[bytes]:
        """Sources of the documents first indexed after the first ``offset`` (in order of arrival).

        For watchers that poll often (bench.freshness): each poll reads only what is new.
        """
        with self.lock:
            index = self.indices.get(name)
            if index is None:
                return []
            return [doc.source for doc in itertools.islice(index.docs.values(), offset, None)]

    def record_bulk(
        self, statuses: Counter[int], ops: Counter[str], pipelines: Counter[tuple[str, str]] | None = None
    ) -> None:
        with self.lock:
            self.bulk_requests += 1
            self.items_by_status.update(statuses)
            self.items_by_op.update(ops)
            if pipelines:
                self.docs_by_pipeline.update(pipelines)

    def es_pipelines(self) -> dict[str, dict[str, int]]:
        """Per ingest pipeline, the documents stored through it per index."""
        with self.lock:
            out: dict[str, dict[str, int]] = {}
            for (pipeline, index), n in sorted(self.docs_by_pipeline.items()):
                out.setdefault(pipeline, {})[index] = n
            return out

    # --- Splunk HEC ----------------------------------------------------------------------------

    def hec_add(self, events: list[tuple[str, dict[str, Any]]]) -> None:
        with self.lock:
            hec_events = self.hec_events
            last_index: str | None = None
            bucket: list[dict[str, Any]] = []
            for index, event in events:
                if index != last_index:  # batches usually go to one index: look it up once
                    bucket = hec_events.get(index)
                    if bucket is None:
                        bucket = hec_events[index] = []
                    last_index = index
                bucket.append(event)

    def generic_add(self, collection: str, records: list[Any]) -> None:
        with self.lock:
            self.generic_records.setdefault(collection, []).extend(records)

    def generic_list(self, collection: str) -> list[Any]:
        with self.lock:
            return list(self.generic_records.get(collection, ()))

    def hec_count(self, index: str) -> int:
        with self.lock:
            return len(self.hec_events.get(index, ()))

    def hec_list(self, index: str, limit: int | None = None, offset: int = 0) -> list[dict[str, Any]] | None:
        with self.lock:
            bucket = self.hec_events.get(index)
            if bucket is None:
                return None
            return list(bucket[offset:] if limit is None else bucket[offset : offset + limit])

    def record_hec(self, code: int) -> None:
        with self.lock:
            self.hec_requests += 1
            self.hec_responses_by_code[code] += 1

    def issue_ack(self, channel: str) -> int:
        # Events are stored before the response is sent, so an ack id is "indexed" as soon as it exists.
        with self.lock:
            ack_id = self._ack_next.get(channel, 0)
            self._ack_next[channel] = ack_id + 1
            self._ack_pending.setdefault(channel, set()).add(ack_id)
            return ack_id

    def query_acks(self, channel: str, ack_ids: list[int]) -> dict[str, bool]:
        """True once per issued id, then the id is forgotten, as Splunk releases acks it has reported."""
        with self.lock:
            pending = self._ack_pending.get(channel, set())
            result: dict[str, bool] = {}
            for ack_id in ack_ids:
                result[str(ack_id)] = ack_id in pending
            pending.difference_update(ack_ids)
            return result

    # --- HTTP ----------------------------------------------------------------------------------

    def record_http(self, raw_bytes: int, decoded_bytes: int, status: int) -> None:
        with self.lock:
            self.http_requests += 1
            self.bytes_received += raw_bytes
            self.bytes_decoded += decoded_bytes
            self.responses_by_status[status] += 1

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "es": {
                    "indices": {name: len(index) for name, index in sorted(self.indices.items())},
                    "docs": sum(len(index) for index in self.indices.values()),
                    "bulk_requests": self.bulk_requests,
                    "items_by_status": {str(k): v for k, v in sorted(self.items_by_status.items())},
                    "items_by_op": dict(sorted(self.items_by_op.items())),
                    "pipelines": {
                        f"{pipeline}/{index}": n
                        for (pipeline, index), n in sorted(self.docs_by_pipeline.items())
                    },
                },
                "hec": {
                    "indices": {name: len(events) for name, events in sorted(self.hec_events.items())},
                    "events": sum(len(events) for events in self.hec_events.values()),
                    "requests": self.hec_requests,
                    "responses_by_code": {str(k): v for k, v in sorted(self.hec_responses_by_code.items())},
                },
                "generic": {name: len(records) for name, records in sorted(self.generic_records.items())},
                "http": {
                    "requests": self.http_requests,
                    "bytes_received": self.bytes_received,
                    "bytes_decoded": self.bytes_decoded,
                    "responses_by_status": {str(k): v for k, v in sorted(self.responses_by_status.items())},
                },
            }
