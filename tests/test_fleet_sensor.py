"""One landing sensor for every feed and one table sensor for every route (sensors/fleet.py)."""

import json
import re
from pathlib import Path

import dagster as dg
import pytest

from pipelines import deployment
from pipelines.definitions import build_defs
from pipelines.feeds import FeedSpec
from pipelines.ingest.runner import ingest_feed
from pipelines.routes import RouteSpec
from resources.export_storage import LocalExportStorage
from resources.sinks.resource import ElasticsearchSinkResource
from sensors.fleet import Target, build_fleet_sensor

from helpers import json_lines, land_file, local_lake

FEEDS = [FeedSpec(name=name, source=name) for name in ("web", "audit", "fw")]


def fleet_defs(lake, layout: str = "per_route") -> dg.Definitions:
    sinks = {
        "es": ElasticsearchSinkResource(sink_name="es", url="http://127.0.0.1:1"),
        "siem": ElasticsearchSinkResource(sink_name="siem", url="http://127.0.0.1:1"),
    }
    routes = [RouteSpec(feed, "es", sink_kind="elasticsearch") for feed in FEEDS]
    routes.append(RouteSpec(FEEDS[2], "siem", sink_kind="elasticsearch", where="status >= 500"))
    storage = LocalExportStorage(root=str(Path(lake.lake_uri).parent / "exports"))
    resources = {"lake": lake, "pyspark": dg.ResourceDefinition.none_resource(), "export_storage": storage}
    return build_defs({**resources, **sinks}, FEEDS, routes, layout=layout)


def tick(defs: dg.Definitions, name: str, lake, instance: dg.DagsterInstance, cursor: str | None = None):
    sensor = defs.get_sensor_def(name)
    return sensor(dg.build_sensor_context(cursor=cursor, resources={"lake": lake}, instance=instance))


def test_one_landing_sensor_launches_the_relay_of_each_feed_whose_files_land(tmp_path: Path) -> None:
    lake = local_lake(tmp_path)
    defs = fleet_defs(lake)
    assert {s.name for s in defs.sensors} == {
        "feeds_landing_sensor",
        "routes_table_sensor",
        "lakerelay_run_failure_sensor",
    }
    with dg.DagsterInstance.ephemeral() as instance:
        first = tick(defs, "feeds_landing_sensor", lake, instance)
        assert not first.run_requests and "nothing new" in first.skip_reason.skip_message
        land_file(lake, "web", "a.json", json_lines([{"n": 1}]))
        land_file(lake, "fw", "b.json", json_lines([{"n": 2}]))
        second = tick(defs, "feeds_landing_sensor", lake, instance, first.cursor)
        assert sorted(r.job_name for r in second.run_requests) == ["relay_fw", "relay_web"]
        assert {r.tags["lakerelay/feed"] for r in second.run_requests} == {"web", "fw"}
        assert set(json.loads(second.cursor)) >= {"web", "fw"}  # each feed keeps its own cursor
        # The same files, the same tick: nothing is asked twice.
        third = tick(defs, "feeds_landing_sensor", lake, instance, second.cursor)
        assert not third.run_requests


def test_one_table_sensor_requests_each_route_behind_its_table(tmp_path: Path) -> None:
    lake = local_lake(tmp_path)
    defs = fleet_defs(lake)
    land_file(lake, "fw", "b.json", json_lines([{"status": 503}, {"status": 200}]))
    ingest_feed(FEEDS[2], lake)
    with dg.DagsterInstance.ephemeral() as instance:
        result = tick(defs, "routes_table_sensor", lake, instance)
        assert sorted(r.job_name for r in result.run_requests) == ["post_fw_to_es", "post_fw_to_siem"]
        assert sorted(r.run_key for r in result.run_requests) == ["es:fw:v0", "siem:fw:v0"]
        assert {r.tags["lakerelay/route"] for r in result.run_requests} == {"es", "siem"}
        again = tick(defs, "routes_table_sensor", lake, instance, result.cursor)
        assert not again.run_requests


def test_a_target_that_fails_its_tick_holds_back_no_other(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    lake = local_lake(tmp_path)

    def broken(context, lake, memo):
        raise OSError("the bucket of this feed is unreachable")

    def fine(context, lake, memo):
        return dg.RunRequest(run_key="k", tags={"t": "1"})

    @dg.job
    def job_a() -> None:
        pass

    @dg.job
    def job_b() -> None:
        pass

    sensor = build_fleet_sensor(
        "s",
        "test",
        [Target("a", "job_a", broken), Target("b", "job_b", fine)],
        [job_a, job_b],
        30,
        dg.DefaultSensorStatus.STOPPED,
    )
    with dg.DagsterInstance.ephemeral() as instance:
        result = sensor(dg.build_sensor_context(resources={"lake": lake}, instance=instance))
    assert [(r.job_name, r.run_key) for r in result.run_requests] == [("job_b", "k")]
    # The tick's log says what failed and where it was raised: a bug is found from it.
    assert re.search(
        r"a: this tick failed \(OSError: the bucket of this feed is unreachable, raised at "
        r"test_fleet_sensor\.py:\d+ in broken\); next tick retries",
        capfd.readouterr().err,
    )


def test_shared_layout_has_one_job_per_path_and_runs_select_one_feed_or_route(tmp_path: Path) -> None:
    lake = local_lake(tmp_path)
    defs = fleet_defs(lake, layout="shared")
    jobs = {job.name for job in defs.resolve_all_job_defs()}
    assert {"ingest_feeds", "relay_feeds", "post_routes", "export_datasets"} <= jobs
    assert not {
        name for name in jobs if name.startswith(("ingest_web", "relay_web", "post_web", "export_web"))
    }
    # As many jobs for one feed as for three: the daemon's snapshot does not grow with the feeds.
    one = build_defs(
        {
            "lake": lake,
            "pyspark": dg.ResourceDefinition.none_resource(),
            "export_storage": LocalExportStorage(root=str(tmp_path / "exports")),
            "es": ElasticsearchSinkResource(sink_name="es", url="http://127.0.0.1:1"),
        },
        FEEDS[:1],
        [RouteSpec(FEEDS[0], "es", sink_kind="elasticsearch")],
        layout="shared",
    )
    # The three feeds' routes add only a replay job, for their second sink (siem).
    assert len(one.resolve_all_job_defs()) == len(jobs) - 1
    land_file(lake, "web", "a.json", json_lines({"n": 1}, {"n": 2}))
    with dg.DagsterInstance.ephemeral() as instance:
        landing = tick(defs, "feeds_landing_sensor", lake, instance)
        [relay] = landing.run_requests
        assert relay.job_name == "relay_feeds" and relay.tags["lakerelay/feed"] == "web"
        assert relay.asset_selection == [dg.AssetKey("web"), dg.AssetKey(["sinks", "web_in_es"])]
        # A run of the shared job that selects one feed ingests that feed alone.
        ran = defs.resolve_job_def("relay_feeds").execute_in_process(
            instance=instance, asset_selection=[dg.AssetKey("web")], tags=relay.tags
        )
        assert ran.success
        assert [m.asset_key for m in ran.get_asset_materialization_events()] == [dg.AssetKey("web")]
        assert lake.table("web").count() == 2
        routes = tick(defs, "routes_table_sensor", lake, instance)
        [post] = routes.run_requests
        assert post.job_name == "post_routes" and post.asset_selection == [
            dg.AssetKey(["sinks", "web_in_es"])
        ]
        assert post.tags["lakerelay/route"] == "es" and post.tags["lakerelay/feed"] == "web"


def test_a_job_layout_that_does_not_exist_stops_the_load(monkeypatch) -> None:
    monkeypatch.setenv("LAKERELAY_JOB_LAYOUT", "one_per_feed")
    with pytest.raises(
        ValueError, match="LAKERELAY_JOB_LAYOUT='one_per_feed' must be one of per_route, shared"
    ):
        deployment.job_layout()
