"""Where lakerelay keeps its Delta tables, landing zone and state: a local folder or an S3 prefix.

``LakeResource`` is the one S3 setup of the project: its connection fields are dagster-aws's
(``ResourceWithS3Configuration``: region, endpoint, credentials, profile, retries, TLS), and every
client is built from them here: delta-rs tables (``table``), pyarrow filesystems (``resolve``), boto3
clients (``s3_client``) and the export storage on S3, which holds a ``LakeResource`` too.
"""

import json
import os
import uuid
from typing import TYPE_CHECKING, Any

import boto3
import pyarrow.fs as pafs
from botocore.config import Config as BotoConfig
from dagster_aws.s3.resources import ResourceWithS3Configuration
from dagster_aws.s3.utils import construct_s3_client
from dagster_aws.utils import construct_boto_client_retry_config
from pydantic import Field

from resources.filesystem import DEFAULT_REGION, FileSystemSettings, split_uri

if TYPE_CHECKING:  # imported when a table is opened: see table()
    from deltalake import DeltaTable

__all__ = ["DEFAULT_REGION", "FileSystemSettings", "LakeResource"]


class LakeResource(ResourceWithS3Configuration):
    """Storage settings shared by the landing zone, the Delta tables and lakerelay's own state.

    Both URIs may be a local folder (the embedded default) or ``s3://bucket/prefix``. The S3 settings
    (dagster-aws's fields) apply to every S3 URI opened through this resource; leave them unset to use
    the standard AWS environment (profile, instance role) in ``DEFAULT_REGION``.
    """

    lake_uri: str = Field(description="Root of the Delta tables and lakerelay state (folder or s3://...).")
    landing_uri: str = Field(description="Root of the landing zone that new files arrive in.")

    @property
    def region(self) -> str:
        return self.region_name or DEFAULT_REGION

    # -- URIs -------------------------------------------------------------------------------------
    def table_uri(self, name: str) -> str:
        """URI of the Delta table ``name`` under the lake root; an absolute path or a URI as it is."""
        if "://" in name or name.startswith("/"):
            return name
        return _join(self.lake_uri, name)

    def state_uri(self, *parts: str) -> str:
        """URI for lakerelay's own bookkeeping (ledgers, sink progress) under ``<lake>/_lakerelay``."""
        return _join(self.lake_uri, "_lakerelay", *parts)

    # -- delta-rs ---------------------------------------------------------------------------------
    def storage_options(self, uri: str | None = None) -> dict[str, str]:
        """Options for ``deltalake`` (object_store keys) to reach ``uri`` (default: the lake root).

        Empty for a local URI. ``AWS_ALLOW_HTTP`` only for an ``http://`` endpoint: a TLS endpoint
        must never be talked to in clear text.
        """
        if split_uri(uri or self.lake_uri)[0] != "s3":
            return {}
        options = {"AWS_REGION": self.region}
        if self.endpoint_url:
            options["AWS_ENDPOINT_URL"] = self.endpoint_url
            if self.endpoint_url.startswith("http://"):
                options["AWS_ALLOW_HTTP"] = "true"
        if self.aws_access_key_id:
            options["AWS_ACCESS_KEY_ID"] = self.aws_access_key_id
        if self.aws_secret_access_key:
            options["AWS_SECRET_ACCESS_KEY"] = self.aws_secret_access_key
        if self.aws_session_token:
            options["AWS_SESSION_TOKEN"] = self.aws_session_token
        return options

    def table(self, name: str, version: int | None = None) -> "DeltaTable":
        """The Delta table ``name`` (see ``table_uri``), at ``version`` or the latest one."""
        # Imported here, not at the top: deployment imports this module before the export package
        # sets the allocator options deltalake reads when it first loads (pipelines/export/alloc.py).
        from deltalake import DeltaTable

        uri = self.table_uri(name)
        return DeltaTable(uri, version=version, storage_options=self.storage_options(uri) or None)

    # -- pyarrow filesystems ----------------------------------------------------------------------
    def filesystem_settings(self) -> "FileSystemSettings":
        """A small picklable description of the filesystem, for Spark executors."""
        return FileSystemSettings(
            endpoint_url=self.endpoint_url,
            region=self.region,
            access_key=self.aws_access_key_id,
            secret_key=self.aws_secret_access_key,
            session_token=self.aws_session_token,
        )

    def resolve(self, uri: str) -> tuple[pafs.FileSystem, str]:
        """(pyarrow filesystem, path inside it) for a URI under this lake's settings."""
        return self.filesystem_settings().resolve(uri)

    # -- boto3 --------------------------------------------------------------------------------------
    def s3_client(self) -> Any:
        """A boto3 S3 client with these settings, as dagster-aws's ``S3Resource`` builds it."""
        return construct_s3_client(
            max_attempts=self.max_attempts,
            region_name=self.region,
            endpoint_url=self.endpoint_url,
            use_unsigned_session=self.use_unsigned_session,
            profile_name=self.profile_name,
            use_ssl=self.use_ssl,
            verify=self.verify,
            aws_access_key_id=self.aws_access_key_id,
            aws_secret_access_key=self.aws_secret_access_key,
            aws_session_token=self.aws_session_token,
        )

    def s3_presign_client(self) -> Any:
        """Like ``s3_client`` but signing with SigV4, which botocore may not pick for a custom endpoint
        (presigned URLs would then carry SigV2 query auth)."""
        session = boto3.session.Session(profile_name=self.profile_name)
        config = construct_boto_client_retry_config(self.max_attempts).merge(
            BotoConfig(signature_version="s3v4")
        )
        return session.client(
            "s3",
            region_name=self.region,
            endpoint_url=self.endpoint_url,
            use_ssl=self.use_ssl,
            verify=self.verify,
            aws_access_key_id=self.aws_access_key_id,
            aws_secret_access_key=self.aws_secret_access_key,
            aws_session_token=self.aws_session_token,
            config=config,
        )

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
