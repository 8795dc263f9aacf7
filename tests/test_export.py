"""Bulk exports: real Delta tables, a real local folder and a real S3-compatible server (moto)."""

import base64
import datetime as dt
import decimal
import gzip
import hashlib
import json
import os
import random
from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake
from pydantic import PrivateAttr

from pipelines.export.assets import ExportConfig, build_export_asset, build_export_check
from pipelines.export.exporter import export_table
from pipelines.export.manifest import latest_manifest_key, redact_uri, verify_export
from pipelines.export.read import plan_read
from pipelines.export.spec import ExportSpec
from resources.delta_arrow import read_delta
from resources.export_storage import LocalExportStorage, PartWriter, S3ExportStorage
from resources.lake import LakeResource

from fixtures_s3 import S3Settings
from helpers import s3_lake

APPENDS = 4
ROWS_PER_APPEND = 750
UTC = dt.UTC

SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("user", pa.int32()),
        ("score", pa.float64()),
        ("active", pa.bool_()),
        ("name", pa.string()),
        ("day", pa.date32()),
        ("ts", pa.timestamp("us", tz="UTC")),
        ("local_ts", pa.timestamp("us")),
        ("amount", pa.decimal128(12, 2)),
        ("payload", pa.binary()),
        ("tags", pa.list_(pa.string())),
        ("attrs", pa.struct([("k", pa.int32()), ("at", pa.timestamp("us", tz="UTC"))])),
        ("labels", pa.map_(pa.string(), pa.int64())),
    ]
)


def _rows(start: int, count: int, rng: random.Random) -> list[dict[str, Any]]:
    base = dt.datetime(2024, 2, 10, 12, 13, 27, tzinfo=UTC)
    rows = []
    for i in range(start, start + count):
        null = i % 17 == 0  # every column but id is sometimes null
        ts = base + dt.timedelta(seconds=i * 37, microseconds=i % 1000)
        rows.append(
            {
                "id": i,
                "user": None if null else rng.randrange(1000),
                "score": None if null else rng.random() * 100,
                "active": None if null else i % 2 == 0,
                "name": None if null else f'user "{i}"\n\té✓',
                "day": None if null else dt.date(2024, 1, 1) + dt.timedelta(days=i % 400),
                "ts": None if null else ts,
                "local_ts": None if null else ts.replace(tzinfo=None),
                "amount": None if null else decimal.Decimal(rng.randrange(-(10**9), 10**9)) / 100,
                "payload": None if null else rng.randbytes(rng.randrange(0, 24)),
                "tags": None if null else [f"t{j}" for j in range(i % 4)],
                "attrs": None if null else {"k": i % 7, "at": ts},
                "labels": None if null else [("a", i), ("b", -i)],
            }
        )
    return rows


def make_table(path: Path, appends: int = APPENDS, rows_per_append: int = ROWS_PER_APPEND) -> int:
    """A Delta table written in several appends (several files and versions); returns the row count."""
    rng = random.Random(42)
    for n in range(appends):
        rows = _rows(n * rows_per_append + 1, rows_per_append, rng)
        write_deltalake(str(path), pa.Table.from_pylist(rows, schema=SCHEMA), mode="append")
    return appends * rows_per_append


def _ts(value: str | None) -> dt.datetime | None:
    return None if value is None else dt.datetime.fromisoformat(value)


def _decode(record: dict[str, Any]) -> dict[str, Any]:
    """JSON export row -> the Python values Arrow gives for the same row (independent of the exporter)."""
    out = dict(record)
    out["day"] = None if record["day"] is None else dt.date.fromisoformat(record["day"])
    out["ts"] = _ts(record["ts"])
    out["local_ts"] = _ts(record["local_ts"])
    out["amount"] = None if record["amount"] is None else decimal.Decimal(record["amount"])
    out["payload"] = None if record["payload"] is None else base64.b64decode(record["payload"])
    if record["attrs"] is not None:
        out["attrs"] = {"k": record["attrs"]["k"], "at": _ts(record["attrs"]["at"])}
    if record["labels"] is not None:
        out["labels"] = list(record["labels"].items())
    return out


def table_rows(path: Path) -> list[dict[str, Any]]:
    return sorted(read_delta(DeltaTable(str(path))).to_pylist(), key=lambda r: r["id"])


def assert_parts_hold_table(parts_bytes: dict[str, bytes], manifest: dict[str, Any], table: Path) -> None:
    """Stored bytes match the manifest's sha256/bytes/rows and decode to exactly the table's rows."""
    records = []
    for part in manifest["parts"]:
        data = parts_bytes[part["key"]]
        assert hashlib.sha256(data).hexdigest() == part["sha256"]
        assert len(data) == part["bytes"]
        lines = gzip.decompress(data).decode("utf-8").splitlines()
        assert len(lines) == part["rows"]
        records.extend(json.loads(line) for line in lines)
    expected = table_rows(table)
    assert sorted(r["id"] for r in records) == [r["id"] for r in expected]
    assert sorted((_decode(r) for r in records), key=lambda r: r["id"]) == expected


def local_parts(root: Path, manifest: dict[str, Any]) -> dict[str, bytes]:
    return {p["key"]: (root / p["key"]).read_bytes() for p in manifest["parts"]}


def s3_storage(settings: S3Settings, **kwargs: Any) -> S3ExportStorage:
    """Exports in the test bucket, through the S3 settings of a lake in the same bucket."""
    return S3ExportStorage(lake=s3_lake(settings), bucket=settings.bucket, **kwargs)


# -- failure injection: real storages whose third part fails part-way through ----------------------


class _FailingWriter(PartWriter):
    """Passes the first write through to the real writer, then fails like a dropped connection."""

    def __init__(self, inner: PartWriter) -> None:
        self.inner, self.writes = inner, 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        if self.writes > 1:
            raise ConnectionError("injected failure while writing part 2")
        self.inner.write(data)

    def close(self) -> None:
        self.inner.close()

    def finish(self) -> None:
        self.inner.finish()

    def publish(self) -> None:
        self.inner.publish()

    def abort(self) -> None:
        self.inner.abort()


class FailingLocalStorage(LocalExportStorage):
    def open_part(self, key: str, content_type: str = "application/octet-stream") -> PartWriter:
        writer = super().open_part(key, content_type)
        return _FailingWriter(writer) if key.endswith("part-00002.ndjson.gz") else writer


class FailingS3Storage(S3ExportStorage):
    def open_part(self, key: str, content_type: str = "application/octet-stream") -> PartWriter:
        writer = super().open_part(key, content_type)
        return _FailingWriter(writer) if key.endswith("part-00002.ndjson.gz") else writer


class RecordingStorage(LocalExportStorage):
    """Records the order in which parts complete and the manifest is written."""

    _events: list[str] = PrivateAttr(default_factory=list)

    def open_part(self, key: str, content_type: str = "application/octet-stream") -> PartWriter:
        events, inner = self._events, super().open_part(key, content_type)

        class _Recording(PartWriter):
            def write(self, data: bytes) -> None:
                inner.write(data)

            def close(self) -> None:
                inner.close()
                events.append(f"closed {key}")

            def abort(self) -> None:
                inner.abort()

        return _Recording()

    def put_manifest(self, key: str, data: bytes) -> None:
        for part in json.loads(data)["parts"]:  # every listed part is already visible
            assert Path(self.root, part["key"]).is_file()
        super().put_manifest(key, data)
        self._events.append(f"manifest {key}")


# -- local folder ----------------------------------------------------------------------------------


def test_local_export_roundtrip_in_several_parts(tmp_path: Path) -> None:
    table = tmp_path / "events"
    rows = make_table(table)
    storage = LocalExportStorage(root=str(tmp_path / "exports"))

    result = export_table(str(table), None, storage, "events", "e1", part_max_rows=700, batch_rows=256)

    manifest = json.loads((tmp_path / "exports/events/e1/manifest.json").read_text())
    assert manifest == result.manifest
    assert result.rows == manifest["total_rows"] == rows == read_delta(DeltaTable(str(table))).num_rows
    assert manifest["delta_version"] == APPENDS - 1
    assert (manifest["format"], manifest["compression"], manifest["dataset"]) == ("ndjson", "gzip", "events")
    assert [p["rows"] for p in manifest["parts"]] == [700, 700, 700, 700, 200]
    assert [p["key"] for p in manifest["parts"]] == [f"events/e1/part-{i:05d}.ndjson.gz" for i in range(5)]
    assert manifest["total_bytes"] == result.bytes == sum(p["bytes"] for p in manifest["parts"])
    assert [f["name"] for f in manifest["schema"]] == SCHEMA.names
    assert dt.datetime.fromisoformat(manifest["created_at"]).tzinfo is not None
    assert result.manifest_uri == str(tmp_path / "exports/events/e1/manifest.json")
    assert_parts_hold_table(local_parts(tmp_path / "exports", manifest), manifest, table)
    assert verify_export(storage, result.manifest_key) == []


def test_json_encoding_of_each_type(tmp_path: Path) -> None:
    table = tmp_path / "t"
    make_table(table, appends=1, rows_per_append=2)
    storage = LocalExportStorage(root=str(tmp_path / "exports"))
    export_table(str(table), None, storage, "t", "e1")
    data = gzip.decompress((tmp_path / "exports/t/e1/part-00000.ndjson.gz").read_bytes())
    first = json.loads(data.splitlines()[0])
    assert first["ts"] == "2024-02-10T12:14:04.000001Z"  # RFC 3339, UTC, microseconds kept
    assert first["local_ts"] == "2024-02-10T12:14:04.000001"  # timestamp_ntz: no zone
    assert first["day"] == "2024-01-02"
    assert isinstance(first["amount"], str) and decimal.Decimal(first["amount"]).as_tuple().exponent == -2
    assert first["labels"] == {"a": 1, "b": -1}
    assert first["attrs"]["at"].endswith("Z")


def test_parts_respect_max_bytes(tmp_path: Path) -> None:
    table = tmp_path / "events"
    make_table(table)
    storage = LocalExportStorage(root=str(tmp_path / "exports"))
    result = export_table(str(table), None, storage, "events", "e1", part_max_bytes=64_000)
    parts = result.manifest["parts"]
    assert len(parts) > 5
    assert all(p["uncompressed_bytes"] <= 64_000 for p in parts)
    assert all(p["uncompressed_bytes"] > 60_000 for p in parts[:-1])  # filled, not cut early
    assert_parts_hold_table(local_parts(tmp_path / "exports", result.manifest), result.manifest, table)


def test_row_larger_than_max_bytes_gets_its_own_part(tmp_path: Path) -> None:
    table = tmp_path / "t"
    make_table(table, appends=1, rows_per_append=5)
    storage = LocalExportStorage(root=str(tmp_path / "exports"))
    result = export_table(str(table), None, storage, "t", "e1", part_max_bytes=10)
    assert [p["rows"] for p in result.manifest["parts"]] == [1] * 5
    assert verify_export(storage, result.manifest_key) == []


def test_empty_table_gives_manifest_with_zero_parts(tmp_path: Path) -> None:
    table = tmp_path / "empty"
    write_deltalake(str(table), SCHEMA.empty_table())
    storage = LocalExportStorage(root=str(tmp_path / "exports"))
    result = export_table(str(table), None, storage, "empty", "e1")
    assert (result.rows, result.parts, result.bytes) == (0, 0, 0)
    assert result.manifest["parts"] == [] and result.manifest["delta_version"] == 0
    assert storage.list_keys("empty/") == ["empty/e1/manifest.json"]
    assert verify_export(storage, result.manifest_key) == []


def test_manifest_is_written_after_every_part(tmp_path: Path) -> None:
    table = tmp_path / "events"
    make_table(table)
    storage = RecordingStorage(root=str(tmp_path / "exports"))
    export_table(str(table), None, storage, "events", "e1", part_max_rows=1000)
    events = storage._events
    assert events[-1] == "manifest events/e1/manifest.json"
    assert events[:-1] == [f"closed events/e1/part-{i:05d}.ndjson.gz" for i in range(3)]


def test_failure_mid_export_publishes_nothing_local(tmp_path: Path) -> None:
    table = tmp_path / "events"
    make_table(table)
    storage = FailingLocalStorage(root=str(tmp_path / "exports"))
    with pytest.raises(ConnectionError, match="injected"):
        export_table(str(table), None, storage, "events", "e1", part_max_rows=700, batch_rows=100)
    # Parts 0 and 1 were complete, part 2 failed: none of them is left under its name, nor as a temp file.
    assert storage.list_keys("events/") == []
    assert not list((tmp_path / "exports").rglob(".*"))
    assert latest_manifest_key(storage, "events") is None


def test_verify_detects_tampered_truncated_and_missing_parts(tmp_path: Path) -> None:
    table = tmp_path / "events"
    make_table(table)
    root = tmp_path / "exports"
    storage = LocalExportStorage(root=str(root))
    result = export_table(str(table), None, storage, "events", "e1", part_max_rows=1000)
    part0, part1, part2 = (root / p["key"] for p in result.manifest["parts"])

    data = bytearray(part0.read_bytes())
    data[len(data) // 2] ^= 0xFF
    part0.write_bytes(bytes(data))
    part1.write_bytes(part1.read_bytes()[:-100])
    part2.unlink()

    problems = verify_export(storage, result.manifest_key)
    assert any(p.startswith("events/e1/part-00000.ndjson.gz: sha256 ") for p in problems)
    assert "events/e1/part-00001.ndjson.gz: gzip stream is truncated" in problems
    assert "events/e1/part-00002.ndjson.gz: missing" in problems
    assert verify_export(storage, "events/nope/manifest.json") == [
        "manifest events/nope/manifest.json not found"
    ]


def test_an_export_is_never_overwritten(tmp_path: Path) -> None:
    table = tmp_path / "t"
    make_table(table, appends=1, rows_per_append=10)
    storage = LocalExportStorage(root=str(tmp_path / "exports"))
    result = export_table(str(table), None, storage, "t", "e1")
    with pytest.raises(FileExistsError):
        export_table(str(table), None, storage, "t", "e1")
    with pytest.raises(FileExistsError):
        storage.put_manifest(result.manifest_key, b"{}")
    assert json.loads(storage.read_bytes(result.manifest_key)) == result.manifest


def test_manifest_never_carries_credentials() -> None:
    assert redact_uri("s3://AKIA:secret@lake/events?X-Amz-Signature=abc") == "s3://lake/events"
    assert redact_uri("/data/lake/events") == "/data/lake/events"


def test_latest_manifest_is_the_newest_export_id(tmp_path: Path) -> None:
    table = tmp_path / "t"
    make_table(table, appends=1, rows_per_append=10)
    storage = LocalExportStorage(root=str(tmp_path / "exports"))
    for export_id in ("20240101T000000Z-aaaa", "20240301T000000Z-bbbb", "20240201T000000Z-cccc"):
        export_table(str(table), None, storage, "t", export_id)
    assert latest_manifest_key(storage, "t") == "t/20240301T000000Z-bbbb/manifest.json"


# -- Dagster asset and check -----------------------------------------------------------------------

EXPORT_ASSET = build_export_asset(ExportSpec(dataset="events", table="events", source_asset="events"))
EXPORT_CHECK = build_export_check("events")


def _lake(tmp_path: Path) -> LakeResource:
    return LakeResource(lake_uri=str(tmp_path / "lake"), landing_uri=str(tmp_path / "landing"))


def _run_config(**config: Any) -> dg.RunConfig:
    return dg.RunConfig(ops={"events_export": ExportConfig(**config)})


def test_asset_materializes_with_metadata_and_passing_check(tmp_path: Path) -> None:
    rows = make_table(tmp_path / "lake" / "events")
    storage = LocalExportStorage(root=str(tmp_path / "exports"))

    result = dg.materialize(
        [EXPORT_ASSET, EXPORT_CHECK],
        resources={"lake": _lake(tmp_path), "export_storage": storage},
        run_config=_run_config(part_max_rows=1000, level=1),
    )

    assert result.success
    assert EXPORT_ASSET.key == dg.AssetKey("events_export")
    assert dg.AssetKey("events") in EXPORT_ASSET.asset_deps[EXPORT_ASSET.key]
    meta = result.asset_materializations_for_node("events_export")[0].metadata
    assert meta["dagster/row_count"] == meta["size_rows"] == dg.IntMetadataValue(rows)
    assert meta["size_parts"] == dg.IntMetadataValue(3)
    assert meta["export_delta_version"] == dg.IntMetadataValue(APPENDS - 1)
    assert isinstance(meta["size_bytes"], dg.IntMetadataValue) and meta["size_bytes"].value > 0
    assert meta["size_uncompressed_bytes"].value > meta["size_bytes"].value  # gzip made it smaller
    for key in ("speed_duration_s", "speed_rows_per_s", "speed_mib_per_s"):
        assert isinstance(meta[key], dg.FloatMetadataValue) and meta[key].value > 0
    manifest_path = meta["manifest_uri"].value
    assert Path(manifest_path).is_file() and manifest_path == storage.uri_for(meta["manifest_key"].value)
    export_id = meta["export_id"].value
    assert export_id.endswith(result.run_id.replace("-", "")[:8])
    assert meta["dagster/uri"].value == str(tmp_path / "exports" / "events" / export_id)
    # Related keys share a prefix, so they sort together wherever the keys are listed.
    prefixes = {key.split("/")[0] if key.startswith("dagster/") else key.split("_")[0] for key in meta}
    assert prefixes == {"dagster", "export", "size", "speed", "manifest"}
    [evaluation] = result.get_asset_check_evaluations()
    assert evaluation.passed and evaluation.check_name == "export_verified"


def test_check_fails_on_a_tampered_export(tmp_path: Path) -> None:
    make_table(tmp_path / "lake" / "events")
    root = tmp_path / "exports"
    resources = {"lake": _lake(tmp_path), "export_storage": LocalExportStorage(root=str(root))}
    with dg.instance_for_test() as instance:
        assert dg.materialize([EXPORT_ASSET, EXPORT_CHECK], resources=resources, instance=instance).success
        [part] = root.glob("events/*/part-00000.ndjson.gz")
        part.write_bytes(part.read_bytes()[:-8] + b"garbage!")

        result = dg.materialize(
            [EXPORT_ASSET, EXPORT_CHECK],
            resources=resources,
            instance=instance,
            selection=dg.AssetSelection.checks(EXPORT_CHECK),
            raise_on_error=False,
        )
    [evaluation] = result.get_asset_check_evaluations()
    assert not evaluation.passed
    assert "part-00000.ndjson.gz: sha256" in evaluation.description


# -- S3 (moto server) ------------------------------------------------------------------------------


@pytest.mark.integration
def test_s3_export_roundtrip(tmp_path: Path, s3_settings: S3Settings) -> None:
    table = tmp_path / "events"
    rows = make_table(table)
    storage = s3_storage(s3_settings)
    client = s3_settings.client()

    result = export_table(str(table), None, storage, "events", "e1", part_max_rows=1000, batch_rows=500)

    assert result.rows == rows and result.parts == 3
    assert result.manifest_uri == f"s3://{s3_settings.bucket}/exports/events/e1/manifest.json"
    stored = {}
    for part in result.manifest["parts"]:
        obj = client.get_object(Bucket=s3_settings.bucket, Key=f"exports/{part['key']}")
        assert obj["ContentType"] == "application/gzip" and "ContentEncoding" not in obj
        stored[part["key"]] = obj["Body"].read()
    assert_parts_hold_table(stored, result.manifest, table)
    manifest = json.loads(
        client.get_object(Bucket=s3_settings.bucket, Key="exports/events/e1/manifest.json")["Body"].read()
    )
    assert manifest == result.manifest
    assert "Uploads" not in client.list_multipart_uploads(Bucket=s3_settings.bucket)
    assert verify_export(storage, result.manifest_key) == []
    with pytest.raises(FileExistsError):  # If-None-Match: * enforced by the server
        storage.put_manifest(result.manifest_key, b"{}")


@pytest.mark.integration
def test_s3_large_part_is_uploaded_in_several_multipart_chunks(
    tmp_path: Path, s3_settings: S3Settings
) -> None:
    table = tmp_path / "blobs"
    rng = random.Random(7)
    # ~12.8 MB of hex gzips to ~7.6 MB: more than one 5 MiB multipart chunk.
    blobs = pa.table({"id": list(range(20_000)), "hex": [rng.randbytes(320).hex() for _ in range(20_000)]})
    write_deltalake(str(table), blobs)
    storage = s3_storage(s3_settings, prefix="", part_size_bytes=5 * 1024 * 1024)

    result = export_table(str(table), None, storage, "blobs", "e1", level=1)

    [part] = result.manifest["parts"]
    assert part["bytes"] > 5 * 1024 * 1024
    head = s3_settings.client().head_object(Bucket=s3_settings.bucket, Key=part["key"])
    assert head["ETag"].strip('"').endswith("-2") and head["ContentLength"] == part["bytes"]
    assert verify_export(storage, result.manifest_key) == []


@pytest.mark.integration
def test_s3_failure_mid_export_leaves_no_manifest_and_no_pending_upload(
    tmp_path: Path,
    s3_settings: S3Settings,
) -> None:
    table = tmp_path / "events"
    make_table(table)
    storage = FailingS3Storage(lake=s3_lake(s3_settings), bucket=s3_settings.bucket)
    with pytest.raises(ConnectionError, match="injected"):
        export_table(str(table), None, storage, "events", "e1", part_max_rows=700, batch_rows=100)

    client = s3_settings.client()
    assert "Uploads" not in client.list_multipart_uploads(Bucket=s3_settings.bucket)
    assert storage.list_keys("events/") == []  # the finished parts 0 and 1 were never completed
    assert latest_manifest_key(storage, "events") is None


@pytest.mark.integration
def test_s3_abort_discards_uploaded_chunks(s3_settings: S3Settings) -> None:
    storage = s3_storage(s3_settings, part_size_bytes=5 * 1024 * 1024)
    writer = storage.open_part("t/e1/part-00000.ndjson.gz")
    writer.write(os.urandom(6 * 1024 * 1024))  # one 5 MiB chunk goes out, the rest stays buffered
    client = s3_settings.client()
    [upload] = client.list_multipart_uploads(Bucket=s3_settings.bucket)["Uploads"]
    assert (
        len(
            client.list_parts(Bucket=s3_settings.bucket, Key=upload["Key"], UploadId=upload["UploadId"])[
                "Parts"
            ]
        )
        == 1
    )
    writer.abort()
    writer.abort()  # idempotent
    assert "Uploads" not in client.list_multipart_uploads(Bucket=s3_settings.bucket)
    assert storage.list_keys("t/") == []


@pytest.mark.integration
def test_asset_and_check_against_s3(tmp_path: Path, s3_settings: S3Settings) -> None:
    rows = make_table(tmp_path / "lake" / "events")
    result = dg.materialize(
        [EXPORT_ASSET, EXPORT_CHECK],
        resources={"lake": _lake(tmp_path), "export_storage": s3_storage(s3_settings, prefix="exports/v1")},
        run_config=_run_config(part_max_rows=2000),
    )
    assert result.success
    meta = result.asset_materializations_for_node("events_export")[0].metadata
    assert meta["size_rows"] == dg.IntMetadataValue(rows) and meta["size_parts"] == dg.IntMetadataValue(2)
    assert meta["manifest_uri"] == dg.MetadataValue.url(
        f"s3://{s3_settings.bucket}/exports/v1/{meta['manifest_key'].value}"
    )
    [evaluation] = result.get_asset_check_evaluations()
    assert evaluation.passed
    keys = s3_settings.client().list_objects_v2(Bucket=s3_settings.bucket)["Contents"]
    assert sorted(k["Key"].rsplit("/", 1)[-1] for k in keys) == [
        "manifest.json",
        "part-00000.ndjson.gz",
        "part-00001.ndjson.gz",
    ]


def _exported_rows(tmp_path: Path, table: Path, export_id: str, **options: Any) -> list[dict[str, Any]]:
    storage = LocalExportStorage(root=str(tmp_path / "exports"))
    result = export_table(str(table), None, storage, "evolving", export_id, **options)
    rows = []
    for part in result.manifest["parts"]:
        rows += [
            json.loads(line)
            for line in gzip.decompress((tmp_path / "exports" / part["key"]).read_bytes()).splitlines()
        ]
    return sorted(rows, key=lambda row: row["id"])


def test_files_written_before_a_column_was_added_export_it_as_null(tmp_path: Path) -> None:
    """A plain scan reads the data files directly, and the files written before the merge lack the column."""
    table = tmp_path / "evolving"
    write_deltalake(
        str(table), pa.table({"id": pa.array([1, 2], pa.int64()), "n": pa.array([10, 20], pa.int32())})
    )
    newer = pa.table(
        {"id": pa.array([3], pa.int64()), "n": pa.array([30], pa.int32()), "note": pa.array(["new"])}
    )
    write_deltalake(str(table), newer, mode="append", schema_mode="merge")
    assert (
        plan_read(DeltaTable(str(table)), ExportSpec(dataset="evolving", table=str(table))).files is not None
    )
    rows = _exported_rows(tmp_path, table, "e1", batch_rows=1)
    assert rows == [
        {"id": 1, "n": 10, "note": None},
        {"id": 2, "n": 20, "note": None},
        {"id": 3, "n": 30, "note": "new"},
    ]


def test_a_partitioned_table_is_read_through_its_log_with_the_partition_values(tmp_path: Path) -> None:
    """Partition values live in the Delta log, not in the files: such tables keep the DataFusion read."""
    table = tmp_path / "partitioned"
    data = pa.table({"id": pa.array([1, 2, 3], pa.int64()), "day": pa.array(["d1", "d1", "d2"])})
    write_deltalake(str(table), data, partition_by=["day"])
    assert plan_read(DeltaTable(str(table)), ExportSpec(dataset="p", table=str(table))).files is None
    rows = _exported_rows(tmp_path, table, "e2")
    assert rows == [{"id": 1, "day": "d1"}, {"id": 2, "day": "d1"}, {"id": 3, "day": "d2"}]


def test_a_where_the_table_cannot_answer_names_the_query_and_leaves_nothing(tmp_path: Path) -> None:
    table = tmp_path / "t"
    write_deltalake(str(table), pa.table({"a": [1, 2]}))
    storage = LocalExportStorage(root=str(tmp_path / "x"))
    spec = ExportSpec(dataset="d", table=str(table), where="nope > 1")
    with pytest.raises(
        ValueError, match=r"(?s)export query failed: .*nope.*\n  query: SELECT .* WHERE \(nope > 1\)"
    ):
        export_table(str(table), None, storage, "d", "e1", spec=spec)
    assert storage.list_keys("d/") == []
