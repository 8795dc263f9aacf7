"""Discovery at the edges a real landing zone lives on: names that sort before the listing cursor
(UUIDs, several producers), files still being written, and files that change after ingestion."""

import os
import random
import uuid
from pathlib import Path

import dagster as dg
import orjson
import pyarrow.compute as pc
import pytest

from pipelines.feeds import FeedSpec
from pipelines.ingest.asset import build_ingest_asset
from pipelines.ingest.context import UNCHANGED_CHECK
from pipelines.ingest.discovery import files_waiting
from pipelines.ingest.runner import ingest_feed

from helpers import delta_table, local_lake, s3_lake


def _records(first: int, count: int) -> bytes:
    return b"".join(orjson.dumps({"id": i, "v": f"r{i}"}) + b"\n" for i in range(first, first + count))


def _write(path: Path, content: bytes, mtime_s: float | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab") as out:
        out.write(content)
    if mtime_s is not None:
        os.utime(path, ns=(int(mtime_s * 1e9), int(mtime_s * 1e9)))
    return path


def test_files_landing_in_random_name_order_are_all_ingested_without_a_full_listing(tmp_path: Path) -> None:
    lake = local_lake(tmp_path)
    root = Path(lake.landing_uri) / "f"
    feed = FeedSpec(name="f", source="f")  # the defaults: incremental listing, late names found
    rng = random.Random(45)
    names = [f"{uuid.UUID(int=rng.getrandbits(128))}.json" for _ in range(45)]
    reports, waiting_late = [], 0
    landed = 0
    while landed < len(names):
        arriving = names[landed : landed + rng.randint(1, 5)]
        for name in arriving:
            _write(root / name, _records(names.index(name) * 10, 10))
        landed += len(arriving)
        waiting = files_waiting(lake, feed)
        waiting_late += waiting.late
        assert waiting.count == len(arriving)  # the sensor sees the late names too
        reports.append(ingest_feed(feed, lake))

    table = delta_table(lake, "f")
    assert sorted(table["id"].to_pylist()) == list(range(450))  # whole after the runs, none twice
    assert [r.full_listing for r in reports[1:]] == [False] * (len(reports) - 1)
    late = sum(len(r.late_files) for r in reports)
    assert late > 10 and waiting_late == late  # most UUIDs sort before the cursor when they land
    assert files_waiting(lake, feed).count == 0 and ingest_feed(feed, lake).files == 0


def test_a_file_written_in_two_halves_is_taken_once_it_settles(tmp_path: Path) -> None:
    lake = local_lake(tmp_path)
    path = Path(lake.landing_uri) / "f" / "a.json"
    feed = FeedSpec(name="f", source="f", settle_time="10s")
    start = 1_800_000_000.0
    _write(path, _records(0, 498), mtime_s=start)

    early = ingest_feed(feed, lake, clock=lambda: start + 3)
    sensor_early = files_waiting(lake, feed, now=start + 3)
    _write(path, _records(498, 502), mtime_s=start + 6)  # the writer finishes
    still = ingest_feed(feed, lake, clock=lambda: start + 12)  # 6 s after the last write: not yet
    sensor_ready = files_waiting(lake, feed, now=start + 16)
    settled = ingest_feed(feed, lake, clock=lambda: start + 16)

    assert (early.files, early.unsettled_files) == (0, [str(path)])
    assert (sensor_early.count, sensor_early.unsettled) == (0, 1)
    assert (still.files, still.unsettled_files) == (0, [str(path)])
    assert sensor_ready.count == 1
    assert (settled.files, settled.rows, settled.overwritten_skipped) == (1, 1000, [])
    assert pc.count_distinct(delta_table(lake, "f")["id"]).as_py() == 1000


def test_a_file_that_changes_after_ingestion_fails_the_check_with_its_path_on_every_run(
    tmp_path: Path,
) -> None:
    lake = local_lake(tmp_path)
    root = Path(lake.landing_uri) / "f"
    feed = FeedSpec(name="f", source="f")  # settle_time off: the first half is taken as it is
    _write(root / "a.json", _records(0, 5))
    changed = _write(root / "b.json", _records(5, 498))
    asset = build_ingest_asset(feed)
    first = dg.materialize([asset], resources={"lake": lake})
    _write(changed, _records(503, 502))  # the writer was not done
    os.utime(changed, ns=(os.stat(changed).st_mtime_ns + 10**9,) * 2)  # a later mtime, whatever the clock

    second = dg.materialize([asset], resources={"lake": lake})
    third = dg.materialize([asset], resources={"lake": lake})

    def check(result: dg.ExecuteInProcessResult) -> dg.AssetCheckEvaluation:
        return next(c for c in result.get_asset_check_evaluations() if c.check_name == UNCHANGED_CHECK)

    assert check(first).passed
    for result in (second, third):  # loud until resolved, not a counter seen once
        assert not check(result).passed and check(result).severity == dg.AssetCheckSeverity.ERROR
        assert str(changed) in check(result).description
        assert check(result).metadata["changed_files"].value == [str(changed)]
        assert result.asset_materializations_for_node("f")[0].metadata["listing_full"].value is False
    assert delta_table(lake, "f").num_rows == 503


@pytest.mark.integration
def test_a_late_key_on_s3_lands_in_the_next_run_and_the_sensor_sees_it(s3_settings) -> None:
    lake = s3_lake(s3_settings)
    client = s3_settings.client()
    feed = FeedSpec(name="f", source="f")

    def put(name: str, first: int) -> None:
        client.put_object(Bucket=s3_settings.bucket, Key=f"landing/f/{name}", Body=_records(first, 10))

    put("m.json", 0)
    ingest_feed(feed, lake)
    put("a.json", 10)  # sorts before the cursor (m.json)
    put("z.json", 20)

    waiting = files_waiting(lake, feed)
    report = ingest_feed(feed, lake)

    assert (waiting.count, waiting.late) == (2, 1)
    assert report.full_listing is False and report.late_files == [f"{s3_settings.bucket}/landing/f/a.json"]
    assert sorted(delta_table(lake, "f")["id"].to_pylist()) == list(range(30))
    assert files_waiting(lake, feed).count == 0


def test_late_files_left_by_max_batches_are_taken_by_the_next_runs(tmp_path: Path) -> None:
    lake = local_lake(tmp_path)
    root = Path(lake.landing_uri) / "f"
    feed = FeedSpec(name="f", source="f", max_files_per_batch=2)
    _write(root / "z.json", _records(0, 1))
    ingest_feed(feed, lake)
    for n in range(5):  # all sort before the cursor (z.json)
        _write(root / f"a{n}.json", _records(10 + n, 1))

    first = ingest_feed(feed, lake, max_batches=1)
    rest = [ingest_feed(feed, lake, max_batches=1) for _ in range(3)]

    assert (first.files, first.late_files) == (2, [str(root / "a0.json"), str(root / "a1.json")])
    assert [r.files for r in rest] == [2, 1, 0]
    assert sorted(delta_table(lake, "f")["id"].to_pylist()) == [0, 10, 11, 12, 13, 14]
