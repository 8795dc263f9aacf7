"""A Spark cluster's side for the tests: executors' Pythons without lakerelay, and one standalone cluster.

`worker_python` is a virtualenv with only the executor requirements (lakerelay.devtools.worker_python), what a
cluster's workers have: the Spark Connect server of `spark_connect_url` and the standalone cluster's
executors run on it, so every post through them depends on the code lakerelay ships per session.
"""

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lakerelay.devtools import worker_python as worker_pythons
from lakerelay.devtools.spark_standalone import StandaloneCluster, standalone_cluster


@pytest.fixture(scope="session")
def worker_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return worker_pythons.create(tmp_path_factory.mktemp("worker-python") / "venv")


@pytest.fixture(scope="session")
def worker_python_without_orjson(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An executors' Python that lacks one of the requirements (orjson, which the poster encodes with)."""
    return worker_pythons.create(tmp_path_factory.mktemp("worker-python-no-orjson") / "venv", ("orjson",))


@pytest.fixture(scope="session")
def spark_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandaloneCluster]:
    """One master and one worker (2 cores) on 127.0.0.1 for the whole test session."""
    started = time.perf_counter()
    with standalone_cluster(tmp_path_factory.mktemp("spark-cluster"), cores=2, memory="2g") as cluster:
        print(
            f"\nSpark standalone {cluster.master_url} up in {time.perf_counter() - started:.1f}s",
            file=sys.stderr,
        )
        yield cluster
