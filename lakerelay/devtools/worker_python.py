"""A Python for Spark executors that has only the executors' third-party packages, not lakerelay.

    python -m lakerelay.devtools.worker_python DIR [--without orjson]     # prints DIR/bin/python

What a cluster's workers have: a virtualenv with the distributions of
``resources.executor_check.EXECUTOR_PACKAGES`` and what they require, linked from this environment
(same versions, no download), and nothing of this project; pyspark itself reaches the workers from
Spark (``pyspark.zip`` on their ``PYTHONPATH``). The tests run a standalone worker and a Spark
Connect server on it, and a variant ``--without`` a package shows what a missing one looks like.
"""

import argparse
import importlib.metadata as metadata
import subprocess
import sys
import sysconfig
from pathlib import Path

from resources.executor_check import EXECUTOR_PACKAGES, distribution_closure


def _top_level_entries(dist: metadata.Distribution) -> set[Path]:
    """The files and folders ``dist`` put directly in site-packages (packages, modules, dist-info)."""
    site = Path(dist.locate_file(""))
    entries = set()
    for file in dist.files or ():
        parts = Path(file).parts
        if parts and parts[0] != ".." and not parts[0].endswith(".pth"):
            entries.add(site / parts[0])
    return {entry for entry in entries if entry.exists()}


def create(directory: Path, without: tuple[str, ...] = ()) -> Path:
    """A virtualenv in ``directory`` with the executor packages less ``without``; returns its python."""
    directory = directory.resolve()
    python = directory / "bin" / "python"
    if not python.exists():
        # Without pip: nothing is installed into it but links, and creating it takes a second.
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(directory)], check=True)
    purelib = sysconfig.get_path("purelib", vars={"base": str(directory), "platbase": str(directory)})
    site = Path(purelib)
    skip = {name.lower().replace("_", "-") for name in without}
    for dist in distribution_closure(EXECUTOR_PACKAGES):
        if dist.metadata["Name"].lower().replace("_", "-") in skip:
            continue
        for entry in _top_level_entries(dist):
            link = site / entry.name
            if not link.exists():
                link.symlink_to(entry)
    return python


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--without", action="append", default=[], help="a distribution to leave out")
    args = parser.parse_args()
    print(create(args.directory, tuple(args.without)))


if __name__ == "__main__":
    main()
