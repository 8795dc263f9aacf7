"""Picklable storage settings for code that runs in Spark executors: no Dagster, no boto3 here.

Spark's Python workers import the modules of the functions they run; keeping this one light makes
every task (and every Spark Connect session's workers) start faster.
"""

import os
from urllib.parse import urlparse

import pyarrow.fs as pafs

# The region of every S3 client, delta-rs table and pyarrow filesystem when none is configured (the
# one place it is written: LakeResource and the executors' settings read it from here).
DEFAULT_REGION = "us-east-1"


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
    """Picklable S3/local settings that rebuild a pyarrow filesystem wherever they are unpickled."""

    def __init__(
        self,
        endpoint_url: str | None = None,
        region: str = DEFAULT_REGION,
        access_key: str | None = None,
        secret_key: str | None = None,
        session_token: str | None = None,
    ) -> None:
        self.endpoint_url = endpoint_url
        self.region = region
        self.access_key = access_key
        self.secret_key = secret_key
        self.session_token = session_token

    def resolve(self, uri: str) -> tuple[pafs.FileSystem, str]:
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
        return pafs.S3FileSystem(**kwargs), path

    def __repr__(self) -> str:  # never print a secret
        return f"FileSystemSettings(endpoint_url={self.endpoint_url!r}, region={self.region!r})"
