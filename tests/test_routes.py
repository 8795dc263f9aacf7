"""A topology of several feeds and sinks, on real parts: each feed's records reach exactly the
destinations its routes name, a route's filter holds, and a route whose sink is down holds back no other."""

from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from lakerelay.devtools.sample_events import write_landing_zone
from lakerelay.localsink.server import LocalSinkServer
from pipelines.components import ElasticsearchSink, Feed, RestSink, Route, SplunkHecSink
from pipelines.definitions import build_defs
from pipelines.deployment import LOCAL_HEC_TOKEN
from pipelines.post.progress import read_progress
from pipelines.topology import Topology, join
from resources.delta_arrow import read_delta
from resources.export_storage import LocalExportStorage

from helpers import local_lake

pytestmark = pytest.mark.integration

HINTS = {"ts": "timestamp", "bytes_in": "bigint", "bytes_out": "bigint", "status_code": "bigint"}


def topology(main_url: str, siem_url: str) -> Topology:
    feeds = [Feed(name=name, source=name, schema_hints=HINTS) for name in ("web", "audit", "fw")]
    sinks = [
        ElasticsearchSink(name="es_main", url=main_url, backoff_initial_s=0.05),
        ElasticsearchSink(name="siem", url=siem_url, backoff_initial_s=0.05, connect_timeout_s=1),
        SplunkHecSink(
            name="hec", url=main_url, token_env="ROUTE_TEST_HEC_TOKEN", development_token=LOCAL_HEC_TOKEN
        ),
        # A REST API declared like any other sink: no code.
        RestSink(name="alerts_api", url=main_url, path="/_generic/all", body_format="ndjson"),
    ]
    routes = [
        Route(feed="web", sink="es_main", destination={"index": "{feed}-logs"}),
        Route(feed="audit", sink="hec", destination={"index": "audit", "sourcetype": "audit:json"}),
        Route(
            feed="audit",
            sink="alerts_api",
            where="severity IN ('error', 'critical')",
            destination={"path": "/_generic/alerts"},
        ),
        Route(feed="fw", sink="es_main", destination={"index": "fw-{ts:%Y.%m.%d}"}),
        Route(feed="fw", sink="hec", name="fw_hec", destination={"index": "fw"}),
        Route(feed="fw", sink="siem", where="status_code >= 400", destination={"index": "fw-failures"}),
    ]
    return join(feeds, sinks, routes, [])


def land(lake, feed: str, files: int, start_seq: int = 0) -> None:
    write_landing_zone(
        Path(lake.landing_uri) / feed, files, 40, seed=len(feed), start_seq=start_seq, prefix=feed
    )


def test_each_feed_reaches_exactly_its_routes_and_a_down_sink_holds_back_no_other(
    tmp_path: Path, spark_resource
) -> None:
    lake = local_lake(tmp_path)
    main = LocalSinkServer(host="127.0.0.1", port=0).start()
    siem_port = LocalSinkServer(host="127.0.0.1", port=0).start()
    port = siem_port.port
    siem_port.stop()  # the SIEM cluster is down at first: nothing listens on its port
    siem: LocalSinkServer | None = None
    try:
        plan = topology(main.url, f"http://127.0.0.1:{port}")
        defs = build_defs(
            {
                "lake": lake,
                "pyspark": spark_resource,
                "export_storage": LocalExportStorage(root=str(tmp_path / "exports")),
                **plan.sinks,
            },
            plan.feeds,
            plan.routes,
        )
        for feed in ("web", "audit", "fw"):
            land(lake, feed, files=2)
        results = {
            feed: defs.resolve_job_def(f"relay_{feed}").execute_in_process(raise_on_error=False)
            for feed in ("web", "audit", "fw")
        }
        assert results["web"].success and results["audit"].success
        assert not results["fw"].success  # the siem route failed ...
        rows = {feed: read_delta(lake.table(feed)) for feed in ("web", "audit", "fw")}
        # ... and every other route delivered, each into exactly the destination it names.
        assert main.es_count("web-logs") == rows["web"].num_rows == 80
        days = pc.unique(pc.strftime(rows["fw"].column("ts"), "%Y.%m.%d")).to_pylist()
        per_day = {day: main.es_count(f"fw-{day}") for day in days}
        assert sum(per_day.values()) == rows["fw"].num_rows == 80 and all(per_day.values())
        assert main.es_count("events") == 0 and main.es_count("audit") == 0
        audit = main.hec_events("audit")
        assert len(audit) == rows["audit"].num_rows and {e.get("sourcetype") for e in audit} == {"audit:json"}
        assert main.hec_count("fw") == 80 and main.hec_count("main") == 0
        severe = pc.is_in(rows["audit"].column("severity"), value_set=pa.array(["error", "critical"]))
        expected = int(pc.sum(severe).as_py() or 0)
        assert 0 < expected < rows["audit"].num_rows
        alerts = main.generic_records("alerts")
        assert len(alerts) == expected and {a["severity"] for a in alerts} <= {"error", "critical"}
        assert main.generic_records("all") == []
        assert read_progress(lake, "siem", "fw").delta_version == -1
        assert read_progress(lake, "fw_hec", "fw").delta_version >= 0

        siem = LocalSinkServer(host="127.0.0.1", port=port).start()  # the cluster is back
        retried = defs.resolve_job_def("post_fw_to_siem").execute_in_process()
        failures = int(pc.sum(pc.greater_equal(rows["fw"].column("status_code"), 400)).as_py() or 0)
        assert 0 < failures < 80
        assert siem.es_count("fw-failures") == failures  # the route's where, nothing else
        assert siem.es_count("fw") == 0 and siem.es_count("web-logs") == 0
        [materialization] = retried.asset_materializations_for_node("sinks__fw_in_siem")
        assert materialization.asset_key == dg.AssetKey(["sinks", "fw_in_siem"])

        # Replaying the feed's routes adds nothing to Elasticsearch.
        assert defs.resolve_job_def("post_fw_to_es_main").execute_in_process().success
        assert sum(main.es_count(f"fw-{day}") for day in days) == 80
    finally:
        main.stop()
        if siem is not None:
            siem.stop()
