"""lakerelay's own code for Spark executors: one zip of its packages, built once per code version.

The post op's Spark functions (the read stage, the poster, the sink protocols, the lease guard) are
pickled by reference to lakerelay's modules, so an executor must import ``pipelines`` and
``resources``. A cluster's Python has the third-party packages (``resources.executor_check`` lists
and checks them) but not this project: the zip goes to every executor with the session's artifacts,
``SparkSession.addArtifacts(pyfile=True)``, which Spark Connect uploads to its server and classic
Spark hands to ``SparkContext.addPyFile``. Its name carries a hash of its content, so a code change
is a new file and a session never mixes two versions of one name. Where the executors already have
that very version installed, ``resources.executor_check.prepare_executors`` ships nothing.
"""

import contextlib
import importlib
import os
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

# What executors import: the post stage and its sinks, the read stage, the lease guard, the filesystem.
SHIPPED_PACKAGES = ("pipelines", "resources")
# Every zip member gets this timestamp: the same sources make the same bytes, so the same name.
_ZIP_TIME = (2020, 1, 1, 0, 0, 0)


def _source_files_function() -> Callable[[tuple[str, ...]], list[tuple[str, str]] | None]:
    # Nested (here and below) so that cloudpickle ships these by value with the executors' check,
    # which runs them where lakerelay may be missing.
    def source_files(packages: tuple[str, ...]) -> list[tuple[str, str]] | None:
        """(name in the zip, path) of every ``.py`` file of ``packages``, sorted; None if one is not a folder."""
        import importlib.util
        from pathlib import Path

        members = []
        for package in packages:
            try:
                spec = importlib.util.find_spec(package)
            except (ImportError, ValueError):
                return None
            locations = list(spec.submodule_search_locations or []) if spec else []
            if len(locations) != 1 or not Path(locations[0]).is_dir():
                return None  # absent, a namespace package, or imported from a zip: not installed code
            root = Path(locations[0])
            for path in root.rglob("*.py"):
                if "__pycache__" not in path.parts:
                    members.append((f"{package}/{path.relative_to(root).as_posix()}", str(path)))
        return sorted(members)

    return source_files


def source_digest_function() -> Callable[[tuple[str, ...]], str | None]:
    """The function that names a code version: a hash over the ``.py`` files of some packages.

    The executors' check runs it too: the same digest there means this code is installed, nothing
    to ship; None means lakerelay is absent (or not installed from a folder).
    """
    source_files = _source_files_function()

    def source_digest(packages: tuple[str, ...]) -> str | None:
        import hashlib
        from pathlib import Path

        members = source_files(packages)
        if members is None:
            return None
        digest = hashlib.sha256()
        for name, path in members:
            digest.update(name.encode() + b"\0" + hashlib.sha256(Path(path).read_bytes()).digest())
        return digest.hexdigest()[:16]

    return source_digest


def code_digest(packages: tuple[str, ...] = SHIPPED_PACKAGES) -> str:
    """This process's code version (its packages are installed from a folder, as in any deployment)."""
    for package in packages:
        # Imported first, so the lookup finds these sources and not a zip a session put on sys.path.
        importlib.import_module(package)
    digest = source_digest_function()(packages)
    if digest is None:
        raise RuntimeError(f"cannot find the sources of {packages} to ship to Spark executors")
    return digest


def code_archive(packages: tuple[str, ...] = SHIPPED_PACKAGES, directory: Path | None = None) -> Path:
    """The zip of ``packages``' sources, named by their content: built when missing, else reused.

    Sources are hashed each call (a few hundred KB; milliseconds) so an edited module is never
    shipped stale; the zip itself is written only when that content is new.
    """
    folder = directory or Path(tempfile.gettempdir()) / "lakerelay-executor-code"
    target = folder / f"lakerelay_code_{code_digest(packages)}.zip"
    if target.exists():
        os.utime(target)  # in use: kept by the pruning below
        return target
    folder.mkdir(parents=True, exist_ok=True)
    _prune(folder)
    partial = target.with_suffix(f".{os.getpid()}.partial")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, path in _source_files_function()(packages) or ():
            archive.writestr(zipfile.ZipInfo(name, _ZIP_TIME), Path(path).read_bytes(), zipfile.ZIP_DEFLATED)
    partial.replace(target)  # atomic: a run starting meanwhile never ships half a zip
    return target


def _prune(folder: Path, keep_s: float = 86_400.0) -> None:
    """Remove zips unused for a day: a classic driver serves its zip to executors for its whole life."""
    cutoff = time.time() - keep_s
    for old in folder.glob("lakerelay_code_*.zip"):
        with contextlib.suppress(OSError):
            if old.stat().st_mtime < cutoff:
                old.unlink()


def ship_code(spark: Any) -> Path:
    """Add lakerelay's code zip to ``spark``'s session (classic or Connect); returns the zip.

    Adding the same zip again is a no-op on both (classic compares contents, Connect caches by
    name), so each run may call it.
    """
    archive = code_archive()
    spark.addArtifacts(str(archive), pyfile=True)
    return archive
