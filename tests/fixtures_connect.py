"""`spark_connect_url`: one local Spark Connect server (127.0.0.1, a free port) for the whole test session.

Its Python workers run `worker_python`, which has the executor requirements and not lakerelay: what
a Connect server in production has. Each run's session ships lakerelay's code to it.
"""

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lakerelay.devtools import spark_connect


@pytest.fixture(scope="session")
def spark_connect_url(tmp_path_factory: pytest.TempPathFactory, worker_python: Path) -> Iterator[str]:
    directory = tmp_path_factory.mktemp("spark-connect")
    started = time.perf_counter()
    server = spark_connect.start(
        directory, port=spark_connect.free_port(), master="local[2]", python=str(worker_python)
    )
    # Printed (pytest -s) because the server's start-up is the price Connect pays once per session.
    print(f"\nSpark Connect server {server.url} up in {time.perf_counter() - started:.1f}s", file=sys.stderr)
    try:
        yield server.url
    finally:
        spark_connect.stop(directory)
