"""Where bulk exports are written: a local folder (the embedded default) or an S3 bucket.

Objects are addressed by storage-relative keys such as ``events/<export_id>/part-00000.ndjson.gz``.
A part becomes visible under its key only when it is complete (rename locally, CompleteMultipartUpload
on S3); the manifest is written create-only, so a finished export can never be overwritten.
"""

import contextlib
import logging
import os
import uuid
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, BinaryIO

import boto3
import dagster as dg
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError
from dagster_aws.s3 import S3Resource
from pydantic import Field, PrivateAttr

log = logging.getLogger(__name__)

MiB = 1024 * 1024
S3_MIN_PART_BYTES = 5 * MiB  # S3 rejects smaller non-final multipart parts (EntityTooSmall)
S3_MAX_PARTS = 10_000


def check_key(key: str) -> str:
    """Reject keys that could escape the storage root or collide with temporary files."""
    segments = key.split("/")
    if not key or key.startswith("/") or any(s in ("", ".", "..") or s.startswith(".") for s in segments):
        raise ValueError(f"invalid export key {key!r}: use relative 'a/b/c' keys without dot segments")
    return key


class PartWriter(ABC):
    """A streamed upload of one object; nothing is visible under the key until ``close()`` succeeds."""

    @abstractmethod
    def write(self, data: bytes) -> None:
        """Append bytes to the object being written."""

    @abstractmethod
    def close(self) -> None:
        """Finish the object and make it visible under its key."""

    @abstractmethod
    def abort(self) -> None:
        """Discard whatever was written; safe to call more than once and after a failed close."""

    def __enter__(self) -> "PartWriter":
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class ExportStorage(dg.ConfigurableResource, ABC):
    """Target of bulk exports. Implementations: ``LocalExportStorage`` and ``S3ExportStorage``."""

    @abstractmethod
    def open_part(self, key: str, content_type: str = "application/octet-stream") -> PartWriter:
        """Start a streamed, bounded-memory write of a data object."""

    @abstractmethod
    def put_manifest(self, key: str, data: bytes) -> None:
        """Create ``key`` with ``data`` only if it does not exist yet; raise FileExistsError otherwise."""

    @abstractmethod
    def open_read(self, key: str) -> BinaryIO:
        """A readable binary stream of an object (use as a context manager); FileNotFoundError if absent."""

    @abstractmethod
    def list_keys(self, prefix: str) -> list[str]:
        """Sorted keys of the complete objects whose key starts with ``prefix``."""

    @abstractmethod
    def uri_for(self, key: str) -> str:
        """Where a user or a tool finds the object (an absolute path or an ``s3://`` URI)."""

    @abstractmethod
    def abort_incomplete(self, prefix: str) -> int:
        """Discard unfinished writes under ``prefix`` (a crashed run's uploads); returns how many."""

    @abstractmethod
    def delete(self, keys: list[str]) -> None:
        """Remove complete objects (retention); missing keys are ignored."""

    @abstractmethod
    def presign(self, key: str, expires_s: int) -> str:
        """A URL that lets anyone GET ``key`` for ``expires_s`` seconds (a ``file://`` URL locally)."""

    def read_bytes(self, key: str) -> bytes:
        """Whole object; for small objects such as manifests."""
        with self.open_read(key) as stream:
            return stream.read()


# -- local folder ------------------------------------------------------------------------------------


class _LocalPartWriter(PartWriter):
    def __init__(self, path: Path) -> None:
        self._path = path
        # A hidden temp name in the same folder: list_keys never shows it and os.replace is atomic.
        self._tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: BinaryIO | None = open(self._tmp, "wb")  # noqa: SIM115 (closed in close/abort)

    def write(self, data: bytes) -> None:
        if self._file is None:
            raise ValueError(f"write to a closed part {self._path}")
        self._file.write(data)

    def close(self) -> None:
        if self._file is None:
            raise ValueError(f"part {self._path} is already closed")
        try:
            # fsync before the rename so a crash cannot leave a visible but truncated part.
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
            os.replace(self._tmp, self._path)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._tmp.unlink(missing_ok=True)


class LocalExportStorage(ExportStorage):
    """Exports in a local folder, standing in for cloud storage on a laptop and in tests."""

    root: str = Field(description="Folder that receives exports, e.g. .lakerelay/exports.")

    def _path(self, key: str) -> Path:
        return Path(os.path.abspath(self.root), *check_key(key).split("/"))

    def open_part(self, key: str, content_type: str = "application/octet-stream") -> PartWriter:
        return _LocalPartWriter(self._path(key))

    def put_manifest(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            # link() fails if the target exists: the local equivalent of If-None-Match: *.
            os.link(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def open_read(self, key: str) -> BinaryIO:
        return open(self._path(key), "rb")  # the caller closes it

    def list_keys(self, prefix: str) -> list[str]:
        root = Path(os.path.abspath(self.root))
        # Walk only the folder the prefix points into, not the whole export root.
        start = root.joinpath(*prefix.split("/")[:-1]) if "/" in prefix else root
        if not start.is_dir():
            return []
        keys = []
        for dirpath, dirnames, filenames in os.walk(start):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                if name.startswith("."):
                    continue
                key = Path(dirpath, name).relative_to(root).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def uri_for(self, key: str) -> str:
        return str(self._path(key))

    def abort_incomplete(self, prefix: str) -> int:
        start = Path(os.path.abspath(self.root), *[s for s in prefix.split("/") if s])
        if not start.is_dir():
            return 0
        leftovers = [p for p in start.rglob(".*.tmp") if p.is_file()]  # temp files of unfinished writes
        for path in leftovers:
            path.unlink(missing_ok=True)
        return len(leftovers)

    def delete(self, keys: list[str]) -> None:
        for key in keys:
            path = self._path(key)
            path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # drop the export's folder once it is empty
                path.parent.rmdir()

    def presign(self, key: str, expires_s: int) -> str:
        return self._path(key).as_uri()  # a local file needs no signature


# -- S3 ----------------------------------------------------------------------------------------------


class _S3PartWriter(PartWriter):
    """One multipart upload; holds at most one part (``part_size`` bytes) in memory."""

    def __init__(self, client: Any, bucket: str, key: str, content_type: str, part_size: int) -> None:
        self._client, self._bucket, self._key, self._part_size = client, bucket, key, part_size
        self._buffer = bytearray()
        self._parts: list[dict[str, Any]] = []
        self._done = False
        # No Content-Encoding on purpose: HTTP clients would gunzip on download and break the sha256.
        upload = client.create_multipart_upload(Bucket=bucket, Key=key, ContentType=content_type)
        self._upload_id: str | None = upload["UploadId"]

    def write(self, data: bytes) -> None:
        if self._done:
            raise ValueError(f"write to a closed part s3://{self._bucket}/{self._key}")
        self._buffer += data
        while len(self._buffer) >= self._part_size:
            chunk = bytes(self._buffer[: self._part_size])
            del self._buffer[: self._part_size]
            self._upload(chunk)

    def _upload(self, chunk: bytes) -> None:
        number = len(self._parts) + 1
        if number > S3_MAX_PARTS:
            raise ValueError(
                f"s3://{self._bucket}/{self._key} needs more than {S3_MAX_PARTS} multipart parts: "
                "raise part_size_bytes or lower the export's part_max_bytes"
            )
        response = self._client.upload_part(
            Bucket=self._bucket, Key=self._key, UploadId=self._upload_id, PartNumber=number, Body=chunk
        )
        self._parts.append({"PartNumber": number, "ETag": response["ETag"]})

    def close(self) -> None:
        if self._done:
            raise ValueError(f"part s3://{self._bucket}/{self._key} is already closed")
        try:
            if self._buffer or not self._parts:  # the last part may be small, even empty
                self._upload(bytes(self._buffer))
                self._buffer.clear()
            self._client.complete_multipart_upload(
                Bucket=self._bucket,
                Key=self._key,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": self._parts},
            )
            self._done = True
            self._upload_id = None
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        self._done = True
        self._buffer = bytearray()
        if self._upload_id is None:
            return
        upload_id, self._upload_id = self._upload_id, None
        try:
            self._client.abort_multipart_upload(Bucket=self._bucket, Key=self._key, UploadId=upload_id)
        except (BotoCoreError, ClientError) as exc:
            # Never mask the error that made us abort; a bucket lifecycle rule
            # (AbortIncompleteMultipartUpload) is the backstop for uploads left behind.
            log.warning("could not abort multipart upload of s3://%s/%s: %s", self._bucket, self._key, exc)


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class S3ExportStorage(ExportStorage):
    """Exports in ``s3://<bucket>/<prefix>/``, through the dagster-aws ``S3Resource``'s boto3 client."""

    s3: S3Resource = Field(description="Connection settings (endpoint, region, credentials).")
    bucket: str = Field(description="Bucket that receives exports.")
    prefix: str = Field(default="exports", description="Key prefix inside the bucket ('' for the root).")
    part_size_bytes: int = Field(
        default=8 * MiB,
        description="Multipart chunk size: the memory held per upload. At least 5 MiB (S3's minimum).",
    )

    _client: Any = PrivateAttr(default=None)
    _presign_client: Any = PrivateAttr(default=None)

    def _s3(self) -> Any:
        if self._client is None:  # boto3 clients are costly to build and thread-safe to share
            self._client = self.s3.get_client()
        return self._client

    def _signer(self) -> Any:
        """A client that presigns with SigV4 (botocore may pick SigV2 query auth for custom endpoints)."""
        if self._presign_client is None:
            session = boto3.session.Session(
                aws_access_key_id=self.s3.aws_access_key_id,
                aws_secret_access_key=self.s3.aws_secret_access_key,
                aws_session_token=self.s3.aws_session_token,
                profile_name=self.s3.profile_name,
            )
            self._presign_client = session.client(
                "s3",
                endpoint_url=self.s3.endpoint_url,
                region_name=self.s3.region_name or "us-east-1",
                config=BotoConfig(signature_version="s3v4"),
            )
        return self._presign_client

    def _object_key(self, key: str) -> str:
        return f"{self.prefix.strip('/')}/{key}" if self.prefix.strip("/") else key

    def open_part(self, key: str, content_type: str = "application/octet-stream") -> PartWriter:
        if self.part_size_bytes < S3_MIN_PART_BYTES:
            raise ValueError(f"part_size_bytes must be at least {S3_MIN_PART_BYTES} (S3 minimum part size)")
        return _S3PartWriter(
            self._s3(), self.bucket, self._object_key(check_key(key)), content_type, self.part_size_bytes
        )

    def put_manifest(self, key: str, data: bytes) -> None:
        try:
            self._s3().put_object(
                Bucket=self.bucket,
                Key=self._object_key(check_key(key)),
                Body=data,
                ContentType="application/json",
                IfNoneMatch="*",  # create-only: a published export is never replaced
            )
        except ClientError as exc:
            if _error_code(exc) in ("PreconditionFailed", "412"):
                raise FileExistsError(self.uri_for(key)) from exc
            raise

    def open_read(self, key: str) -> BinaryIO:
        try:
            response = self._s3().get_object(Bucket=self.bucket, Key=self._object_key(check_key(key)))
        except ClientError as exc:
            if _error_code(exc) in ("NoSuchKey", "404"):
                raise FileNotFoundError(self.uri_for(key)) from exc
            raise
        return response["Body"]

    def list_keys(self, prefix: str) -> list[str]:
        root = self._object_key("")
        keys = []
        pages = self._s3().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=root + prefix)
        for page in pages:
            keys.extend(item["Key"][len(root) :] for item in page.get("Contents", []))
        return sorted(keys)

    def uri_for(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._object_key(key)}"

    def abort_incomplete(self, prefix: str) -> int:
        client, count = self._s3(), 0
        pages = client.get_paginator("list_multipart_uploads").paginate(
            Bucket=self.bucket, Prefix=self._object_key(check_key(prefix.rstrip("/"))) + "/"
        )
        for page in pages:
            for upload in page.get("Uploads", []):
                client.abort_multipart_upload(
                    Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                )
                count += 1
        return count

    def delete(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            batch = [{"Key": self._object_key(check_key(k))} for k in keys[start : start + 1000]]
            self._s3().delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})

    def presign(self, key: str, expires_s: int) -> str:
        if not 1 <= expires_s <= 7 * 24 * 3600:
            raise ValueError(f"presigned URLs last 1 s to 7 days (604800 s), not {expires_s}")
        name = key.rsplit("/", 1)[-1]
        return self._signer().generate_presigned_url(
            "get_object",
            Params={
                "Bucket": self.bucket,
                "Key": self._object_key(check_key(key)),
                "ResponseContentDisposition": f'attachment; filename="{name}"',
            },
            ExpiresIn=expires_s,
        )
