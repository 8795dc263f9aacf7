"""The record sequence of one lease in storage: list, read and create-only write (the fence itself)."""

import contextlib
import logging
import os
import re
import time
import uuid
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError  # light; boto3 itself is imported only for S3

from resources.filesystem import FileSystemSettings, split_uri
from resources.lease.record import LeaseRecord

log = logging.getLogger(__name__)

# Records kept after a successful append: the truth is the last one; a few more help an operator see
# what happened (who held it, when it moved). Pruning keeps listings, and so every read, small.
KEEP_RECORDS = 8
_NAME = re.compile(r"^(\d{12})\.json$")


class RecordsVanishing(RuntimeError):
    """The newest records were pruned under every read: the log is churning faster than it is read."""


# What the log's storage raises when it is unreachable, refuses or churns: a local folder's OSError,
# S3's (botocore) errors. Callers that treat a storage hiccup as no verdict catch these and only
# these: any other error out of the log is a bug of lakerelay's and must show as one.
STORAGE_ERRORS: tuple[type[Exception], ...] = (OSError, BotoCoreError, ClientError, RecordsVanishing)


class LeaseLog:
    """The record sequence of one lease, in a local folder or under an S3 prefix.

    Picklable (settings and a URI; clients are rebuilt lazily), so Spark tasks can ask it too.
    """

    def __init__(self, uri: str, settings: FileSystemSettings, keep: int | None = None) -> None:
        self.uri = uri.rstrip("/")
        self.settings = settings
        self.keep = max(1, keep if keep is not None else KEEP_RECORDS)
        scheme, path = split_uri(self.uri)
        self.is_s3 = scheme == "s3"
        self._bucket, _, prefix = path.partition("/") if self.is_s3 else ("", "", "")
        self._prefix = f"{prefix}/" if prefix else ""
        self._dir = "" if self.is_s3 else path
        self._client: Any = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_client"] = None  # a boto3 client does not pickle; each process builds its own
        return state

    def __repr__(self) -> str:
        return f"LeaseLog({self.uri!r})"

    def _s3(self) -> Any:
        if self._client is None:
            # The lake's own client (FileSystemSettings.s3_client: the session token of temporary
            # credentials and the retries included): pyarrow's S3 filesystem has no conditional PUT.
            self._client = self.settings.s3_client()
        return self._client

    def _key(self, seq: int) -> str:
        return f"{self._prefix}{seq:012d}.json"

    def _path(self, seq: int) -> str:
        return os.path.join(self._dir, f"{seq:012d}.json")

    # -- storage primitives -------------------------------------------------------------------------
    def seqs(self) -> list[int]:
        """Sorted seqs of the records that exist (one listing; pruning keeps it to a few entries)."""
        if self.is_s3:
            names: list[str] = []
            pages = (
                self._s3()
                .get_paginator("list_objects_v2")
                .paginate(Bucket=self._bucket, Prefix=self._prefix, Delimiter="/")
            )
            for page in pages:
                names.extend(item["Key"][len(self._prefix) :] for item in page.get("Contents", []))
        else:
            try:
                names = os.listdir(self._dir)
            except FileNotFoundError:
                return []
        return sorted(int(m.group(1)) for m in map(_NAME.match, names) if m)

    def read(self, seq: int) -> LeaseRecord | None:
        """The record ``seq``, or None when it does not exist (never written, or pruned)."""
        if self.is_s3:
            try:
                body = self._s3().get_object(Bucket=self._bucket, Key=self._key(seq))["Body"].read()
            except ClientError as exc:
                if _code(exc) in ("NoSuchKey", "404"):
                    return None
                raise
        else:
            try:
                with open(self._path(seq), "rb") as f:
                    body = f.read()
            except FileNotFoundError:
                return None
        return LeaseRecord.from_json(body)

    def exists(self, seq: int) -> bool:
        """Whether record ``seq`` exists: one HEAD, the cheapest "has anything changed since n?"."""
        if self.is_s3:
            try:
                self._s3().head_object(Bucket=self._bucket, Key=self._key(seq))
                return True
            except ClientError as exc:
                if _code(exc) in ("NoSuchKey", "404", "NotFound"):
                    return False
                raise
        return os.path.exists(self._path(seq))

    def create(self, record: LeaseRecord) -> bool:
        """Write ``record`` only if its seq does not exist yet; False when another writer has it."""
        data = record.to_json()
        if self.is_s3:
            for attempt in range(5):
                try:
                    self._s3().put_object(
                        Bucket=self._bucket,
                        Key=self._key(record.seq),
                        Body=data,
                        ContentType="application/json",
                        IfNoneMatch="*",
                    )
                    return True
                except ClientError as exc:
                    code = _code(exc)
                    if code in ("PreconditionFailed", "412"):
                        # botocore retries a PUT whose answer was lost: the key may hold our own record.
                        return self._is_ours(record)
                    # S3 answers 409 to conditional writes racing on one key: whoever won is visible
                    # after a moment; if nobody did, try again.
                    if code not in ("ConditionalRequestConflict", "409"):
                        raise
                    time.sleep(0.05 * (attempt + 1))
                    if self.exists(record.seq):
                        return self._is_ours(record)
            return False
        os.makedirs(self._dir, exist_ok=True)
        # A hidden temp name never matches a record name; link() fails if the target exists: the local
        # equivalent of If-None-Match: *, atomic on POSIX filesystems.
        tmp = os.path.join(self._dir, f".{record.seq:012d}.{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            try:
                os.link(tmp, self._path(record.seq))
            except FileExistsError:
                return False
            return True
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def _is_ours(self, record: LeaseRecord) -> bool:
        existing = self.read(record.seq)
        return existing is not None and existing.nonce == record.nonce

    def delete(self, seqs: list[int]) -> None:
        if not seqs:
            return
        if self.is_s3:
            for start in range(0, len(seqs), 1000):  # DeleteObjects takes at most 1000 keys
                batch = [{"Key": self._key(s)} for s in seqs[start : start + 1000]]
                self._s3().delete_objects(Bucket=self._bucket, Delete={"Objects": batch, "Quiet": True})
        else:
            for seq in seqs:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._path(seq))

    # -- the sequence ---------------------------------------------------------------------------------
    def latest(self) -> LeaseRecord | None:
        """The truth: the record with the highest seq (a listing and one GET), None for no records."""
        for _ in range(10):
            seqs = self.seqs()
            if not seqs:
                return None
            record = self.read(seqs[-1])
            if record is not None:
                return record
            # Pruned between the listing and the GET: only happens when newer records exist; look again.
        raise RecordsVanishing(f"lease records under {self.uri} keep vanishing while being read")

    def append(self, record: LeaseRecord) -> bool:
        """Create ``record`` as the next of the sequence; False when it is not (the CAS lost).

        After the create, a writer holding an old view could have "won" a seq that pruning had freed
        below the real latest. So when the listing shows a higher seq, the record after ours must
        have been written on top of ours (a successor that came quickly, after a release); otherwise
        ours is a ghost: it is removed and counts as a lost race. Then records older than the last
        ``keep`` are deleted.
        """
        if not self.create(record):
            return False
        seqs = self.seqs()
        if seqs and seqs[-1] > record.seq:
            successor = self.read(record.seq + 1)
            if successor is None or successor.prev != record.nonce:
                self.delete([record.seq])
                return False
            return True  # superseded already; the successor's writer prunes
        try:
            self.delete([s for s in seqs if s <= record.seq - self.keep])
        except STORAGE_ERRORS as exc:  # pruning is housekeeping: the next append tries again
            log.warning("could not prune old lease records under %s: %s", self.uri, exc)
        return True


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))
