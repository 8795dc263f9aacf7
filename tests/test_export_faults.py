"""Exports under faults: a full filesystem (a real 2 MiB tmpfs) and S3 behind a proxy that cuts the
network for a while. A failed export leaves nothing under a part name; a short outage is ridden out."""

import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow as pa
import pytest
from deltalake import write_deltalake
from tcp_proxy import CuttableProxy
from test_export import make_table

from pipelines import deployment
from pipelines.export.cli import main as cli
from pipelines.export.exporter import export_table
from pipelines.export.manifest import verify_export
from resources.export_storage import LocalExportStorage, S3ExportStorage
from resources.export_storage.retry import DEFAULT_DEADLINE_S, S3Unavailable
from resources.lake import LakeResource

from fixtures_s3 import S3Settings

TMPFS_BYTES = 2 * 1024 * 1024


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MiB tmpfs (needs root or CAP_SYS_ADMIN, as in CI's container)."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("cannot mount a tmpfs here: no mount command")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES}", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def free_bytes(path: Path) -> int:
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


def incompressible_table(path: Path, rows: int) -> None:
    """Rows of random bytes (hex in JSON), so the export cannot shrink below the filesystem's size."""
    payload = [os.urandom(512).hex() for _ in range(rows)]
    write_deltalake(str(path), pa.table({"id": pa.array(range(rows), pa.int64()), "payload": payload}))


def test_an_export_onto_a_full_filesystem_leaves_nothing_behind(
    tmp_path: Path, small_filesystem: Path, capsys: pytest.CaptureFixture
) -> None:
    table = tmp_path / "t"
    incompressible_table(table, rows=4000)  # ~4 MiB of NDJSON for a 2 MiB filesystem
    storage = LocalExportStorage(root=str(small_filesystem))
    empty = free_bytes(small_filesystem)

    with pytest.raises(OSError) as failed:
        export_table(str(table), None, storage, "t", "e1", compression="none", part_max_bytes=256 * 1024)
    assert failed.value.errno == errno.ENOSPC
    # Several parts were complete before the disk filled: none is left, under its name or a temp one.
    assert storage.list_keys("") == []
    assert [p for p in small_filesystem.rglob("*") if p.is_file()] == []
    assert free_bytes(small_filesystem) == empty  # the space is given back at once, not in 24 h

    # The CLI says so in one line, and leaves nothing either.
    args = [
        "run",
        "--table",
        str(table),
        "--dataset",
        "t",
        "--to",
        str(small_filesystem),
        "--export-id",
        "e2",
    ]
    assert cli([*args, "--compression", "none", "--part-max-bytes", str(256 * 1024)]) == 2
    error = capsys.readouterr().err
    assert "No space left on device" in error and len(error.strip().splitlines()) == 1
    assert [p for p in small_filesystem.rglob("*") if p.is_file()] == []

    # And the filesystem takes the next export that fits.
    small = tmp_path / "small_table"
    incompressible_table(small, rows=100)
    result = export_table(str(small), None, storage, "small", "e1", compression="none")
    assert result.rows == 100 and verify_export(storage, result.manifest_key) == []


def proxied_lake(s3: S3Settings, proxy: CuttableProxy) -> LakeResource:
    """A lake whose S3 requests go through ``proxy``; boto3's own retries off, so only the export's
    retry deadline can ride out an outage."""
    return LakeResource(
        lake_uri=f"s3://{s3.bucket}/lake",
        landing_uri=f"s3://{s3.bucket}/landing",
        endpoint_url=proxy.url,
        region_name=s3.region,
        aws_access_key_id=s3.access_key,
        aws_secret_access_key=s3.secret_key,
        max_attempts=1,
    )


@pytest.fixture
def proxy(moto_server: str) -> Iterator[CuttableProxy]:
    upstream = urlsplit(moto_server)
    cuttable = CuttableProxy(upstream.hostname or "127.0.0.1", upstream.port or 80)
    try:
        yield cuttable
    finally:
        cuttable.close()


@pytest.mark.integration
def test_an_s3_export_rides_out_a_short_network_cut(
    tmp_path: Path, s3_settings: S3Settings, proxy: CuttableProxy
) -> None:
    table = tmp_path / "events"
    rows = make_table(table)
    storage = S3ExportStorage(
        lake=proxied_lake(s3_settings, proxy), bucket=s3_settings.bucket, retry_deadline_s=120
    )
    # The network goes away during the first chunk upload, for 3 s and at least two retries.
    proxy.cut_on(b"partNumber=", seconds=3.0, refusals=2)

    result = export_table(str(table), None, storage, "events", "e1", part_max_rows=700, batch_rows=100)

    assert proxy.cuts == 1 and proxy.refused >= 2  # the outage happened, and retries met it
    assert result.rows == rows and result.parts == 5
    assert verify_export(storage, result.manifest_key) == []
    assert "Uploads" not in s3_settings.client().list_multipart_uploads(Bucket=s3_settings.bucket)


@pytest.mark.integration
def test_an_s3_outage_past_the_deadline_fails_the_export_and_leaves_no_part(
    tmp_path: Path, s3_settings: S3Settings, proxy: CuttableProxy
) -> None:
    table = tmp_path / "events"
    make_table(table)
    storage = S3ExportStorage(
        lake=proxied_lake(s3_settings, proxy), bucket=s3_settings.bucket, retry_deadline_s=2
    )
    proxy.cut_on(b"part-00002", seconds=None)  # parts 0 and 1 are stored when the network goes

    with pytest.raises(S3Unavailable, match=r"S3 still failing after \d+s") as failed:
        export_table(str(table), None, storage, "events", "e1", part_max_rows=700, batch_rows=100)
    assert "\n" not in str(failed.value)
    proxy.restore()

    direct = s3_settings.client()
    assert "Contents" not in direct.list_objects_v2(Bucket=s3_settings.bucket, Prefix="exports/events/")
    # The uploads it could not abort during the outage go with the next export of the dataset.
    again = export_table(str(table), None, storage, "events", "e2", part_max_rows=700, batch_rows=100)
    assert again.aborted_uploads >= 2 and verify_export(storage, again.manifest_key) == []
    assert "Uploads" not in direct.list_multipart_uploads(Bucket=s3_settings.bucket)


def test_the_deployment_sets_the_s3_retry_deadline_of_exports(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAKERELAY_EXPORT_BUCKET", "exports-bucket")
    assert deployment.export_storage_resource().retry_deadline_s == DEFAULT_DEADLINE_S
    monkeypatch.setenv("LAKERELAY_EXPORT_RETRY_DEADLINE_S", "30")
    assert deployment.export_storage_resource().retry_deadline_s == 30.0
    monkeypatch.setenv("LAKERELAY_EXPORT_RETRY_DEADLINE_S", "soon")
    with pytest.raises(ValueError, match="must be a number"):
        deployment.export_storage_resource()


@pytest.mark.parametrize(
    "command",
    [
        ["sign", "s3://no-such-bucket/exports/v1/events/x/manifest.json"],
        ["verify", "s3://no-such-bucket/exports/v1/events/x/manifest.json"],
    ],
)
def test_the_cli_without_aws_credentials_says_so_in_one_line_and_exits_2(
    command: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    assert cli(command) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no AWS credentials found; set AWS_PROFILE" in err, err
