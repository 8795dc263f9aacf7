"""The `sink_server` fixture: a fresh local Elasticsearch/Splunk HEC sink on 127.0.0.1 for each test."""

from collections.abc import Iterator

import pytest

from lakerelay.localsink import LocalSinkServer


@pytest.fixture
def sink_server() -> Iterator[LocalSinkServer]:
    server = LocalSinkServer(host="127.0.0.1", port=0).start()
    try:
        yield server
    finally:
        server.stop()
