"""One S3 settings object for every client: temporary credentials against a moto server that checks
every signature, so a client that drops the session token is refused as it would be on AWS."""

import pickle
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import boto3
import pyarrow as pa
import pyarrow.fs as pafs
import pytest
import requests
from botocore.exceptions import ClientError
from deltalake import QueryBuilder, write_deltalake

from pipelines import deployment
from pipelines.export.exporter import export_table
from pipelines.export.manifest import verify_export
from pipelines.export.spec import ExportSpec
from pipelines.ingest.maintenance import maintain_table
from resources.export_storage import S3ExportStorage
from resources.lake import LakeResource, UnsupportedS3Setting
from resources.lease.log import LeaseLog
from resources.lease.record import LeaseRecord

from fixtures_s3 import S3Settings, set_moto_auth

pytestmark = pytest.mark.integration


def deployment_lake(s3: S3Settings, monkeypatch: pytest.MonkeyPatch) -> LakeResource:
    """The lake a deployment builds from its environment, given temporary credentials."""
    monkeypatch.setenv("LAKERELAY_LAKE_URI", f"s3://{s3.bucket}/lake")
    monkeypatch.setenv("LAKERELAY_LANDING_URI", f"s3://{s3.bucket}/landing")
    monkeypatch.setenv("LAKERELAY_S3_ENDPOINT_URL", s3.endpoint_url)
    monkeypatch.setenv("AWS_REGION", s3.region)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3.secret_key)
    monkeypatch.setenv("AWS_SESSION_TOKEN", s3.session_token or "")
    return deployment.resolved(deployment.lake_resource())


def test_the_server_refuses_a_request_signed_without_the_session_token(moto_with_auth: S3Settings) -> None:
    s3 = moto_with_auth
    s3.client().list_objects_v2(Bucket=s3.bucket)  # with the token: accepted
    without_token = boto3.client(
        "s3",
        endpoint_url=s3.endpoint_url,
        region_name=s3.region,
        aws_access_key_id=s3.access_key,
        aws_secret_access_key=s3.secret_key,
    )
    with pytest.raises(ClientError, match="InvalidAccessKeyId"):
        without_token.list_objects_v2(Bucket=s3.bucket)


def test_every_s3_path_signs_with_the_session_token(
    moto_with_auth: S3Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3 = moto_with_auth
    lake = deployment_lake(s3, monkeypatch)

    # boto3 (the landing listing, the export CLI): a file lands.
    lake.s3_client().put_object(Bucket=s3.bucket, Key="landing/events/a.json", Body=b'{"k": 1}\n')

    # pyarrow: the landing zone listed and read, as the ingest and the Spark tasks read it.
    fs, root = lake.resolve(lake.landing_uri)
    [info] = [i for i in fs.get_file_info(pafs.FileSelector(root, recursive=True)) if i.is_file]
    with fs.open_input_stream(info.path) as stream:
        assert stream.read() == b'{"k": 1}\n'
    executor_fs, _ = pickle.loads(pickle.dumps(lake.filesystem_settings())).resolve(lake.landing_uri)
    assert executor_fs.get_file_info(info.path).size == 9

    # delta-rs: appends, a compaction, a read.
    table_uri = lake.table_uri("t")
    for k in range(1, 4):
        write_deltalake(
            table_uri,
            pa.table({"k": pa.array([k, k], pa.int64())}),
            mode="append",
            storage_options=lake.storage_options(table_uri),
        )
    # delta-rs's own reader (DataFusion), which signs the data files' GETs itself.
    counted = QueryBuilder().register("t", lake.table("t")).execute("select count(*) as n from t").read_all()
    assert pa.table(counted)["n"].to_pylist() == [6]

    # The lease log (boto3, conditional PUTs), also as Spark tasks unpickle it.
    lease = LeaseLog(lake.state_uri("leases", "t"), lake.filesystem_settings())
    assert lease.append(LeaseRecord(seq=1, token=1, owner="test", expires_at=1e10))
    assert pickle.loads(pickle.dumps(lease)).latest().owner == "test"

    # Exports: multipart uploads, the create-only manifest, the since check reading the Delta log.
    storage = S3ExportStorage(lake=lake, bucket=s3.bucket, prefix="exports")
    spec = ExportSpec(dataset="t", table=table_uri, order_by="k")
    first = export_table("t", lake, storage, "t", "e1", spec=spec)
    maintain_table(table_uri, lake.storage_options(table_uri), retention_hours=168)
    write_deltalake(
        table_uri,
        pa.table({"k": pa.array([4], pa.int64())}),
        mode="append",
        storage_options=lake.storage_options(table_uri),
    )
    second = export_table("t", lake, storage, "t", "e2", spec=spec, since=first.next_cursor)
    assert (first.rows, second.rows) == (6, 1)
    assert verify_export(storage, second.manifest_key) == []

    # Presigned URLs carry the token (AWS refuses them without it). moto's authentication mode
    # cannot check presigned URLs, so the download itself is checked with it off.
    url = storage.presign(second.manifest_key, 60)
    query = parse_qs(urlsplit(url).query)
    assert query["X-Amz-Security-Token"] == [s3.session_token]
    assert query["X-Amz-Credential"][0].startswith(s3.access_key + "/")
    set_moto_auth(s3.endpoint_url, enabled=False)
    try:
        response = requests.get(url, timeout=30)
    finally:
        set_moto_auth(s3.endpoint_url, enabled=True)
    assert response.status_code == 200 and response.content == storage.read_bytes(second.manifest_key)


@pytest.mark.parametrize(
    ("setting", "says"),
    [
        ({"profile_name": "dev"}, "set AWS_PROFILE in the environment"),
        ({"use_ssl": False}, "give endpoint_url an http:// scheme"),
        ({"verify": False}, "TLS verification stays on"),
        ({"use_unsigned_session": True}, "leave it unset"),
        ({"max_attempts": 0}, "at least 1"),
    ],
)
def test_settings_a_client_would_ignore_are_refused_at_load(setting: dict, says: str, tmp_path: Path) -> None:
    with pytest.raises(UnsupportedS3Setting, match=says) as refused:
        LakeResource(lake_uri=str(tmp_path), landing_uri=str(tmp_path), **setting)
    assert "\n" not in str(refused.value)


def test_max_attempts_reaches_every_client_only_when_set(tmp_path: Path) -> None:
    default = LakeResource(lake_uri="s3://b/lake", landing_uri="s3://b/landing")
    assert "max_retries" not in default.storage_options()  # delta-rs keeps its own 10 retries
    lake = LakeResource(lake_uri="s3://b/lake", landing_uri="s3://b/landing", max_attempts=3)
    assert lake.storage_options()["max_retries"] == "2"
    assert lake.s3_client().meta.config.retries["total_max_attempts"] == 3  # the first try counts
    assert lake.filesystem_settings().max_attempts == 3  # pyarrow's retry strategy
