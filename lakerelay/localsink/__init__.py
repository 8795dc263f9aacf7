"""localsink: an embedded HTTP sink speaking enough Elasticsearch `_bulk` and Splunk HEC to test against.

Typical use: `with LocalSinkServer() as sink:` then point clients at `sink.url` and assert on
`sink.es_count("events")` or `sink.hec_count()`.
"""

from lakerelay.localsink.faults import FaultConfig
from lakerelay.localsink.server import LocalSinkServer
from lakerelay.localsink.splunk import DEFAULT_HEC_INDEX, DEFAULT_HEC_TOKEN

__all__ = ["DEFAULT_HEC_INDEX", "DEFAULT_HEC_TOKEN", "FaultConfig", "LocalSinkServer"]
