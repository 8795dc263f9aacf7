"""`postgres_server`: one throwaway PostgreSQL on 127.0.0.1 for the whole test session (lakerelay/devtools/postgres.py).

`postgres_db` gives each test a database of its own on it, so one test's runs never show in another's.
"""

import sys
import time
import uuid
from collections.abc import Iterator

import pytest

from lakerelay.devtools import postgres


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[postgres.PostgresServer]:
    # Not tmp_path_factory: its folders are under a mode-700 folder of root's, which the postgres
    # user that runs the server under root cannot enter. start() makes a temporary folder it can.
    started = time.perf_counter()
    try:
        server = postgres.start()
    except postgres.PostgresError as exc:
        pytest.fail(f"cannot start PostgreSQL: {exc}")
    print(
        f"\nPostgreSQL {server.host}:{server.port} up in {time.perf_counter() - started:.1f}s",
        file=sys.stderr,
    )
    try:
        yield server
    finally:
        postgres.stop(server.directory)


@pytest.fixture
def postgres_db(postgres_server: postgres.PostgresServer) -> postgres.PostgresServer:
    return postgres.create_database(postgres_server, f"test_{uuid.uuid4().hex[:12]}")
