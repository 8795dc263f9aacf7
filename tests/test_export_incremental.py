"""Chained ``since`` exports of a table that keeps growing and is compacted: real ingests, real Delta."""

import gzip
import threading
from pathlib import Path

import orjson
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import CommitFailedError

from pipelines.export.exporter import export_table
from pipelines.export.spec import ExportSpec
from pipelines.feeds import EVENTS_FEED
from pipelines.ingest.maintenance import maintain_table
from pipelines.ingest.runner import ingest_feed
from resources.export_storage import LocalExportStorage

from helpers import delta_table, land_events, local_lake

RECORDS_PER_FILE = 40
WAIT_S = 120.0


def exported_ids(storage: LocalExportStorage, manifest: dict) -> list[str]:
    ids = []
    for part in manifest["parts"]:
        data = gzip.decompress((Path(storage.root) / part["key"]).read_bytes())
        ids.extend(orjson.loads(line)["event_id"] for line in data.splitlines())
    return ids


def compact(uri: str) -> int:
    """Compact as the maintenance asset does; a commit that lost to a concurrent ingest is retried."""
    for _ in range(20):
        try:
            return maintain_table(uri, {}, retention_hours=168).files_removed
        except CommitFailedError:
            continue
    raise AssertionError(f"compaction of {uri} lost every commit race")


def test_chained_incremental_exports_across_compactions_while_ingests_run(tmp_path: Path) -> None:
    lake = local_lake(tmp_path)
    storage = LocalExportStorage(root=str(tmp_path / "exports"))
    table_uri = lake.table_uri(EVENTS_FEED.table_name)
    spec = ExportSpec(dataset="events", table=table_uri, order_by="_batch_id")
    ingested = threading.Event()  # set after each ingest that committed files; the exporter waits on it
    stop = threading.Event()
    errors: list[BaseException] = []

    def ingest_continuously() -> None:
        try:
            n = 0
            while not stop.is_set():
                land_events(lake, files=1, records_per_file=RECORDS_PER_FILE, start_seq=n * RECORDS_PER_FILE)
                if ingest_feed(EVENTS_FEED, lake).files:
                    ingested.set()
                n += 1
        except BaseException as exc:  # surfaced by the main thread
            errors.append(exc)
            ingested.set()

    ingester = threading.Thread(target=ingest_continuously, name="ingester")
    ingester.start()
    chain: list[str] = []
    cursor = None
    compacted_files = 0
    exports_after_a_compaction = 0  # incremental exports with rows, whose cursor predates a compaction
    try:
        for step in range(6):
            assert ingested.wait(WAIT_S), "no ingest commit in time"
            ingested.clear()
            assert not errors, errors
            result = export_table(table_uri, lake, storage, "events", f"e{step:02d}", spec=spec, since=cursor)
            chain.extend(exported_ids(storage, result.manifest))
            exports_after_a_compaction += bool(compacted_files and result.rows)
            cursor = result.next_cursor
            # The daily maintenance, between two exports of the chain: rewrites old keys, adds no rows.
            compacted_files += compact(table_uri)
    finally:
        stop.set()
        ingester.join(WAIT_S)
    assert not errors, errors
    compacted_files += compact(table_uri)
    last = export_table(table_uri, lake, storage, "events", "e99", spec=spec, since=cursor)
    chain.extend(exported_ids(storage, last.manifest))

    # The chain did cross compactions that rewrote exported keys, and exported rows after them.
    assert compacted_files > 0 and exports_after_a_compaction >= 3
    assert len(chain) == len(set(chain)), "a row was exported twice"
    in_table = delta_table(lake).column("event_id").to_pylist()
    assert sorted(chain) == sorted(in_table), "a row was never exported"


def test_a_late_append_after_a_compaction_is_still_refused(tmp_path: Path) -> None:
    """Rows that really arrive below the cursor must still stop an incremental export."""
    uri = str(tmp_path / "t")
    for batch in range(1, 4):
        write_deltalake(uri, pa.table({"k": pa.array([batch] * 3, pa.int64())}), mode="append")
    storage = LocalExportStorage(root=str(tmp_path / "exports"))
    spec = ExportSpec(dataset="t", table=uri, order_by="k")
    first = export_table(uri, None, storage, "t", "e1", spec=spec)
    compact(uri)
    write_deltalake(uri, pa.table({"k": pa.array([2], pa.int64())}), mode="append")  # a late key
    compact(uri)  # and the late file is compacted away before the next export
    assert len(DeltaTable(uri).file_uris()) == 1
    with pytest.raises(ValueError, match=r"rows with k <= 3 \(e\.g\. 2\) were written after"):
        export_table(uri, None, storage, "t", "e2", spec=spec, since=first.next_cursor)


def test_a_delete_between_two_exports_does_not_break_the_cursor(tmp_path: Path) -> None:
    """A DELETE rewrites old keys with dataChange true, but brings no row: the chain goes on."""
    uri = str(tmp_path / "t")
    for batch in range(1, 4):
        write_deltalake(uri, pa.table({"k": pa.array([batch] * 3, pa.int64())}), mode="append")
    storage = LocalExportStorage(root=str(tmp_path / "exports"))
    spec = ExportSpec(dataset="t", table=uri, order_by="k")
    first = export_table(uri, None, storage, "t", "e1", spec=spec)
    DeltaTable(uri).delete("k = 2")  # e.g. a retention or erasure request
    write_deltalake(uri, pa.table({"k": pa.array([4], pa.int64())}), mode="append")
    second = export_table(uri, None, storage, "t", "e2", spec=spec, since=first.next_cursor)
    assert (first.rows, second.rows) == (9, 1)

    # An UPDATE writes rows whose keys may be old: still refused.
    DeltaTable(uri).update(updates={"k": "0"}, predicate="k = 1")
    with pytest.raises(ValueError, match="were written after the cursor's version"):
        export_table(uri, None, storage, "t", "e3", spec=spec, since=second.next_cursor)
