"""Sources and discovery: S3 on the moto server, incremental listing with backfill, filters, batches,
overwrites, feeds from a config file, maintenance and the landing sensor."""

import dataclasses
import os
import time
from pathlib import Path

import dagster as dg
import orjson
import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable

from pipelines import deployment
from pipelines.feeds import EVENTS_FEED, FeedSpec, load_feeds
from pipelines.ingest.asset import build_ingest_asset
from pipelines.ingest.maintenance import build_maintenance_asset, maintain_feed
from pipelines.ingest.runner import ingest_feed
from pipelines.relay import landing_sensor

from helpers import delta_table, local_lake, s3_lake


def _records(first: int, count: int) -> bytes:
    return b"".join(orjson.dumps({"id": i, "v": f"r{i}"}) + b"\n" for i in range(first, first + count))


def _land(root: Path, name: str, content: bytes) -> Path:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


@pytest.mark.integration
def test_s3_landing_incremental_listing_with_backfill_finds_out_of_order_keys(s3_settings) -> None:
    lake = s3_lake(s3_settings)
    client = s3_settings.client()

    def put(key: str, first: int, count: int) -> None:
        client.put_object(Bucket=s3_settings.bucket, Key=f"landing/{key}", Body=_records(first, count))

    # The incremental listing of before late-name checks: late names wait for the backfill.
    feed = FeedSpec(
        name="orders",
        source="orders",
        path_glob="*/*.json",
        backfill_interval="1 hour",
        find_late_names=False,
    )
    put("orders/2026-11-01/a.json", 0, 10)
    put("orders/2026-11-02/b.json", 10, 10)
    put("orders/2026-11-02/notes.txt", 99, 1)  # not matched by the glob
    put("orders/top.json", 98, 1)  # not matched either: the glob wants one folder level
    first = ingest_feed(feed, lake)
    put("orders/2026-11-03/c.json", 20, 10)
    put("orders/2026-11-01/late.json", 30, 10)  # sorts before the cursor: incremental listing misses it

    incremental = ingest_feed(feed, lake)
    backfill = ingest_feed(feed, lake, full_listing=True)

    assert (first.full_listing, first.rows) == (True, 20)
    assert (incremental.full_listing, incremental.listed_files, incremental.rows) == (False, 1, 10)
    assert (backfill.full_listing, backfill.rows) == (True, 10)
    table = delta_table(lake, "orders")
    assert sorted(table["id"].to_pylist()) == list(range(40))
    assert table["_source_file"][0].as_py().startswith(f"{s3_settings.bucket}/landing/orders/")
    assert (
        DeltaTable(lake.table_uri("orders"), storage_options=lake.storage_options()).transaction_version(
            feed.app_id
        )
        == 3
    )


def test_backfill_interval_elapsing_triggers_a_full_listing(tmp_path: Path) -> None:
    lake = local_lake(tmp_path)
    root = Path(lake.landing_uri) / "f"
    feed = FeedSpec(name="f", source="f", backfill_interval="0.5s", find_late_names=False)
    _land(root, "b.json", _records(0, 5))
    ingest_feed(feed, lake)
    _land(root, "a.json", _records(5, 5))
    assert ingest_feed(feed, lake, full_listing=None).rows in (0, 5)  # 0 unless 0.5 s already passed
    time.sleep(0.6)
    ingest_feed(feed, lake)
    assert sorted(delta_table(lake, "f")["id"].to_pylist()) == list(range(10))


def test_batches_respect_file_and_byte_limits_and_stop_at_max_batches(tmp_path: Path) -> None:
    lake = local_lake(tmp_path)
    root = Path(lake.landing_uri) / "f"
    for i in range(10):
        _land(root, f"{i:02d}.json", _records(i * 100, 100))  # about 2.3 kB each
    size = max(p.stat().st_size for p in root.iterdir())
    feed = FeedSpec(name="f", source="f", max_files_per_batch=4, max_bytes_per_batch=3 * size)

    first = ingest_feed(feed, lake, max_batches=2)
    rest = ingest_feed(feed, lake)

    assert (first.batches, first.files) == ([1, 2], 6)  # 3 files per batch: the byte limit binds
    assert (rest.batches, rest.files) == ([3, 4], 4)
    assert pc.count_distinct(delta_table(lake, "f")["id"]).as_py() == 1000


def test_overwrites_are_skipped_by_default_and_reingested_with_allow_overwrites(tmp_path: Path) -> None:
    lake = local_lake(tmp_path)
    root = Path(lake.landing_uri) / "f"
    path = _land(root, "a.json", _records(0, 3))
    ingest_feed(FeedSpec(name="f", source="f"), lake)
    path.write_bytes(_records(100, 4))
    os.utime(path, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))

    skipped = ingest_feed(FeedSpec(name="f", source="f"), lake, full_listing=True)
    reingested = ingest_feed(FeedSpec(name="f", source="f", allow_overwrites=True), lake, full_listing=True)
    again = ingest_feed(FeedSpec(name="f", source="f", allow_overwrites=True), lake, full_listing=True)

    assert skipped.overwritten_skipped == [str(path)] and skipped.rows == 0
    assert reingested.overwritten_reingested == [str(path)] and reingested.rows == 4
    assert again.rows == 0
    assert sorted(delta_table(lake, "f")["id"].to_pylist()) == [0, 1, 2, 100, 101, 102, 103]


def test_filters_recursive_and_modified_after(tmp_path: Path) -> None:
    lake = local_lake(tmp_path)
    root = Path(lake.landing_uri) / "f"
    old = _land(root, "old.json", _records(0, 1))
    os.utime(old, ns=(1_600_000_000 * 10**9, 1_600_000_000 * 10**9))
    _land(root, "new.json", _records(1, 1))
    _land(root, "sub/deep.json", _records(2, 1))
    _land(root, "_staging/hidden.json", _records(3, 1))
    feed = FeedSpec(name="f", source="f", recursive=False, modified_after="2021-01-01T00:00:00Z")

    assert ingest_feed(feed, lake).rows == 1
    assert delta_table(lake, "f")["id"].to_pylist() == [1]


def test_feeds_come_from_a_yaml_file_each_to_its_own_table(tmp_path: Path) -> None:
    config = tmp_path / "feeds.yaml"
    config.write_text(
        """
feeds:
  - name: web
    source: web
    format: csv
    csv: {delimiter: "|"}
    schema_hints: {status: bigint}
  - name: audit
    source: audit
    table: bronze_audit
    schema_evolution_mode: rescue
    max_quarantine_rate: 0.1
"""
    )
    feeds = load_feeds(config, default=[EVENTS_FEED])
    lake = local_lake(tmp_path)
    _land(Path(lake.landing_uri) / "web", "a.csv", b"path|status\n/|200\n/x|404\n")
    _land(Path(lake.landing_uri) / "audit", "a.json", _records(0, 3))

    result = dg.materialize(
        [build_ingest_asset(feed) for feed in feeds],
        resources={"lake": lake},
    )

    assert result.success
    assert delta_table(lake, "web")["status"].to_pylist() == [200, 404]
    assert delta_table(lake, "bronze_audit").num_rows == 3
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['fromat'\]"):
        config.write_text("feeds:\n  - {name: x, fromat: csv}\n")
        load_feeds(config, default=[])


def test_maintenance_compacts_and_vacuums_table_and_ledger(tmp_path: Path) -> None:
    lake = local_lake(tmp_path)
    root = Path(lake.landing_uri) / "f"
    for i in range(6):
        _land(root, f"{i}.json", _records(i * 10, 10))
    feed = FeedSpec(name="f", source="f", max_files_per_batch=1)
    ingest_feed(feed, lake)

    results = maintain_feed(feed, lake, retention_hours=0)

    table_result, ledger_result, _quarantine = results
    assert (table_result.files_removed, table_result.files_added) == (6, 1)
    assert table_result.vacuumed_files == 6 and ledger_result.files_removed == 6
    assert delta_table(lake, "f").num_rows == 60
    _land(root, "7.json", _records(70, 10))
    assert ingest_feed(feed, lake).batches == [7]  # batch numbering and exactly-once survive compaction


def test_landing_sensor_lists_only_after_the_cursor(tmp_path: Path) -> None:
    lake = local_lake(tmp_path)
    root = Path(lake.landing_uri) / "events"
    sensor = landing_sensor(EVENTS_FEED, "j")
    _land(root, "a.json", _records(0, 1))
    ingest_feed(EVENTS_FEED, lake)

    assert isinstance(
        sensor(dg.build_sensor_context(resources={"lake": lake}, instance=dg.DagsterInstance.ephemeral())),
        dg.SkipReason,
    )
    _land(root, "b.json", _records(1, 1))
    result = sensor(
        dg.build_sensor_context(resources={"lake": lake}, instance=dg.DagsterInstance.ephemeral())
    )
    assert [r.run_key for r in result.run_requests] == [f"events:{root / 'a.json'}:{root / 'b.json'}:1"]
    repeated = sensor(
        dg.build_sensor_context(
            cursor=result.cursor, resources={"lake": lake}, instance=dg.DagsterInstance.ephemeral()
        )
    )
    assert isinstance(repeated, dg.SkipReason)  # requested already; the run has not ingested it yet


def test_the_feeds_file_env_var_replaces_the_default_feed(tmp_path: Path, monkeypatch) -> None:
    config = tmp_path / "feeds.json"
    config.write_text('{"feeds": [{"name": "a", "source": "a"}, {"name": "b", "format": "parquet"}]}')
    monkeypatch.setenv("LAKERELAY_FEEDS_FILE", str(config))

    assert [f.name for f in deployment.feeds(default=[EVENTS_FEED])] == ["a", "b"]
    monkeypatch.delenv("LAKERELAY_FEEDS_FILE")
    assert deployment.feeds(default=[EVENTS_FEED]) == [EVENTS_FEED]


def test_the_maintenance_asset_runs_with_its_retention_config(tmp_path: Path) -> None:
    lake = local_lake(tmp_path)
    for i in range(3):
        _land(Path(lake.landing_uri) / "events", f"{i}.json", _records(i * 10, 10))
    ingest_feed(dataclasses.replace(EVENTS_FEED, max_files_per_batch=1), lake)

    result = dg.materialize(
        [build_ingest_asset(EVENTS_FEED), build_maintenance_asset(EVENTS_FEED)],
        selection=["events_maintenance"],
        resources={"lake": lake},
        run_config={"ops": {"events_maintenance": {"config": {"retention_hours": 0}}}},
    )

    metadata = result.asset_materializations_for_node("events_maintenance")[0].metadata
    assert metadata["files_compacted"].value == 6  # 3 table files + 3 ledger files
    assert metadata["files_vacuumed"].value == 6
    assert delta_table(lake).num_rows == 30


def test_landing_sensor_requests_a_run_when_a_backfill_listing_is_due(tmp_path: Path) -> None:
    lake = local_lake(tmp_path)
    feed = dataclasses.replace(EVENTS_FEED, backfill_interval="1s", find_late_names=False)
    _land(Path(lake.landing_uri) / "events", "a.json", _records(0, 1))
    ingest_feed(feed, lake)
    sensor = landing_sensor(feed, "j")

    time.sleep(1.1)
    request = sensor(
        dg.build_sensor_context(resources={"lake": lake}, instance=dg.DagsterInstance.ephemeral())
    )

    assert isinstance(request, dg.RunRequest) and ":backfill:" in request.run_key
