"""Records as the writer sees them: Arrow column slices (`ArrowRecords`), and one at a time (`Record`).

A writer is fed Arrow only: calls are cut and encoded with Arrow compute, no Python loop per record.
A Spark task hands the writer Arrow batches of ``_id`` (string), ``_doc`` (JSON bytes made by Spark)
and ``_time`` (epoch seconds). ``ArrowRecords`` is a slice of those columns that behaves like a
sequence of ``Record`` (length, slicing, iteration), so the retry, split and dead-letter paths work
on it unchanged (a per-item retry is a list of ``Record``), while the common path — encode, post, all accepted — never builds a Python object
per record.

A run whose destination is a template (``pipelines/post/destination.py``) adds per-record columns
(``_index``, ``_sourcetype``, ...): ``destination`` carries them through the same slicing, iteration,
retries and dead letters; without them everything is as before, at the same cost.
"""

from collections.abc import Iterator, Mapping
from typing import NamedTuple, overload

import numpy as np
import pyarrow as pa

from resources.arrow import pc


class Record(NamedTuple):
    """One document to post: a deterministic id, its JSON bytes, and an event time (epoch seconds).

    A named tuple, not a frozen dataclass: a task makes one per record, and this is ~8x cheaper.
    """

    id: str
    doc: bytes
    time: float | None = None
    destination: Mapping[str, str | None] | None = None  # per-record destination columns, if any


class ArrowRecords:
    def __init__(
        self,
        ids: pa.Array,
        docs: pa.Array,
        times: pa.Array,
        destination: Mapping[str, pa.Array] | None = None,
    ) -> None:
        self.ids = ids
        self.docs = docs
        self.times = times
        self.destination: dict[str, pa.Array] = dict(destination or {})

    def __len__(self) -> int:
        return len(self.docs)

    @overload
    def __getitem__(self, index: int) -> Record: ...
    @overload
    def __getitem__(self, index: slice) -> "ArrowRecords": ...
    def __getitem__(self, index: slice | int) -> "ArrowRecords | Record":
        if isinstance(index, int):  # one record, e.g. the event HEC names as invalid
            position = range(len(self))[index]
            record_id = self.ids[position].as_py()
            destination = {k: v[position].as_py() for k, v in self.destination.items()} or None
            return Record(
                record_id or "", self.docs[position].as_py(), self.times[position].as_py(), destination
            )
        if not isinstance(index, slice) or index.step not in (None, 1):
            raise TypeError("ArrowRecords supports an index or contiguous slices only")
        start, stop, _ = index.indices(len(self))
        n = max(0, stop - start)
        return ArrowRecords(
            self.ids.slice(start, n),
            self.docs.slice(start, n),
            self.times.slice(start, n),
            {k: v.slice(start, n) for k, v in self.destination.items()},
        )

    def __iter__(self) -> Iterator[Record]:
        ids = self.ids.to_pylist()
        if self.destination:
            names = list(self.destination)
            rows = zip(*(self.destination[k].to_pylist() for k in names), strict=True)
            destinations = (dict(zip(names, row, strict=True)) for row in rows)
        else:
            destinations = (None for _ in ids)
        for record_id, doc, when, destination in zip(
            ids, self.docs.to_pylist(), self.times.to_pylist(), destinations, strict=True
        ):
            yield Record(record_id or "", doc, when, destination)

    def concat(self, other: "ArrowRecords") -> "ArrowRecords":
        """These records, then ``other``'s (same destination columns), as one slice."""
        return ArrowRecords(
            pa.concat_arrays([self.ids, other.ids.cast(self.ids.type)]),
            pa.concat_arrays([self.docs, other.docs.cast(self.docs.type)]),
            pa.concat_arrays([self.times, other.times.cast(self.times.type)]),
            {
                k: pa.concat_arrays([v, other.destination[k].cast(v.type)])
                for k, v in self.destination.items()
            },
        )

    def filter(self, keep: pa.Array) -> "ArrowRecords":
        """The records where the boolean array ``keep`` is true."""
        return ArrowRecords(
            self.ids.filter(keep),
            self.docs.filter(keep),
            self.times.filter(keep),
            {k: v.filter(keep) for k, v in self.destination.items()},
        )

    def ids_are_plain(self) -> bool:
        """True when every id can go into JSON between quotes as is (hex digests always can)."""
        return is_plain(self.ids)

    def destination_is_plain(self) -> bool:
        """True when every per-record destination value can go into JSON between quotes as is."""
        return all(is_plain(v) for k, v in self.destination.items() if k != FIELDS_COLUMN)


# The per-record HEC indexed fields: a JSON object already (Spark's to_json), never quoted.
FIELDS_COLUMN = "_fields"


def is_plain(values: pa.Array) -> bool:
    """True when no value is null and every one can go into JSON between quotes as is."""
    if values.null_count:
        return False
    # Letters and digits only (hashes, numbers) is the common case, and its kernel is the cheapest;
    # any other value is decided by one scan of the bytes, ~10x cheaper than a regular expression
    # (UTF-8 bytes of characters beyond ASCII are >= 0x80, so they never look like '"', '\\' or a control).
    if pc.all(pc.ascii_is_alnum(values)).as_py():
        return True
    data = _value_bytes(values)
    return not bool(((data < 0x20) | (data == 0x22) | (data == 0x5C)).any())


def _value_bytes(values: pa.Array) -> np.ndarray:
    """The bytes of all values of a string or binary array, back to back, without a copy."""
    if len(values) == 0 or values.buffers()[2] is None:
        return np.empty(0, dtype=np.uint8)
    large = pa.types.is_large_binary(values.type) or pa.types.is_large_string(values.type)
    offsets = np.frombuffer(values.buffers()[1], dtype=np.int64 if large else np.int32)
    start, stop = offsets[values.offset], offsets[values.offset + len(values)]
    return np.frombuffer(values.buffers()[2], dtype=np.uint8)[start:stop]


def concat_binary(values: pa.Array) -> bytes:
    """All values of a binary array, back to back, in one copy."""
    if len(values) == 0:
        return b""
    if values.null_count:
        values = pc.fill_null(values, b"")
    large = pa.types.is_large_binary(values.type) or pa.types.is_large_string(values.type)
    offsets = np.frombuffer(values.buffers()[1], dtype=np.int64 if large else np.int32)
    start, stop = offsets[values.offset], offsets[values.offset + len(values)]
    return values.buffers()[2].to_pybytes()[start:stop]


def join_columns(*parts: pa.Array | bytes) -> bytes:
    """Row by row, the concatenation of ``parts`` (arrays or constant bytes), then all rows together."""
    arrays = [pa.scalar(p, pa.binary()) if isinstance(p, bytes) else p.cast(pa.binary()) for p in parts]
    return concat_binary(pc.binary_join_element_wise(*arrays, pa.scalar(b"", pa.binary())))


def call_boundaries(sizes: np.ndarray, max_records: int, max_bytes: int) -> list[tuple[int, int]]:
    """Cut rows of the given sizes into [start, stop) calls of at most ``max_records`` and ``max_bytes``."""
    ends = np.cumsum(sizes, dtype=np.int64)
    n = len(sizes)
    cuts = []
    start = 0
    while start < n:
        base = ends[start - 1] if start else 0
        by_bytes = int(np.searchsorted(ends, base + max_bytes, side="right"))
        stop = min(n, start + max_records, max(by_bytes, start + 1))
        cuts.append((start, stop))
        start = stop
    return cuts
