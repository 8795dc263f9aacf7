"""The one S3 settings object, picklable for code that runs in Spark executors: no Dagster here.

Every S3 client of the project is built from a ``FileSystemSettings`` (``LakeResource`` makes it from
its fields): delta-rs storage options (``storage_options``), pyarrow filesystems (``resolve``) and
boto3 clients (``s3_client``: the landing listing, the lease log, exports, presigning). One place
decides what each client gets, so a setting (the session token of temporary credentials, retries)
cannot reach one client and miss another. boto3 is imported only when a client is built: Spark's
Python workers import the modules of the functions they run, and keeping this one light makes every
task (and every Spark Connect session's workers) start faster.
"""

import os
from typing import Any
from urllib.parse import urlparse

import pyarrow.fs as pafs

# The region of every S3 client, delta-rs table and pyarrow filesystem when none is configured (the
# one place it is written: LakeResource and the executors' settings read it from here).
DEFAULT_REGION = "us-east-1"
BOTO3_ATTEMPTS = 5  # boto3's attempts when none are configured: dagster-aws's default


def split_uri(uri: str) -> tuple[str, str]:
    """('s3', 'bucket/prefix') or ('file', '/abs/path') for a URI or a plain local path."""
    parsed = urlparse(uri)
    if parsed.scheme in ("s3", "s3a"):
        return "s3", f"{parsed.netloc}/{parsed.path.lstrip('/')}".rstrip("/")
    if parsed.scheme in ("", "file"):
        path = parsed.path if parsed.scheme == "file" else uri
        return "file", os.path.abspath(path)
    raise ValueError(
        f"unsupported storage URI {uri!r}: use a local folder, file:///path or s3://bucket/prefix"
    )


class FileSystemSettings:
    """Picklable S3/local settings that rebuild a client wherever they are unpickled.

    Without keys, every client uses the standard AWS environment (variables, profile, instance role).
    ``max_attempts`` counts the first try; None leaves each client its own retry policy (delta-rs:
    10 retries within 3 minutes; pyarrow: 3 attempts; boto3: ``BOTO3_ATTEMPTS``, dagster-aws's default).
    """

    def __init__(
        self,
        endpoint_url: str | None = None,
        region: str = DEFAULT_REGION,
        access_key: str | None = None,
        secret_key: str | None = None,
        session_token: str | None = None,
        max_attempts: int | None = None,
    ) -> None:
        self.endpoint_url = endpoint_url
        self.region = region
        self.access_key = access_key
        self.secret_key = secret_key
        self.session_token = session_token
        self.max_attempts = max_attempts

    # -- pyarrow ----------------------------------------------------------------------------------
    def resolve(self, uri: str) -> tuple[pafs.FileSystem, str]:
        """(pyarrow filesystem, path inside it) for a local path or an ``s3://`` URI."""
        scheme, path = split_uri(uri)
        if scheme == "file":
            return pafs.LocalFileSystem(), path
        kwargs: dict = {"region": self.region}
        if self.endpoint_url:
            parsed = urlparse(self.endpoint_url)
            kwargs["endpoint_override"] = parsed.netloc
            kwargs["scheme"] = parsed.scheme or "https"
        if self.access_key:
            kwargs["access_key"] = self.access_key
            kwargs["secret_key"] = self.secret_key
            if self.session_token:
                kwargs["session_token"] = self.session_token
        if self.max_attempts:
            kwargs["retry_strategy"] = pafs.AwsStandardS3RetryStrategy(max_attempts=self.max_attempts)
        return pafs.S3FileSystem(**kwargs), path

    # -- delta-rs ---------------------------------------------------------------------------------
    def storage_options(self, uri: str) -> dict[str, str]:
        """Options for ``deltalake`` (object_store keys) to reach ``uri``; empty for a local URI.

        ``AWS_ALLOW_HTTP`` only for an ``http://`` endpoint: a TLS endpoint must never be talked to
        in clear text.
        """
        if split_uri(uri)[0] != "s3":
            return {}
        options = {"AWS_REGION": self.region}
        if self.endpoint_url:
            options["AWS_ENDPOINT_URL"] = self.endpoint_url
            if self.endpoint_url.startswith("http://"):
                options["AWS_ALLOW_HTTP"] = "true"
        if self.access_key:
            options["AWS_ACCESS_KEY_ID"] = self.access_key
        if self.secret_key:
            options["AWS_SECRET_ACCESS_KEY"] = self.secret_key
        if self.session_token:
            options["AWS_SESSION_TOKEN"] = self.session_token
        if self.max_attempts:
            options["max_retries"] = str(max(0, self.max_attempts - 1))  # object_store counts retries
        return options

    # -- boto3 ------------------------------------------------------------------------------------
    def s3_client(self, presign: bool = False) -> Any:
        """A boto3 S3 client. ``presign``: one that signs with SigV4, which botocore may not pick for a
        custom endpoint (presigned URLs would then carry SigV2 query auth)."""
        import boto3  # here: tasks on a local lake never pay for its import
        from botocore.config import Config

        config = Config(
            retries={"mode": "standard", "total_max_attempts": self.max_attempts or BOTO3_ATTEMPTS},
            signature_version="s3v4" if presign else None,
        )
        return boto3.Session().client(
            "s3",
            region_name=self.region,
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            aws_session_token=self.session_token,
            config=config,
        )

    def __repr__(self) -> str:  # never print a secret
        return f"FileSystemSettings(endpoint_url={self.endpoint_url!r}, region={self.region!r})"
