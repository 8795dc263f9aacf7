"""Exports in an S3 bucket (any S3-compatible endpoint), one multipart upload per part."""

import hashlib
import logging
from typing import Any, BinaryIO, ClassVar

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import Field, PrivateAttr

from resources.export_storage.base import ExportStorage, PartWriter, check_key
from resources.export_storage.retry import DEFAULT_DEADLINE_S, Retrying
from resources.lake import LakeResource

log = logging.getLogger(__name__)

MiB = 1024 * 1024
S3_MIN_PART_BYTES = 5 * MiB  # S3 rejects smaller non-final multipart parts (EntityTooSmall)
S3_MAX_PARTS = 10_000
MAX_PRESIGN_S = 7 * 24 * 3600  # SigV4 presigned URLs cannot live longer


class _S3PartWriter(PartWriter):
    """One multipart upload; holds at most one part (``part_size`` bytes) in memory.

    ``finish`` uploads the last chunk and leaves the upload open (invisible); ``publish`` completes
    it. Every call is retried through ``retrying`` until its deadline.
    """

    def __init__(
        self, client: Any, bucket: str, key: str, content_type: str, part_size: int, retrying: Retrying
    ) -> None:
        self._client, self._bucket, self._key, self._part_size = client, bucket, key, part_size
        self._retrying = retrying
        self._uri = f"s3://{bucket}/{key}"
        self._buffer = bytearray()
        self._parts: list[dict[str, Any]] = []
        self._done = False
        self._finished = False
        # No Content-Encoding on purpose: HTTP clients would gunzip on download and break the sha256.
        upload = retrying.call(
            f"starting the upload of {self._uri}",
            lambda _: client.create_multipart_upload(Bucket=bucket, Key=key, ContentType=content_type),
        )
        self._upload_id: str | None = upload["UploadId"]

    def write(self, data: bytes) -> None:
        if self._done or self._finished:
            raise ValueError(f"write to a closed part {self._uri}")
        self._buffer += data
        while len(self._buffer) >= self._part_size:
            chunk = bytes(self._buffer[: self._part_size])
            del self._buffer[: self._part_size]
            self._upload(chunk)

    def _upload(self, chunk: bytes) -> None:
        number = len(self._parts) + 1
        if number > S3_MAX_PARTS:
            raise ValueError(
                f"{self._uri} needs more than {S3_MAX_PARTS} multipart parts: "
                "raise part_size_bytes or lower the export's part_max_bytes"
            )
        response = self._retrying.call(
            f"uploading chunk {number} of {self._uri}",
            lambda _: self._client.upload_part(
                Bucket=self._bucket, Key=self._key, UploadId=self._upload_id, PartNumber=number, Body=chunk
            ),
        )
        self._parts.append({"PartNumber": number, "ETag": response["ETag"]})

    def finish(self) -> None:
        if self._done or self._finished:
            raise ValueError(f"part {self._uri} is already closed")
        try:
            if self._buffer or not self._parts:  # the last part may be small, even empty
                self._upload(bytes(self._buffer))
                self._buffer.clear()
            self._finished = True
        except BaseException:
            self.abort()
            raise

    def publish(self) -> None:
        if not self._finished:
            raise ValueError(f"part {self._uri} is not finished (or already published)")

        def complete(attempt: int) -> None:
            try:
                self._client.complete_multipart_upload(
                    Bucket=self._bucket,
                    Key=self._key,
                    UploadId=self._upload_id,
                    MultipartUpload={"Parts": self._parts},
                )
            except ClientError as exc:
                # An earlier attempt completed it and its answer was lost: the upload is gone and
                # the object is ours if its ETag is the one these chunks make.
                if attempt > 1 and _error_code(exc) == "NoSuchUpload" and self._stored_etag() == self._etag():
                    return
                raise

        self._retrying.call(f"completing {self._uri}", complete)
        self._finished, self._done, self._upload_id = False, True, None

    def _etag(self) -> str:
        """The ETag S3 gives the object these chunks complete: md5 of their md5s, then "-<count>"."""
        digests = b"".join(bytes.fromhex(p["ETag"].strip('"')) for p in self._parts)
        return f'"{hashlib.md5(digests).hexdigest()}-{len(self._parts)}"'

    def _stored_etag(self) -> str | None:
        try:
            return self._client.head_object(Bucket=self._bucket, Key=self._key)["ETag"]
        except ClientError:
            return None

    def close(self) -> None:
        self.finish()
        try:
            self.publish()
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        self._done, self._finished = True, False
        self._buffer = bytearray()
        if self._upload_id is None:
            return
        upload_id, self._upload_id = self._upload_id, None
        try:  # one try (botocore's own retries): an export failing on an outage must not wait twice
            self._client.abort_multipart_upload(Bucket=self._bucket, Key=self._key, UploadId=upload_id)
        except (BotoCoreError, ClientError) as exc:
            # Never mask the error that made us abort. The next export of the dataset aborts what is
            # left (abort_incomplete); a bucket lifecycle rule (AbortIncompleteMultipartUpload) is
            # the backstop.
            log.warning("could not abort multipart upload of %s: %s", self._uri, exc)


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _abort_if_pending(client: Any, bucket: str, upload: dict[str, Any]) -> None:
    try:
        client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    except ClientError as exc:
        if _error_code(exc) != "NoSuchUpload":  # already gone (an earlier attempt's lost answer)
            raise


class S3ExportStorage(ExportStorage):
    """Exports in ``s3://<bucket>/<prefix>/``, reached with the lake's S3 settings (``lake``).

    The connection (endpoint, region, credentials, retries) is the ``LakeResource``'s, so the Delta
    tables, the landing zone and the exports share one S3 setup; only the bucket and prefix are
    the export's own.
    """

    storage_kind: ClassVar[str] = "s3"

    lake: LakeResource = Field(
        description="The lake whose S3 settings (endpoint, region, credentials) apply."
    )
    bucket: str = Field(description="Bucket that receives exports.")
    prefix: str = Field(default="exports", description="Key prefix inside the bucket ('' for the root).")
    part_size_bytes: int = Field(
        default=8 * MiB,
        description="Multipart chunk size: the memory held per upload. At least 5 MiB (S3's minimum).",
    )
    retry_deadline_s: float = Field(
        default=DEFAULT_DEADLINE_S,
        gt=0,
        description="How long each S3 call of an export is retried with backoff through dropped connections, "
        "timeouts, 5xx and SlowDown, from its first attempt, before the export fails and cleans up "
        "(the sinks' delivery deadline, 600 s, by default).",
    )

    _client: Any = PrivateAttr(default=None)
    _presign_client: Any = PrivateAttr(default=None)

    def _s3(self) -> Any:
        if self._client is None:  # boto3 clients are costly to build and thread-safe to share
            self._client = self.lake.s3_client()
        return self._client

    def _retrying(self) -> Retrying:
        return Retrying(self.retry_deadline_s)

    def _call(self, what: str, call: Any) -> Any:
        """``call()`` retried until the deadline (for idempotent requests)."""
        return self._retrying().call(what, lambda _: call())

    def _signer(self) -> Any:
        if self._presign_client is None:
            self._presign_client = self.lake.s3_presign_client()
        return self._presign_client

    def _object_key(self, key: str) -> str:
        return f"{self.prefix.strip('/')}/{key}" if self.prefix.strip("/") else key

    def open_part(self, key: str, content_type: str = "application/octet-stream") -> PartWriter:
        if self.part_size_bytes < S3_MIN_PART_BYTES:
            raise ValueError(f"part_size_bytes must be at least {S3_MIN_PART_BYTES} (S3 minimum part size)")
        return _S3PartWriter(
            self._s3(),
            self.bucket,
            self._object_key(check_key(key)),
            content_type,
            self.part_size_bytes,
            self._retrying(),
        )

    def put_manifest(self, key: str, data: bytes) -> None:
        object_key = self._object_key(check_key(key))

        def create(attempt: int) -> None:
            try:
                self._s3().put_object(
                    Bucket=self.bucket,
                    Key=object_key,
                    Body=data,
                    ContentType="application/json",
                    IfNoneMatch="*",  # create-only: a published export is never replaced
                )
            except ClientError as exc:
                if _error_code(exc) not in ("PreconditionFailed", "412"):
                    raise
                # After a lost answer the manifest there may be the one an earlier attempt wrote.
                if attempt > 1 and self._read_whole(object_key) == data:
                    return
                raise FileExistsError(self.uri_for(key)) from exc

        self._retrying().call(f"writing {self.uri_for(key)}", create)

    def _read_whole(self, object_key: str) -> bytes | None:
        try:
            return self._s3().get_object(Bucket=self.bucket, Key=object_key)["Body"].read()
        except ClientError:
            return None

    def open_read(self, key: str) -> BinaryIO:
        try:
            response = self._call(
                f"reading {self.uri_for(key)}",
                lambda: self._s3().get_object(Bucket=self.bucket, Key=self._object_key(check_key(key))),
            )
        except ClientError as exc:
            if _error_code(exc) in ("NoSuchKey", "404"):
                raise FileNotFoundError(self.uri_for(key)) from exc
            raise
        return response["Body"]

    def list_keys(self, prefix: str) -> list[str]:
        root = self._object_key("")

        def listing() -> list[str]:
            keys = []
            pages = (
                self._s3().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=root + prefix)
            )
            for page in pages:
                keys.extend(item["Key"][len(root) :] for item in page.get("Contents", []))
            return sorted(keys)

        return self._call(f"listing {self.uri_for(prefix)}", listing)

    def uri_for(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._object_key(key)}"

    def abort_incomplete(self, prefix: str) -> int:
        client = self._s3()

        def pending() -> list[dict[str, Any]]:
            pages = client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=self._object_key(check_key(prefix.rstrip("/"))) + "/"
            )
            return [upload for page in pages for upload in page.get("Uploads", [])]

        uploads = self._call(f"listing unfinished uploads under {self.uri_for(prefix)}", pending)
        for upload in uploads:
            self._call(
                f"aborting an unfinished upload of s3://{self.bucket}/{upload['Key']}",
                lambda upload=upload: _abort_if_pending(client, self.bucket, upload),
            )
        return len(uploads)

    def delete(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            batch = [{"Key": self._object_key(check_key(k))} for k in keys[start : start + 1000]]
            self._call(
                f"deleting {len(batch)} object(s) under {self.uri_for('')}",
                lambda batch=batch: self._s3().delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                ),
            )

    def presign(self, key: str, expires_s: int) -> str:
        if not 1 <= expires_s <= MAX_PRESIGN_S:
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
