"""Exports in a local folder: the embedded default, standing in for cloud storage on a laptop and in tests."""

import contextlib
import os
import uuid
from pathlib import Path
from typing import BinaryIO, ClassVar

from pydantic import Field

from resources.export_storage.base import ExportStorage, PartWriter, check_key


class _LocalPartWriter(PartWriter):
    def __init__(self, path: Path) -> None:
        self._path = path
        # A hidden temp name in the same folder: list_keys never shows it and os.replace is atomic.
        self._tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: BinaryIO | None = open(self._tmp, "wb")  # noqa: SIM115 (closed in finish/abort)
        self._finished = False

    def write(self, data: bytes) -> None:
        if self._file is None:
            raise ValueError(f"write to a closed part {self._path}")
        self._file.write(data)

    def finish(self) -> None:
        if self._file is None:
            raise ValueError(f"part {self._path} is already closed")
        try:
            # fsync before the rename so a crash cannot leave a visible but truncated part.
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
            self._finished = True
        except BaseException:
            self.abort()
            raise

    def publish(self) -> None:
        if not self._finished:
            raise ValueError(f"part {self._path} is not finished (or already published)")
        os.replace(self._tmp, self._path)
        self._finished = False

    def close(self) -> None:
        self.finish()
        try:
            self.publish()
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):  # a full disk may fail the flush of close()
                self._file.close()
            self._file = None
        self._finished = False
        self._tmp.unlink(missing_ok=True)


class LocalExportStorage(ExportStorage):
    """Exports in a local folder, standing in for cloud storage on a laptop and in tests."""

    storage_kind: ClassVar[str] = "file"

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
