"""Exports against a real S3-compatible server (moto on 127.0.0.1): formats, signed URLs, the fetch
client with resume and tamper detection, and a kill -9 in the middle of an export."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import write_deltalake
from test_export import make_table, s3_storage

from pipelines.export.cli import main as cli
from pipelines.export.exporter import export_table
from pipelines.export.manifest import latest_manifest_key, verify_export

from fixtures_s3 import S3Settings

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.integration


@pytest.fixture
def s3_env(s3_settings: S3Settings, monkeypatch: pytest.MonkeyPatch) -> S3Settings:
    """The CLI's S3 settings come from the environment, as they would in a shell."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_settings.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_settings.secret_key)
    monkeypatch.setenv("AWS_REGION", s3_settings.region)
    monkeypatch.setenv("LAKERELAY_S3_ENDPOINT_URL", s3_settings.endpoint_url)
    return s3_settings


@pytest.mark.parametrize(("fmt", "compression"), [("csv", "zstd"), ("parquet", "gzip"), ("ndjson", "none")])
def test_formats_on_s3_verify_and_fetch(
    tmp_path: Path, s3_env: S3Settings, fmt: str, compression: str
) -> None:
    table = tmp_path / "t"
    write_deltalake(
        str(table), pa.table({"id": list(range(3000)), "text": [f'"v{i}",\n' for i in range(3000)]})
    )
    storage = s3_storage(s3_env)
    result = export_table(
        str(table),
        None,
        storage,
        "t",
        "e1",
        format=fmt,
        compression=compression,
        order_by="id",
        part_max_rows=1000,
    )
    assert verify_export(storage, result.manifest_key) == []
    head = s3_env.client().head_object(
        Bucket=s3_env.bucket, Key=f"exports/{result.manifest['parts'][0]['key']}"
    )
    assert "ContentEncoding" not in head  # clients must get the stored bytes, or the sha256 breaks
    uri = f"s3://{s3_env.bucket}/exports/t/e1/manifest.json"
    assert cli(["fetch", uri, "--dest", str(tmp_path / "dl"), "--quiet"]) == 0
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == sorted(
        ["manifest.json", *(p["key"].rsplit("/", 1)[-1] for p in result.manifest["parts"])]
    )


def test_signed_urls_resume_with_range_and_tampering_fails(
    tmp_path: Path, s3_env: S3Settings, capsys: pytest.CaptureFixture
) -> None:
    table = tmp_path / "events"
    make_table(table)
    storage = s3_storage(s3_env)
    result = export_table(str(table), None, storage, "events", "e1", part_max_rows=1500)
    manifest_uri = f"s3://{s3_env.bucket}/exports/events/e1/manifest.json"
    bundle = tmp_path / "signed.json"
    assert cli(["sign", manifest_uri, "--expires", "3600", "--output", str(bundle)]) == 0
    signed = json.loads(bundle.read_text())
    assert "X-Amz-Expires=3600" in signed["manifest_url"] and len(signed["parts"]) == 2
    assert all("X-Amz-Signature=" in p["url"] for p in signed["parts"])
    assert cli(["sign", manifest_uri, "--expires", str(8 * 24 * 3600)]) == 2  # beyond 7 days: refused

    # An interrupted download: half of part 0 is already on disk.
    dest = tmp_path / "dl"
    dest.mkdir()
    part0 = result.manifest["parts"][0]
    stored = s3_env.client().get_object(Bucket=s3_env.bucket, Key=f"exports/{part0['key']}")["Body"].read()
    (dest / "part-00000.ndjson.gz.partial").write_bytes(stored[: len(stored) // 2])
    capsys.readouterr()
    assert cli(["fetch", str(bundle), "--dest", str(dest), "--quiet"]) == 0
    out = capsys.readouterr().out
    total = sum(p["bytes"] for p in result.manifest["parts"])
    assert f"({total - len(stored) // 2} bytes downloaded, 1 part(s) resumed)" in out
    assert (dest / "part-00000.ndjson.gz").read_bytes() == stored

    # Plain URL of a public export: parts are fetched from the same folder URL.
    for item in [result.manifest_key, *(p["key"] for p in result.manifest["parts"])]:
        s3_env.client().put_object_acl(Bucket=s3_env.bucket, Key=f"exports/{item}", ACL="public-read")
    url = f"{s3_env.endpoint_url}/{s3_env.bucket}/exports/events/e1/manifest.json"
    assert cli(["fetch", url, "--dest", str(tmp_path / "dl-url"), "--quiet"]) == 0

    # Tamper with a stored part (same size): the client must notice and exit non-zero.
    part1 = result.manifest["parts"][1]
    data = bytearray(
        s3_env.client().get_object(Bucket=s3_env.bucket, Key=f"exports/{part1['key']}")["Body"].read()
    )
    data[-20] ^= 0xFF
    s3_env.client().put_object(Bucket=s3_env.bucket, Key=f"exports/{part1['key']}", Body=bytes(data))
    capsys.readouterr()
    assert cli(["fetch", manifest_uri, "--dest", str(tmp_path / "dl2"), "--quiet"]) == 1
    assert "MISMATCH events/e1/part-00001.ndjson.gz: sha256" in capsys.readouterr().err


_SLOW_EXPORT = """
import sys, time
from pipelines.export.exporter import export_table
from resources.export_storage import S3ExportStorage
from resources.lake import LakeResource

class SlowS3(S3ExportStorage):  # real S3 writes, slowed so the test can kill the run mid-way
    def open_part(self, key, content_type="application/octet-stream"):
        writer = super().open_part(key, content_type)
        write = writer.write
        def slow_write(data):
            write(data)
            time.sleep(0.05)
        writer.write = slow_write
        return writer

endpoint, bucket, table = sys.argv[1:4]
lake = LakeResource(lake_uri=f"s3://{bucket}/lake", landing_uri=f"s3://{bucket}/landing",
                    endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing")
storage = SlowS3(lake=lake, bucket=bucket)
export_table(table, None, storage, "events", "killed", part_max_rows=300, batch_rows=100)
"""


def test_kill_9_mid_export_leaves_no_manifest_and_a_rerun_completes(
    tmp_path: Path, s3_settings: S3Settings
) -> None:
    table = tmp_path / "events"
    rows = make_table(table)
    script = tmp_path / "slow_export.py"
    script.write_text(_SLOW_EXPORT)
    client = s3_settings.client()
    proc = subprocess.Popen(
        [sys.executable, str(script), s3_settings.endpoint_url, s3_settings.bucket, str(table)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # wait until one part is complete and the next one is open
            keys = [o["Key"] for o in client.list_objects_v2(Bucket=s3_settings.bucket).get("Contents", [])]
            if "exports/events/killed/part-00001.ndjson.gz" in keys and client.list_multipart_uploads(
                Bucket=s3_settings.bucket
            ).get("Uploads"):
                break
            assert proc.poll() is None, "the export ended before it could be killed"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL

    storage = s3_storage(s3_settings)
    assert latest_manifest_key(storage, "events") is None  # the killed export is invisible
    assert client.list_multipart_uploads(Bucket=s3_settings.bucket).get("Uploads")  # left pending by the kill

    rerun = export_table(str(table), None, storage, "events", "rerun", part_max_rows=1000)

    assert rerun.aborted_uploads >= 1
    assert "Uploads" not in client.list_multipart_uploads(Bucket=s3_settings.bucket)
    assert latest_manifest_key(storage, "events") == "events/rerun/manifest.json"
    assert rerun.rows == rows and verify_export(storage, rerun.manifest_key) == []
