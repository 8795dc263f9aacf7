"""Where lakerelay keeps its Delta tables, landing zone and state: a local folder or an S3 prefix."""

import json
import os
import uuid
from typing import Any

import boto3
import dagster as dg
import pyarrow.fs as pafs
from pydantic import Field

from resources.filesystem import FileSystemSettings, split_uri

__all__ = ["FileSystemSettings", "LakeResource"]


class LakeResource(dg.ConfigurableResource):
    """Storage settings shared by the landing zone, the Delta tables and lakerelay's own state.

    Both URIs may be a local folder (the embedded default) or ``s3://bucket/prefix``. The S3 settings
    apply to both; leave them unset to use the standard AWS environment (profile, instance role).
    """

    lake_uri: str = Field(description="Root of the Delta tables and lakerelay state (folder or s3://...).")
    landing_uri: str = Field(description="Root of the landing zone that new files arrive in.")
    aws_endpoint_url: str | None = Field(
        default=None, description="S3-compatible endpoint, e.g. http://127.0.0.1:9000 (MinIO, moto)."
    )
    aws_region: str = "us-east-1"
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = None

    # -- URIs -------------------------------------------------------------------------------------
    def table_uri(self, name: str) -> str:
        """URI of the Delta table ``name`` under the lake root."""
        return _join(self.lake_uri, name)

    def state_uri(self, *parts: str) -> str:
        """URI for lakerelay's own bookkeeping (ledgers, sink progress) under ``<lake>/_lakerelay``."""
        return _join(self.lake_uri, "_lakerelay", *parts)

    # -- delta-rs ---------------------------------------------------------------------------------
    def storage_options(self) -> dict[str, str]:
        """Options for ``deltalake`` (object_store keys); empty for local tables."""
        if split_uri(self.lake_uri)[0] != "s3":
            return {}
        options = {"AWS_REGION": self.aws_region}
        if self.aws_endpoint_url:
            options["AWS_ENDPOINT_URL"] = self.aws_endpoint_url
            if self.aws_endpoint_url.startswith("http://"):
                options["AWS_ALLOW_HTTP"] = "true"
        if self.aws_access_key_id:
            options["AWS_ACCESS_KEY_ID"] = self.aws_access_key_id
        if self.aws_secret_access_key:
            options["AWS_SECRET_ACCESS_KEY"] = self.aws_secret_access_key
        return options

    # -- pyarrow filesystems ----------------------------------------------------------------------
    def filesystem_settings(self) -> "FileSystemSettings":
        """A small picklable description of the filesystem, for Spark executors."""
        return FileSystemSettings(
            endpoint_url=self.aws_endpoint_url,
            region=self.aws_region,
            access_key=self.aws_access_key_id,
            secret_key=self.aws_secret_access_key,
        )

    def s3_client(self) -> Any:
        """A boto3 S3 client with these settings, for calls pyarrow's filesystem lacks (StartAfter)."""
        return boto3.client(
            "s3",
            endpoint_url=self.aws_endpoint_url,
            region_name=self.aws_region,
            aws_access_key_id=self.aws_access_key_id,
            aws_secret_access_key=self.aws_secret_access_key,
        )

    def resolve(self, uri: str) -> tuple[pafs.FileSystem, str]:
        """(pyarrow filesystem, path inside it) for a URI under this lake's settings."""
        return self.filesystem_settings().resolve(uri)

    # -- small JSON state files -------------------------------------------------------------------
    def read_state(self, *parts: str) -> dict | None:
        """Read a JSON state document, or None when it does not exist yet."""
        fs, path = self.resolve(self.state_uri(*parts))
        try:
            with fs.open_input_stream(path) as stream:
                return json.loads(stream.read())
        except FileNotFoundError:
            return None

    def write_state(self, document: dict, *parts: str) -> None:
        """Replace a JSON state document atomically (rename locally; a single PUT on S3)."""
        fs, path = self.resolve(self.state_uri(*parts))
        payload = json.dumps(document, indent=1, sort_keys=True).encode()
        parent = path.rsplit("/", 1)[0]
        fs.create_dir(parent, recursive=True)
        if isinstance(fs, pafs.LocalFileSystem):
            tmp = f"{path}.{uuid.uuid4().hex}.tmp"
            with fs.open_output_stream(tmp) as out:
                out.write(payload)
            os.replace(tmp, path)
        else:
            with fs.open_output_stream(path) as out:
                out.write(payload)


def _join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *[p.strip("/") for p in parts if p]])
