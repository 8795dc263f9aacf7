"""Ingestion into Delta: exactly once, replay after a crash, overwrites, unreadable files."""

import dataclasses
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import dagster as dg
import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable

from pipelines.feeds import EVENTS_FEED, FeedSpec
from pipelines.ingest.asset import QUARANTINE_CHECK, build_ingest_asset
from pipelines.ingest.context import UNCHANGED_CHECK, IngestContext, IngestReport
from pipelines.ingest.discovery import list_landing_files
from pipelines.ingest.ledger import FileLedger
from pipelines.ingest.runner import _commit_batch, ingest_feed
from resources.lake import LakeResource

from helpers import delta_table, land_events, local_lake


def test_ingests_every_record_once_with_metadata_columns(tmp_path: Path) -> None:
    lake = local_lake(tmp_path)
    written = land_events(lake, files=6, records_per_file=250)

    first = ingest_feed(EVENTS_FEED, lake, max_files_per_batch=4)
    second = ingest_feed(EVENTS_FEED, lake)

    table = delta_table(lake)
    assert (first.files, first.rows, first.batches) == (6, written, [1, 2])
    assert (second.files, second.rows, second.batches) == (0, 0, [])
    assert table.num_rows == written
    assert pc.count_distinct(table["event_id"]).as_py() == written
    assert set(pc.unique(table["_batch_id"]).to_pylist()) == {1, 2}
    assert str(table.schema.field("ts").type) == "timestamp[us, tz=UTC]"
    assert table.schema.field("bytes_in").type == "int64"
    assert {"_source_file", "_source_row", "_source_modified_at", "_ingested_at"} <= set(table.column_names)
    dt = DeltaTable(lake.table_uri("events"))
    assert dt.transaction_version(EVENTS_FEED.app_id) == 2


def test_a_planned_but_uncommitted_batch_is_replayed_with_the_same_files(tmp_path: Path) -> None:
    lake = local_lake(tmp_path)
    land_events(lake, files=3, records_per_file=100)
    ingest_feed(EVENTS_FEED, lake)
    land_events(lake, files=2, records_per_file=100, start_seq=300)
    # The crash: batch 2 was planned in the ledger, then the process died before the Delta commit.
    fs, root = lake.resolve(EVENTS_FEED.landing_uri(lake.landing_uri))
    ledger = FileLedger.for_feed(EVENTS_FEED, lake)
    listed = list_landing_files(fs, root)
    known = ledger.lookup([f.path for f in listed])
    ledger.plan(2, [f for f in listed if f.path not in known])

    report = ingest_feed(EVENTS_FEED, lake)

    assert report.replayed_batches == 1
    assert report.batches == [2]
    table = delta_table(lake)
    assert table.num_rows == 500
    assert pc.count_distinct(table["event_id"]).as_py() == 500


def test_replaying_a_committed_batch_appends_nothing(tmp_path: Path) -> None:
    lake = local_lake(tmp_path)
    land_events(lake, files=2, records_per_file=100)
    ingest_feed(EVENTS_FEED, lake)
    fs, root = lake.resolve(EVENTS_FEED.landing_uri(lake.landing_uri))
    version_before = DeltaTable(lake.table_uri("events")).version()

    context = IngestContext(
        EVENTS_FEED, lake, {}, lake.table_uri("events"), fs, IngestReport(), logging.getLogger()
    )
    _commit_batch(context, list_landing_files(fs, root), 1)

    assert delta_table(lake).num_rows == 200
    assert DeltaTable(lake.table_uri("events")).version() == version_before


def test_a_file_changed_after_ingestion_is_skipped_and_reported(tmp_path: Path) -> None:
    lake = local_lake(tmp_path)
    land_events(lake, files=2, records_per_file=50)
    ingest_feed(EVENTS_FEED, lake)
    changed = sorted((Path(lake.landing_uri) / "events").glob("*.json"))[0]
    changed.write_bytes(changed.read_bytes() + changed.read_bytes())

    report = ingest_feed(EVENTS_FEED, lake, full_listing=True)

    assert report.overwritten_skipped == [str(changed)]
    assert delta_table(lake).num_rows == 100


def test_an_unreadable_file_is_quarantined_and_malformed_lines_are_recorded(tmp_path: Path) -> None:
    lake = local_lake(tmp_path)
    land_events(lake, files=2, records_per_file=50)
    binary = Path(lake.landing_uri) / "events" / "binary.json"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    broken = Path(lake.landing_uri) / "events" / "broken.json"
    broken.write_bytes(b'{"event_id": "x", "ts": \n not json at all\n{"event_id": "y"}\n')

    report = ingest_feed(EVENTS_FEED, lake)

    assert [q.path for q in report.quarantined] == [str(binary)]
    assert "binary" in report.quarantined[0].error
    assert report.bad_records == 2
    assert delta_table(lake).num_rows == 101
    quarantine = delta_table(lake, "_lakerelay/quarantine/events").sort_by("line")
    assert quarantine.select(["source_file", "line", "kind"]).to_pylist() == [
        {"source_file": str(broken), "line": 1, "kind": "bad_record"},
        {"source_file": str(broken), "line": 2, "kind": "bad_record"},
        {"source_file": str(binary), "line": None, "kind": "unreadable_file"},
    ]
    assert quarantine["raw_text"][1].as_py() == " not json at all"
    assert ingest_feed(EVENTS_FEED, lake, full_listing=True).batches == []  # accounted for, not retried


def test_a_bad_schema_hint_names_the_feed_and_the_allowed_types() -> None:
    with pytest.raises(ValueError, match=r"feed 'x'.*unknown type 'timestampz'.*bigint"):
        FeedSpec(name="x", schema_hints="ts timestampz").hint_schema()


def test_the_asset_reports_numeric_metadata_and_its_check(tmp_path: Path) -> None:
    lake = local_lake(tmp_path)
    written = land_events(lake, files=3, records_per_file=100)
    landed_bytes = sum(p.stat().st_size for p in (Path(lake.landing_uri) / "events").iterdir())
    asset = build_ingest_asset(EVENTS_FEED)

    result = dg.materialize([asset], resources={"lake": lake})
    land_events(lake, files=1, records_per_file=10, start_seq=written)
    second = dg.materialize([asset], resources={"lake": lake})

    metadata = result.asset_materializations_for_node("events")[0].metadata
    assert metadata["ingest_rows"].value == written
    assert metadata["ingest_files"].value == 3
    assert metadata["ingest_bytes"].value == landed_bytes
    assert metadata["ingest_duration_s"].value > 0
    assert metadata["delta_version"].value == 0
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert set(checks) == {QUARANTINE_CHECK, UNCHANGED_CHECK}
    assert all(c.passed for c in checks.values())
    # What the UI shows of the table: where it is, its columns with types, and its rows after the run.
    assert metadata["dagster/uri"].value == lake.table_uri("events")
    assert metadata["dagster/table_name"].value == "events"
    columns = {c.name: c.type for c in metadata["dagster/column_schema"].value.columns}
    assert columns["event_id"] == "string" and columns["_ingested_at"] == "timestamp[us, tz=UTC]"
    assert list(columns) == delta_table(lake).column_names
    assert metadata["dagster/row_count"].value == written
    later = second.asset_materializations_for_node("events")[0].metadata
    assert (later["ingest_rows"].value, later["dagster/row_count"].value) == (10, written + 10)
    # Related keys sort together: every run figure is under one of a few prefixes.
    prefixes = {key.split("_")[0] for key in metadata if not key.startswith("dagster/")}
    assert prefixes == {"delta", "ingest", "listing", "overwritten", "quarantine", "schema"}
    assert {"delta", "json"} <= set(asset.specs_by_key[dg.AssetKey("events")].kinds)


def _ingest_in_child(lake_uri: str, landing_uri: str) -> int:
    lake = LakeResource(lake_uri=lake_uri, landing_uri=landing_uri)
    return ingest_feed(EVENTS_FEED, lake, max_files_per_batch=2).rows


def test_two_concurrent_runs_of_one_feed_ingest_every_record_once(tmp_path: Path) -> None:
    lake = local_lake(tmp_path)
    written = land_events(lake, files=16, records_per_file=100)
    # spawn, never fork, once deltalake has run in this process (its runtime panics in a forked child).
    with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_ingest_in_child, lake.lake_uri, lake.landing_uri) for _ in range(2)]
        rows_by_run = [f.result(timeout=120) for f in futures]
    leftover = ingest_feed(EVENTS_FEED, lake).rows  # what a run that stopped early left for the next one

    table = delta_table(lake)
    assert sum(rows_by_run) + leftover == written
    assert table.num_rows == written
    assert pc.count_distinct(table["event_id"]).as_py() == written


def test_the_quarantine_rate_check_fails_above_the_feed_threshold(tmp_path: Path) -> None:
    lake = local_lake(tmp_path)
    land_events(lake, files=1, records_per_file=9)
    (Path(lake.landing_uri) / "events" / "bad.json").write_bytes(b"{not json\n")
    strict = dataclasses.replace(EVENTS_FEED, max_quarantine_rate=0.05)

    result = dg.materialize([build_ingest_asset(strict)], resources={"lake": lake})

    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    check = checks[QUARANTINE_CHECK]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert check.metadata["quarantine_rate"].value == pytest.approx(0.1)
    metadata = result.asset_materializations_for_node("events")[0].metadata
    assert (metadata["ingest_rows"].value, metadata["quarantine_bad_records"].value) == (9, 1)


def test_the_ledger_compacts_itself_so_lookups_do_not_slow_down_between_maintenance_runs(
    tmp_path: Path,
) -> None:
    lake = local_lake(tmp_path)
    land_events(lake, files=30, records_per_file=1)
    report = ingest_feed(EVENTS_FEED, lake, max_files_per_batch=1)  # 30 batches: one tidy at batch 25
    ledger = FileLedger.for_feed(EVENTS_FEED, lake)
    ledger_files = DeltaTable(ledger.uri).file_uris()

    assert report.batches == list(range(1, 31))
    assert len(ledger_files) <= 6  # 1 compacted file + the 5 batches planned after it
    fs, root = lake.resolve(EVENTS_FEED.landing_uri(lake.landing_uri))
    paths = [f.path for f in list_landing_files(fs, root)]
    assert set(ledger.lookup(paths)) == set(paths)
    assert ingest_feed(EVENTS_FEED, lake).batches == []
