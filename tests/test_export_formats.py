"""Export formats, ordering, incremental cursors, retention, the CLI and the assets, on a local folder."""

import csv
import datetime as dt
import gzip
import io
import json
from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable, write_deltalake
from test_export import SCHEMA, make_table, table_rows

from pipelines.export import cli as cli_module
from pipelines.export.assets import ExportConfig, build_cleanup_asset, build_export_asset, export_defs
from pipelines.export.cli import main as cli
from pipelines.export.encode import NdjsonEncoder
from pipelines.export.exporter import export_table
from pipelines.export.manifest import verify_export
from pipelines.export.retention import cleanup_exports
from pipelines.export.spec import COMPRESSIONS, FORMATS, ExportSpec, load_specs, spec_from_mapping
from pipelines.feeds import EVENTS_FEED
from resources.delta_arrow import read_delta
from resources.export_storage import LocalExportStorage, S3ExportStorage
from resources.lake import DEFAULT_REGION, LakeResource

FLAT = [f.name for f in SCHEMA if not pa.types.is_nested(f.type)]  # what CSV can hold


def decompress(data: bytes, compression: str) -> bytes:
    if compression == "gzip":
        return gzip.decompress(data)
    if compression == "zstd":  # concatenated frames: read as one stream
        return pa.CompressedInputStream(pa.BufferReader(data), "zstd").read()
    return data


def read_rows(root: Path, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Every exported row as plain Python values, decoded independently of the exporter."""
    rows: list[dict[str, Any]] = []
    for part in manifest["parts"]:
        data = (root / part["key"]).read_bytes()
        if manifest["format"] == "parquet":
            got = pq.read_table(io.BytesIO(data)).to_pylist()
        else:
            text = decompress(data, manifest["compression"]).decode("utf-8")
            if manifest["format"] == "csv":
                got = list(csv.DictReader(io.StringIO(text, newline="")))
            else:
                got = [json.loads(line) for line in text.splitlines()]
        assert len(got) == part["rows"]
        rows.extend(got)
    return rows


@pytest.mark.parametrize("fmt", ["ndjson", "csv", "parquet"])
@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_every_format_and_compression_roundtrips(tmp_path: Path, fmt: str, compression: str) -> None:
    table = tmp_path / "t"
    make_table(table, appends=2, rows_per_append=300)
    root = tmp_path / "exports"
    storage = LocalExportStorage(root=str(root))
    columns = tuple(FLAT) if fmt == "csv" else ()

    result = export_table(
        str(table),
        None,
        storage,
        "t",
        "e1",
        format=fmt,
        compression=compression,
        columns=columns,
        part_max_rows=250,
    )

    suffix = {"ndjson": ".ndjson", "csv": ".csv", "parquet": ".parquet"}[fmt]
    if fmt != "parquet":
        suffix += {"gzip": ".gz", "zstd": ".zst", "none": ""}[compression]
    assert [p["key"] for p in result.manifest["parts"]] == [f"t/e1/part-0000{i}{suffix}" for i in range(3)]
    assert (result.manifest["format"], result.manifest["compression"]) == (fmt, compression)
    assert verify_export(storage, result.manifest_key) == []
    rows = read_rows(root, result.manifest)
    expected = table_rows(table)
    assert sorted(int(r["id"]) for r in rows) == [r["id"] for r in expected]
    by_id = {int(r["id"]): r for r in rows}
    for want in expected[:40]:
        got = by_id[want["id"]]
        if fmt == "parquet":
            assert got == want  # Parquet keeps every type
        elif want["name"] is not None:
            assert got["name"] == want["name"]  # quotes, line breaks, tabs and non-ASCII survive
            assert got["ts"] == want["ts"].isoformat().replace("+00:00", "Z")


def test_csv_is_rfc4180(tmp_path: Path) -> None:
    table = tmp_path / "t"
    write_deltalake(
        str(table), pa.table({"id": [1, 2, 3], "text": ['a "quoted", value', "two\r\nlines", None]})
    )
    storage = LocalExportStorage(root=str(tmp_path / "x"))
    export_table(str(table), None, storage, "t", "e1", format="csv", compression="none", order_by="id")
    data = (tmp_path / "x/t/e1/part-00000.csv").read_bytes()
    assert data == b'id,text\r\n1,"a ""quoted"", value"\r\n2,"two\r\nlines"\r\n3,\r\n'


def test_csv_refuses_nested_columns_with_a_clear_error(tmp_path: Path) -> None:
    table = tmp_path / "t"
    make_table(table, appends=1, rows_per_append=3)
    storage = LocalExportStorage(root=str(tmp_path / "x"))
    with pytest.raises(ValueError, match=r"CSV cannot hold the nested column\(s\) tags, attrs, labels"):
        export_table(str(table), None, storage, "t", "e1", format="csv")
    assert storage.list_keys("t/") == []


def test_bad_spec_values_name_the_field() -> None:
    with pytest.raises(ValueError, match="format 'xml' is not one of ndjson, csv, parquet"):
        ExportSpec(dataset="d", table="t", format="xml")
    with pytest.raises(ValueError, match=r"url_expiry_s is retired .* lakerelay export sign"):
        spec_from_mapping({"dataset": "d", "table": "t", "url_expiry_s": 600})
    with pytest.raises(ValueError, match=r"level 30 for zstd must be 1\.\.22"):
        ExportSpec(dataset="d", table="t", compression="zstd", level=30)


def test_columns_filter_and_order(tmp_path: Path) -> None:
    table = tmp_path / "t"
    # Appends out of key order, one of them overlapping another: output must still be sorted.
    for ids in (range(1000, 1500), range(0, 400), range(300, 600), range(2000, 2100)):
        write_deltalake(str(table), pa.table({"id": list(ids), "v": [i % 7 for i in ids]}), mode="append")
    root = tmp_path / "x"
    storage = LocalExportStorage(root=str(root))
    result = export_table(
        str(table),
        None,
        storage,
        "t",
        "e1",
        columns=("id",),
        where="v <> 3",
        order_by="id",
        part_max_rows=128,
    )
    rows = read_rows(root, result.manifest)
    ids = [r["id"] for r in rows]
    pairs = sorted(
        (i, i % 7) for r in (range(1000, 1500), range(0, 400), range(300, 600), range(2000, 2100)) for i in r
    )
    assert ids == sorted(i for i, v in pairs if v != 3)  # globally ordered, filtered, duplicates kept
    assert all(set(r) == {"id"} for r in rows)
    for part in result.manifest["parts"]:
        assert part["first_key"] <= part["last_key"]
    assert result.manifest["parts"][0]["first_key"] == ids[0]
    assert result.manifest["parts"][-1]["last_key"] == ids[-1]
    with pytest.raises(ValueError, match="column\\(s\\) nope not in table"):
        export_table(str(table), None, storage, "t", "e2", columns=("nope",))


def local_resources(tmp_path: Path) -> dict[str, Any]:
    return {
        "lake": LakeResource(lake_uri=str(tmp_path / "lake"), landing_uri=str(tmp_path / "landing")),
        "export_storage": LocalExportStorage(root=str(tmp_path / "x")),
    }


def _append(table: Path, ids: range) -> None:
    write_deltalake(str(table), pa.table({"id": list(ids), "name": [f"n{i}" for i in ids]}), mode="append")


def test_incremental_exports_union_equals_a_full_export(tmp_path: Path) -> None:
    table = tmp_path / "t"
    root = tmp_path / "x"
    storage = LocalExportStorage(root=str(root))
    spec = ExportSpec(dataset="t", table=str(table), order_by="id", part_max_rows=300)
    incremental: list[dict[str, Any]] = []
    cursor = None
    for step, ids in enumerate((range(0, 500), range(500, 1200), range(1200, 1201))):
        _append(table, ids)
        result = export_table(str(table), None, storage, "t", f"inc{step}", spec=spec, since=cursor)
        assert result.manifest["since"] == cursor and result.manifest["delta_version"] == step
        incremental += read_rows(root, result.manifest)
        cursor = result.next_cursor
    empty = export_table(str(table), None, storage, "t", "inc3", spec=spec, since=cursor)
    assert empty.rows == 0 and empty.next_cursor == cursor  # nothing new: the cursor stays put

    full = export_table(str(table), None, storage, "t", "full", spec=spec)
    assert incremental == read_rows(root, full.manifest)  # same rows, same order
    assert len(incremental) == 1201

    _append(table, range(10, 20))  # a key that went backwards would be missed: refuse
    with pytest.raises(ValueError, match="Keys must only grow: run a full export"):
        export_table(str(table), None, storage, "t", "bad", spec=spec, since=cursor)
    with pytest.raises(ValueError, match="belongs to dataset 't'"):
        export_table(str(table), None, storage, "u", "bad", spec=spec, since=cursor)
    with pytest.raises(ValueError, match="is not a cursor of this exporter"):
        export_table(str(table), None, storage, "t", "bad", spec=spec, since="garbage")


def test_retention_keeps_last_n_and_ttl_and_sweeps_crashed_exports(tmp_path: Path) -> None:
    table = tmp_path / "t"
    _append(table, range(10))
    storage = LocalExportStorage(root=str(tmp_path / "x"))
    ids = [f"202401{day:02d}T000000Z-run{day}" for day in (1, 2, 3, 4)]
    for export_id in ids:
        export_table(str(table), None, storage, "t", export_id)
    storage.delete([f"t/{ids[0]}/manifest.json"])  # the oldest one "crashed" before its manifest
    recent_crash = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ") + "-live"
    with storage.open_part(f"t/{recent_crash}/part-00000.ndjson.gz") as writer:
        writer.write(b"x")

    now = dt.datetime(2024, 1, 10, tzinfo=dt.UTC)
    result = cleanup_exports(storage, "t", keep_last=2, now=now)
    assert (result.kept, result.expired) == ([ids[3], ids[2]], [ids[1]])
    assert result.incomplete == [ids[0]]  # the recent crash may still be running: left alone
    assert storage.list_keys(f"t/{ids[1]}/") == [] and storage.list_keys(f"t/{ids[0]}/") == []
    assert storage.list_keys(f"t/{recent_crash}/")

    result = cleanup_exports(storage, "t", ttl_days=1, now=now)
    assert (result.kept, result.expired) == ([ids[3]], [ids[2]])
    assert storage.list_keys(f"t/{ids[3]}/")  # the newest export is always kept


def test_cli_run_verify_and_fetch_detects_tampering(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    table = tmp_path / "t"
    _append(table, range(2000))
    root = tmp_path / "x"
    assert (
        cli(
            [
                "run",
                "--table",
                str(table),
                "--dataset",
                "t",
                "--to",
                str(root),
                "--format",
                "csv",
                "--compression",
                "zstd",
                "--order-by",
                "id",
                "--part-max-rows",
                "700",
                "--export-id",
                "e1",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["rows"] == 2000 and out["parts"] == 3 and out["next_cursor"]
    manifest = str(root / "t/e1/manifest.json")
    assert cli(["verify", manifest]) == 0
    assert cli(["fetch", manifest, "--dest", str(tmp_path / "dl"), "--quiet"]) == 0
    assert "OK: 2000 rows in 3 part(s)" in capsys.readouterr().out

    part = root / "t/e1/part-00001.csv.zst"
    data = bytearray(part.read_bytes())
    data[100] ^= 0x01
    part.write_bytes(bytes(data))
    assert cli(["fetch", manifest, "--dest", str(tmp_path / "dl2"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "MISMATCH t/e1/part-00001.csv.zst: sha256" in err
    assert not (tmp_path / "dl2/part-00001.csv.zst").exists()  # a bad part is not kept
    assert cli(["verify", manifest]) == 1
    assert (
        cli(
            [
                "run",
                "--table",
                str(table),
                "--dataset",
                "t",
                "--to",
                str(root),
                "--since",
                "x",
                "--export-id",
                "e2",
            ]
        )
        == 2
    )  # bad input: a clear error, exit 2
    assert "needs an ordering key" in capsys.readouterr().err


def test_assets_incremental_mode_urls_and_cleanup(tmp_path: Path) -> None:
    table = tmp_path / "lake" / "events"
    _append(table, range(100))
    spec = ExportSpec(dataset="events", table="events", order_by="id", format="parquet", keep_last=1)
    assets = [build_export_asset(spec), build_cleanup_asset(spec)]
    resources = local_resources(tmp_path)
    incremental = dg.RunConfig(ops={"events_export": ExportConfig(mode="incremental")})
    with dg.instance_for_test() as instance:
        first = dg.materialize(assets[:1], resources=resources, instance=instance, run_config=incremental)
        _append(table, range(100, 130))
        second = dg.materialize(assets[:1], resources=resources, instance=instance, run_config=incremental)
        cleanup = dg.materialize(assets[1:], resources=resources, instance=instance)
    meta1 = first.asset_materializations_for_node("events_export")[0].metadata
    meta2 = second.asset_materializations_for_node("events_export")[0].metadata
    assert (meta1["size_rows"].value, meta2["size_rows"].value) == (100, 30)
    assert meta2["export_since"].value == meta1["export_next_cursor"].value
    assert meta2["export_format"].value == "parquet"
    # No presigned URL is kept in the event log: links are signed on demand.
    assert not [key for key in meta2 if key.startswith("urls")]
    clean = cleanup.asset_materializations_for_node("events_export_cleanup")[0].metadata
    assert clean["expired"].value == [meta1["export_id"].value]


def test_export_defs_from_a_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "exports.yaml"
    config.write_text(
        "exports:\n"
        "  - {dataset: events, table: events, source_asset: events}\n"
        "  - {dataset: errors, table: events, columns: 'ts, status_code', where: 'status_code >= 500',\n"
        "     format: csv, compression: zstd, keep_last: 7}\n"
    )
    monkeypatch.setenv("LAKERELAY_EXPORTS_FILE", str(config))
    resources = local_resources(tmp_path)
    defs = dg.Definitions.merge(export_defs([EVENTS_FEED]), dg.Definitions(resources=resources))
    keys = {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {"events_export", "errors_export", "errors_export_cleanup"} <= keys
    assert defs.resolve_job_def("export_errors") and defs.resolve_schedule_def("export_cleanup_schedule")
    [errors] = [s for s in load_specs(config) if s.dataset == "errors"]
    assert errors.columns == ("ts", "status_code") and errors.extension == "csv.zst"
    config.write_text("exports:\n  - {dataset: e, table: t, fromat: csv}\n")
    with pytest.raises(ValueError, match="unknown option\\(s\\) fromat"):
        load_specs(config)


def test_asset_kinds_and_destination_follow_the_export_storage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "exports.yaml"
    config.write_text(
        "exports:\n  - {dataset: events, table: events}\n  - {dataset: errors, table: events, format: csv}\n"
    )
    monkeypatch.setenv("LAKERELAY_EXPORTS_FILE", str(config))
    monkeypatch.setenv("LAKERELAY_TEST_EXPORT_DIR", str(tmp_path / "out"))

    def specs_of(storage: Any) -> dict[str, dg.AssetSpec]:
        defs = export_defs([EVENTS_FEED], storage=storage)
        return {spec.key.to_user_string(): spec for asset in defs.assets for spec in asset.specs}

    # A folder: written as local files, never labelled S3; the folder may come from an EnvVar.
    local = specs_of(LocalExportStorage(root=dg.EnvVar("LAKERELAY_TEST_EXPORT_DIR")))
    assert local["events_export"].kinds == {"delta", "file", "ndjson"}
    assert local["errors_export"].kinds == {"delta", "file", "csv"}
    assert local["events_export_cleanup"].kinds == {"file"}
    assert local["errors_export"].metadata["dagster/uri"] == dg.MetadataValue.path(
        str(tmp_path / "out/errors")
    )
    assert local["errors_export"].metadata["export_format"] == "csv"

    lake = LakeResource(lake_uri="s3://lake/root", landing_uri="s3://lake/landing")
    remote = specs_of(S3ExportStorage(lake=lake, bucket="exports-bucket", prefix="v1"))
    assert remote["events_export"].kinds == {"delta", "s3", "ndjson"}
    assert remote["events_export"].metadata["dagster/uri"] == dg.MetadataValue.url(
        "s3://exports-bucket/v1/events"
    )

    unknown = specs_of(None)  # storage not given: no storage kind is claimed
    assert unknown["events_export"].kinds == {"delta", "ndjson"}
    assert "dagster/uri" not in unknown["events_export"].metadata


def test_run_config_offers_the_spec_choices_and_refuses_others() -> None:
    fields = ExportConfig.model_fields
    assert fields["format"].annotation.__args__ == ("default", *FORMATS)
    assert fields["compression"].annotation.__args__ == ("default", *COMPRESSIONS)
    assert fields["mode"].annotation.__args__ == ("full", "incremental")
    with pytest.raises(ValueError, match="mode"):
        ExportConfig(mode="partial")
    with pytest.raises(ValueError, match="format"):
        ExportConfig(format="xml")


def test_cli_reaches_s3_with_the_deployment_lake_and_plain_http_only_for_http(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.setenv("LAKERELAY_S3_ENDPOINT_URL", "https://s3.example.test")
    lake = cli_module._lake()
    options = lake.storage_options("s3://bucket/t")
    assert options["AWS_ENDPOINT_URL"] == "https://s3.example.test" and "AWS_ALLOW_HTTP" not in options
    assert (options["AWS_ACCESS_KEY_ID"], options["AWS_REGION"]) == ("key-id", DEFAULT_REGION)  # resolved
    storage = cli_module.storage_at("s3://bucket/some/prefix")
    assert isinstance(storage, S3ExportStorage) and storage.lake == lake
    assert storage.uri_for("t/e1/manifest.json") == "s3://bucket/some/prefix/t/e1/manifest.json"

    monkeypatch.delenv("LAKERELAY_S3_ENDPOINT_URL")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    options = cli_module._lake().storage_options("s3://bucket/t")
    assert options["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9000" and options["AWS_ALLOW_HTTP"] == "true"
    assert cli_module._lake().storage_options("/local/table") == {}


def test_delta_table_is_read_at_one_pinned_version(tmp_path: Path) -> None:
    table = tmp_path / "t"
    _append(table, range(50))
    storage = LocalExportStorage(root=str(tmp_path / "x"))
    result = export_table(str(table), None, storage, "t", "e1", order_by="id")
    assert result.manifest["delta_version"] == DeltaTable(str(table)).version() == 0


def test_fast_ndjson_path_writes_the_same_json_as_the_exact_path(tmp_path: Path) -> None:
    table = tmp_path / "t"
    make_table(table, appends=1, rows_per_append=200)
    data = read_delta(DeltaTable(str(table)), columns=[*FLAT, "tags"])
    data = data.append_column("nan", pa.array([float("nan"), 1e20, -0.0, 1e-7] * 50))
    encoder = NdjsonEncoder(data.schema)
    assert encoder.fast
    for batch in data.to_batches():
        fast = [json.loads(line) for line in encoder._encode_with_polars(batch).splitlines()]
        exact = [json.loads(line) for line in encoder._encode_with_orjson(batch).splitlines()]
        assert fast == exact
    assert not NdjsonEncoder(pa.schema([("m", pa.map_(pa.string(), pa.int64()))])).fast


def test_a_new_export_removes_what_a_killed_local_export_left_half_written(tmp_path: Path) -> None:
    table = tmp_path / "t"
    _append(table, range(10))
    storage = LocalExportStorage(root=str(tmp_path / "x"))
    killed = storage.open_part("t/killed/part-00000.ndjson.gz")  # as a kill -9 leaves it: never closed
    killed.write(b"half a part")
    assert list((tmp_path / "x/t/killed").glob(".*.tmp"))

    result = export_table(str(table), None, storage, "t", "e2")

    assert result.aborted_uploads == 1
    assert not list((tmp_path / "x/t/killed").glob(".*.tmp"))
    assert storage.list_keys("t/") == ["t/e2/manifest.json", "t/e2/part-00000.ndjson.gz"]
