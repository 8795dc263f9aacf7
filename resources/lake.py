"""Where lakerelay keeps its Delta tables, landing zone and state: a local folder or an S3 prefix.

``LakeResource`` is the one S3 setup of the project: its connection fields are dagster-aws's
(``ResourceWithS3Configuration``), and every client is built from them through one
``FileSystemSettings``: delta-rs tables (``table``, ``storage_options``), pyarrow filesystems
(``resolve``), boto3 clients (``s3_client``, ``s3_presign_client``), the lease log and the export
storage on S3, which holds a ``LakeResource`` too. Region, endpoint, keys, session token and
``max_attempts`` reach every client; the dagster-aws fields that delta-rs or pyarrow cannot honour
(``profile_name``, ``use_ssl=False``, ``verify=False``, ``use_unsigned_session``) are refused when
the resource is built, with what to do instead, rather than honoured by boto3 alone.
"""

import json
import os
import uuid
from typing import TYPE_CHECKING, Any

import pyarrow.fs as pafs
from dagster_aws.s3.resources import ResourceWithS3Configuration
from pydantic import Field, model_validator

from resources.filesystem import DEFAULT_REGION, FileSystemSettings

if TYPE_CHECKING:  # imported when a table is opened: see table()
    from deltalake import DeltaTable

__all__ = ["DEFAULT_REGION", "FileSystemSettings", "LakeResource", "UnsupportedS3Setting"]


class UnsupportedS3Setting(Exception):
    """A LakeResource setting that some S3 client of the project would silently ignore.

    Not a ValueError on purpose: pydantic would wrap it in a multi-line validation report.
    """


def _refusals(lake: "LakeResource") -> list[str]:
    """What is wrong with ``lake``'s S3 fields, one sentence each (empty: every client honours them)."""
    refused = []
    if lake.profile_name:
        refused.append(
            "profile_name is not honoured by delta-rs and pyarrow: leave it unset and "
            "set AWS_PROFILE in the environment (every client reads it), or give the keys"
        )
    if not lake.use_ssl:
        refused.append(
            "use_ssl=False is not honoured by delta-rs and pyarrow: give endpoint_url an http:// scheme instead"
        )
    if lake.verify is False:
        refused.append(
            "verify=False cannot be honoured by pyarrow and is refused: TLS verification stays on; trust the "
            "endpoint's CA in the system store (or AWS_CA_BUNDLE) instead"
        )
    if lake.use_unsigned_session:
        refused.append(
            "use_unsigned_session=True is not honoured by delta-rs, pyarrow and the lease log, which write: "
            "leave it unset"
        )
    if lake.max_attempts < 1:
        refused.append(f"max_attempts={lake.max_attempts} must be at least 1 (the first try counts)")
    return refused


class LakeResource(ResourceWithS3Configuration):
    """Storage settings shared by the landing zone, the Delta tables and lakerelay's own state.

    Both URIs may be a local folder (the embedded default) or ``s3://bucket/prefix``. The S3 settings
    (dagster-aws's fields) apply to every S3 URI opened through this resource; leave them unset to use
    the standard AWS environment (profile, instance role) in ``DEFAULT_REGION``.
    """

    lake_uri: str = Field(description="Root of the Delta tables and lakerelay state (folder or s3://...).")
    landing_uri: str = Field(description="Root of the landing zone that new files arrive in.")

    @model_validator(mode="after")
    def _every_client_honours_the_settings(self) -> "LakeResource":
        refused = _refusals(self)
        if refused:
            raise UnsupportedS3Setting("LakeResource: " + "; ".join(refused))
        return self

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
        """Options for ``deltalake`` (object_store keys) to reach ``uri`` (default: the lake root);
        empty for a local URI."""
        return self.filesystem_settings().storage_options(uri or self.lake_uri)

    def table(self, name: str, version: int | None = None) -> "DeltaTable":
        """The Delta table ``name`` (see ``table_uri``), at ``version`` or the latest one."""
        # Imported here, not at the top: deployment imports this module before the export package
        # sets the allocator options deltalake reads when it first loads (pipelines/export/alloc.py).
        from deltalake import DeltaTable

        uri = self.table_uri(name)
        return DeltaTable(uri, version=version, storage_options=self.storage_options(uri) or None)

    # -- the one settings object every client is built from ---------------------------------------
    def filesystem_settings(self) -> "FileSystemSettings":
        """A small picklable description of the storage settings, for every client and Spark tasks."""
        return FileSystemSettings(
            endpoint_url=self.endpoint_url,
            region=self.region,
            access_key=self.aws_access_key_id,
            secret_key=self.aws_secret_access_key,
            session_token=self.aws_session_token,
            # Only when set: dagster-aws's default (5, for boto3) would cut delta-rs's own retries
            # (10 within 3 minutes), which ride out short network cuts.
            max_attempts=self.max_attempts if "max_attempts" in self.model_fields_set else None,
        )

    def resolve(self, uri: str) -> tuple[pafs.FileSystem, str]:
        """(pyarrow filesystem, path inside it) for a URI under this lake's settings."""
        return self.filesystem_settings().resolve(uri)

    def s3_client(self) -> Any:
        """A boto3 S3 client with these settings."""
        return self.filesystem_settings().s3_client()

    def s3_presign_client(self) -> Any:
        """Like ``s3_client`` but signing with SigV4, which botocore may not pick for a custom endpoint
        (presigned URLs would then carry SigV2 query auth)."""
        return self.filesystem_settings().s3_client(presign=True)

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
