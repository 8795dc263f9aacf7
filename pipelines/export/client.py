"""Verify-and-fetch client: download an export's parts with resume, check each against the manifest.

A manifest can be given as a local path (or ``file://`` URL), an ``s3://`` URI, an ``http(s)://`` URL
(parts are then fetched from the same folder URL), or a signed bundle written by
``lakerelay-export sign`` (presigned URLs for the manifest and every part). Downloads go to
``<dest>/<part>.partial`` and continue with an HTTP ``Range`` request after an interruption; a part is
renamed to its final name only once its sha256, size and row count match.
"""

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import requests
from tqdm import tqdm

from pipelines import deployment
from pipelines.export.check import CHUNK, inspect_part, manifest_problems

ATTEMPTS = 4
TIMEOUT_S = 60


def s3_client() -> Any:
    """boto3 S3 client of this deployment's lake: the same S3 settings, from the same environment."""
    return deployment.resolved(deployment.lake_resource()).s3_client()


def _sibling(location: str, name: str) -> str:
    """The object ``name`` next to ``location`` (a path, s3:// URI or URL; a query string is dropped)."""
    parts = urlsplit(location)
    if parts.scheme in ("http", "https", "s3"):
        folder = parts.path.rsplit("/", 1)[0]
        return urlunsplit((parts.scheme, parts.netloc, f"{folder}/{name}", "", ""))
    return str(Path(_local_path(location)).with_name(name))


def _local_path(location: str) -> str:
    return unquote(urlsplit(location).path) if location.startswith("file://") else location


def _open_range(location: str, offset: int) -> tuple[Iterator[bytes], bool]:
    """Chunks of ``location`` from ``offset``; the flag says whether the source honoured the offset."""
    scheme = urlsplit(location).scheme
    if scheme in ("http", "https"):
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        response = requests.get(location, headers=headers, stream=True, timeout=TIMEOUT_S)
        if response.status_code == 416:  # nothing left past the offset
            return iter(()), True
        response.raise_for_status()
        # decode_content=False: the stored bytes exactly, even if a server adds Content-Encoding.
        return response.raw.stream(CHUNK, decode_content=False), response.status_code == 206 or not offset
    if scheme == "s3":
        bucket, _, key = location[len("s3://") :].partition("/")
        kwargs = {"Range": f"bytes={offset}-"} if offset else {}
        body = s3_client().get_object(Bucket=bucket, Key=key, **kwargs)["Body"]
        return body.iter_chunks(CHUNK), True

    def local() -> Iterator[bytes]:
        with open(_local_path(location), "rb") as stream:
            stream.seek(offset)
            while chunk := stream.read(CHUNK):
                yield chunk

    return local(), True


def read_location(location: str) -> bytes:
    chunks, _ = _open_range(location, 0)
    return b"".join(chunks)


@dataclass
class FetchReport:
    manifest: dict[str, Any]
    downloaded_bytes: int = 0
    resumed_parts: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _resolve(source: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The manifest and where each part key is fetched from."""
    text = read_location(source)
    doc = json.loads(text)
    if "manifest_url" in doc:  # a signed bundle from `lakerelay-export sign`
        manifest = json.loads(read_location(doc["manifest_url"]))
        urls = {p["key"]: p["url"] for p in doc["parts"]}
    else:
        manifest = doc
        urls = {p["key"]: _sibling(source, p["key"].rsplit("/", 1)[-1]) for p in manifest["parts"]}
    return manifest, urls


def _download(location: str, partial: Path, size: int, progress: tqdm) -> tuple[int, bool]:
    """Append the missing bytes of one part to ``partial``; returns (bytes fetched, whether it resumed)."""
    resumed = partial.exists() and 0 < partial.stat().st_size <= size
    if partial.exists() and not resumed:
        partial.unlink()
    fetched = 0
    for attempt in range(ATTEMPTS):
        offset = partial.stat().st_size if partial.exists() else 0
        if offset >= size and offset:
            break
        try:
            chunks, honoured = _open_range(location, offset)
            with open(partial, "ab" if honoured else "wb") as out:
                if not honoured:  # the server ignored Range: start over
                    progress.update(-offset)
                for chunk in chunks:
                    out.write(chunk)
                    fetched += len(chunk)
                    progress.update(len(chunk))
            break
        except (requests.RequestException, OSError) as exc:
            if attempt == ATTEMPTS - 1:
                raise
            progress.write(f"retrying {partial.name} after: {exc}")
            time.sleep(0.5 * 2**attempt)
    return fetched, resumed


def fetch_export(source: str, dest: str | Path, show_progress: bool = True) -> FetchReport:
    """Download and verify every part of the export ``source`` into ``dest``."""
    manifest, urls = _resolve(source)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "manifest.json").write_bytes(json.dumps(manifest, indent=2).encode() + b"\n")
    report = FetchReport(manifest=manifest, problems=manifest_problems(manifest))
    fmt, compression = manifest.get("format", "ndjson"), manifest.get("compression", "gzip")
    total = sum(p["bytes"] for p in manifest["parts"])
    with tqdm(total=total, unit="B", unit_scale=True, desc="export", disable=not show_progress) as progress:
        for part in manifest["parts"]:
            final = dest / part["key"].rsplit("/", 1)[-1]
            partial = final.with_name(final.name + ".partial")
            if final.exists():  # fetched before: check it again, cheaply skipped if it matches
                with open(final, "rb") as stream:
                    if not inspect_part(stream, part, fmt, compression):
                        progress.update(part["bytes"])
                        continue
                final.unlink()  # a damaged local copy: fetch it again
            if partial.exists():
                progress.update(partial.stat().st_size)
            fetched, resumed = _download(urls[part["key"]], partial, part["bytes"], progress)
            report.downloaded_bytes += fetched
            report.resumed_parts += resumed
            with open(partial, "rb") as stream:
                problems = inspect_part(stream, part, fmt, compression)
            if problems:
                partial.unlink()  # a rerun fetches it afresh
                report.problems.extend(problems)
            else:
                partial.replace(final)
    return report
