"""Formats, compression, schema inference and evolution, and the bad-input corpus: real files, real Delta."""

import gzip
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.feeds import CsvOptions, FeedSpec
from pipelines.ingest.runner import ingest_feed
from pipelines.ingest.schema import SchemaChangeError
from pipelines.ingest.schema_history import schema_history

from helpers import delta_table, json_lines, land_file, local_lake


def test_every_format_and_compression_lands_with_inferred_real_types(tmp_path: Path) -> None:
    lake = local_lake(tmp_path)
    record = {"id": 1, "ratio": 0.5, "ok": True, "at": "2026-11-01T10:00:00.250Z", "name": "a"}
    land_file(lake, "lines", "a.json", json_lines(record, {**record, "id": 2}))
    land_file(lake, "lines", "b.json.gz", gzip.compress(json_lines({**record, "id": 3})))
    zstd = pa.BufferOutputStream()
    with pa.CompressedOutputStream(zstd, "zstd") as out:
        out.write(json_lines({**record, "id": 4}))
    land_file(lake, "lines", "c.json.zst", zstd.getvalue().to_pybytes())
    land_file(lake, "arrays", "a.json", json.dumps([record, {**record, "id": 2}, 17]).encode())
    land_file(lake, "csv", "a.csv", b'id;name;note\n1;"x;y";"say \\"hi\\""\n2;z;\n')
    buffer = io.BytesIO()
    pq.write_table(pa.table({"id": [1, 2, 3], "name": ["a", "b", "c"]}), buffer)
    land_file(lake, "parquet", "a.parquet", buffer.getvalue())

    feeds = {
        "lines": FeedSpec(name="lines", source="lines"),
        "arrays": FeedSpec(name="arrays", source="arrays", format="json_array"),
        "csv": FeedSpec(name="csv", source="csv", format="csv", csv=CsvOptions(delimiter=";", escape="\\")),
        "parquet": FeedSpec(name="parquet", source="parquet", format="parquet"),
    }
    reports = {name: ingest_feed(feed, lake) for name, feed in feeds.items()}

    assert {name: r.rows for name, r in reports.items()} == {"lines": 4, "arrays": 2, "csv": 2, "parquet": 3}
    lines = delta_table(lake, "lines").sort_by("id")
    assert lines["id"].to_pylist() == [1, 2, 3, 4]
    types = {f.name: str(f.type) for f in lines.schema}
    assert types["id"] == "int64" and types["ratio"] == "double" and types["ok"] == "bool"
    assert types["at"] == "timestamp[us, tz=UTC]"
    csv_rows = delta_table(lake, "csv").sort_by("id").select(["id", "name", "note"]).to_pylist()
    assert csv_rows == [{"id": 1, "name": "x;y", "note": 'say "hi"'}, {"id": 2, "name": "z", "note": None}]
    assert delta_table(lake, "arrays").num_rows == 2
    assert reports["arrays"].bad_records == 1  # the bare 17: recorded with its element number
    assert delta_table(lake, "parquet")["name"].to_pylist() == ["a", "b", "c"]


def test_add_new_columns_merges_in_the_same_run_and_versions_the_schema(tmp_path: Path) -> None:
    lake = local_lake(tmp_path)
    feed = FeedSpec(name="evo", source="evo", max_files_per_batch=1)
    land_file(lake, "evo", "1.json", json_lines({"id": 1}))
    land_file(lake, "evo", "2.json", json_lines({"id": 2, "extra": "new"}))

    report = ingest_feed(feed, lake)

    assert report.batches == [1, 2] and report.new_columns == ["extra"]
    table = delta_table(lake, "evo").sort_by("id")
    assert table["extra"].to_pylist() == [None, "new"]
    history = schema_history(lake, "evo")
    assert [v["version"] for v in history] == [1, 2]
    assert history[1]["added_columns"] == {"extra": [str(Path(lake.landing_uri) / "evo" / "2.json")]}


def test_rescue_mode_keeps_unknown_fields_misfit_values_and_case_mismatches(tmp_path: Path) -> None:
    lake = local_lake(tmp_path)
    feed = FeedSpec(name="res", source="res", schema_evolution_mode="rescue", schema_hints="n bigint")
    land_file(lake, "res", "1.json", json_lines({"id": "a", "n": 1}))
    ingest_feed(feed, lake)
    second = land_file(
        lake, "res", "2.json", json_lines({"id": "b", "n": "not a number", "ID": "x", "more": {"k": 1}})
    )

    report = ingest_feed(feed, lake)

    assert report.rescued_rows == 1
    row = delta_table(lake, "res").filter(pa.compute.field("id") == "b").to_pylist()[0]
    assert row["n"] is None
    assert json.loads(row["_rescued_data"]) == {
        "n": "not a number",
        "ID": "x",
        "more": {"k": 1},
        "_file_path": str(second),
    }
    assert "more" not in delta_table(lake, "res").column_names


def test_fail_on_new_columns_names_the_file_and_columns_and_loses_nothing(tmp_path: Path) -> None:
    lake = local_lake(tmp_path)
    feed = FeedSpec(name="strict", source="strict", schema_evolution_mode="fail_on_new_columns")
    land_file(lake, "strict", "1.json", json_lines({"id": 1}))
    ingest_feed(feed, lake)
    land_file(lake, "strict", "2.json", json_lines({"id": 2, "surprise": True}))

    with pytest.raises(SchemaChangeError, match=r"2\.json: new column\(s\) \['surprise'\].*schema_hints"):
        ingest_feed(feed, lake)

    # The fix the message suggests: pin the column; the planned batch is then replayed and lands.
    fixed = FeedSpec(
        name="strict",
        source="strict",
        schema_evolution_mode="fail_on_new_columns",
        schema_hints="surprise boolean",
    )
    assert ingest_feed(fixed, lake).replayed_batches == 1
    assert delta_table(lake, "strict").sort_by("id")["surprise"].to_pylist() == [None, True]


def test_none_mode_ignores_new_columns_but_counts_them(tmp_path: Path) -> None:
    lake = local_lake(tmp_path)
    feed = FeedSpec(name="plain", source="plain", schema_evolution_mode="none")
    land_file(lake, "plain", "1.json", json_lines({"id": 1}))
    ingest_feed(feed, lake)
    land_file(lake, "plain", "2.json", json_lines({"id": 2, "later": 5}))

    report = ingest_feed(feed, lake)

    assert report.ignored_columns == ["later"] and report.rows == 1
    assert "later" not in delta_table(lake, "plain").column_names


def test_bad_input_corpus_every_bad_line_and_file_is_accounted_for(tmp_path: Path) -> None:
    lake = local_lake(tmp_path)
    feed = FeedSpec(
        name="bad", source="bad", schema_hints="id bigint, n bigint", schema_evolution_mode="rescue"
    )
    csv_feed = FeedSpec(name="badcsv", source="badcsv", format="csv", schema_hints="id bigint")
    good = [{"id": i, "n": i} for i in range(5)]
    land_file(lake, "bad", "00_good.json", json_lines(*good))
    land_file(lake, "bad", "01_truncated.json", json_lines(*good) + b'{"id": 9, "n": ')
    land_file(lake, "bad", "02_bom.json", b"\xef\xbb\xbf" + json_lines(*good))
    land_file(lake, "bad", "03_latin1.json", '{"id": 1, "n": 1, "city": "Zürich"}\n'.encode("latin-1"))
    land_file(lake, "bad", "04_binary.json", bytes(range(256)) * 4)
    land_file(lake, "bad", "05_broken.json.gz", gzip.compress(json_lines(*good))[:-20] + b"garbage!")
    big = {"id": 7, "n": 7, "blob": "x" * (50 * 1024 * 1024)}
    land_file(lake, "bad", "06_50mb_line.json", json_lines(big))
    land_file(
        lake,
        "bad",
        "07_type_change.json",
        json_lines({"id": 1, "n": 1}, {"id": 2, "n": "two"}, {"id": 3, "n": 3}),
    )
    land_file(lake, "badcsv", "ragged.csv", b"id,name\n1,a\n2\n3,c,extra\n4,d\n")

    report = ingest_feed(feed, lake)
    csv_report = ingest_feed(csv_feed, lake)

    # good 5 + truncated 5 (+1 bad line) + BOM 5 + 50 MB 1 + type change 3 (one value rescued); the
    # Latin-1 file's one line is a bad record, not a quarantined file
    assert report.rows == 19
    assert report.bad_records == 2
    assert report.rescued_rows == 1  # the "two"; the sample's schema has the 50 MB line's "blob" column
    assert sorted(Path(q.path).name for q in report.quarantined) == [
        "04_binary.json",
        "05_broken.json.gz",
    ]
    errors = {Path(q.path).name: q.error for q in report.quarantined}
    assert "binary" in errors["04_binary.json"]
    assert "gzip" in errors["05_broken.json.gz"]
    quarantine = delta_table(lake, "_lakerelay/quarantine/bad")
    bad_line = quarantine.filter(pa.compute.field("kind") == "bad_record").sort_by("source_file").to_pylist()
    assert [(Path(r["source_file"]).name, r["line"], r["raw_text"]) for r in bad_line] == [
        ("01_truncated.json", 6, '{"id": 9, "n": '),
        ("03_latin1.json", 1, '{"id": 1, "n": 1, "city": "Z\\xfcrich"}'),
    ]
    assert "UTF-8" in bad_line[1]["error"] and "encoding" in bad_line[1]["error"]
    assert quarantine.num_rows == 4
    table = delta_table(lake, "bad")
    assert table.num_rows == 19
    assert max(len(b) for b in table["blob"].drop_null().to_pylist()) == 50 * 1024 * 1024

    assert csv_report.rows == 2 and csv_report.bad_records == 2
    csv_bad = delta_table(lake, "_lakerelay/quarantine/badcsv").sort_by("line").to_pylist()
    assert [(r["line"], r["raw_text"]) for r in csv_bad] == [(3, "2"), (4, "3,c,extra")]
