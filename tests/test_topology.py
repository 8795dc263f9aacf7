"""The topology declared as components: YAML in the defs folder, joined with errors that name the file."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import dagster as dg
import pytest
from deltalake import DeltaTable

from lakerelay.devtools.sample_events import write_landing_zone
from pipelines.components import ElasticsearchSink, Export, Feed, Route, SplunkHecSink
from pipelines.definitions import build_defs
from pipelines.topology import join, load_topology
from resources.delta_arrow import read_delta
from resources.export_storage import LocalExportStorage
from resources.lake import LakeResource
from resources.sinks.resource import GenericRestSinkResource

ROOT = Path(__file__).resolve().parent.parent


def write_project(root: Path, files: dict[str, str]) -> Path:
    """A dg project whose defs folder holds ``files`` (path under defs → YAML), importable from ``root``."""
    package = root / "userproj"
    (package / "defs").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "defs" / "__init__.py").write_text("")
    (root / "pyproject.toml").write_text(
        textwrap.dedent(
            """
            [tool.dg]
            directory_type = "project"
            [tool.dg.project]
            root_module = "userproj"
            defs_module = "userproj.defs"
            """
        )
    )
    for name, text in files.items():
        path = package / "defs" / name / "defs.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    for module in [m for m in sys.modules if m.startswith("userproj")]:
        monkeypatch.delitem(sys.modules, module)

    def make(files: dict[str, str]) -> Path:
        return write_project(tmp_path, files)

    return make


FEED = """
type: pipelines.components.Feed
attributes:
  name: {name}
"""


def test_the_shipped_defs_declare_events_to_both_local_sinks() -> None:
    topology = load_topology()
    assert [f.name for f in topology.feeds] == ["events"]
    assert sorted(topology.sinks) == ["elasticsearch", "splunk"]
    assert sorted((r.feed.name, r.name, r.sink_kind) for r in topology.routes) == [
        ("events", "elasticsearch", "elasticsearch"),
        ("events", "splunk", "splunk"),
    ]
    es = topology.sinks["elasticsearch"]
    assert es.url == "http://127.0.0.1:9200" and es.index == "events"
    assert es.api_key is None  # LAKERELAY_ES_API_KEY unset: no API key, as on a laptop


def test_a_generic_rest_sink_is_added_by_yaml_alone(project, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALERTS_API_TOKEN", "t0ken")
    root = project(
        {
            "feeds/alerts": FEED.format(name="alerts"),
            "sinks/alerts_api": """
                type: pipelines.components.RestSink
                attributes:
                  name: alerts_api
                  url: http://127.0.0.1:1
                  path: /v1/alerts
                  body_format: ndjson
                  bearer_token_env: ALERTS_API_TOKEN
                """,
            "routes/alerts": """
                type: pipelines.components.Route
                attributes:
                  feed: alerts
                  sink: alerts_api
                  where: "severity = 'critical'"
                  destination:
                    path: /v1/critical
                """,
        }
    )
    topology = load_topology(root)
    sink = topology.sinks["alerts_api"]
    assert isinstance(sink, GenericRestSinkResource) and sink.path == "/v1/alerts"
    assert isinstance(sink.bearer_token, dg.EnvVar)
    [route] = topology.routes
    assert (route.name, route.where, dict(route.destination)) == (
        "alerts_api",
        "severity = 'critical'",
        {"path": "/v1/critical"},
    )
    defs = build_defs(
        {
            "lake": LakeResource(lake_uri="/tmp/x", landing_uri="/tmp/y"),
            "pyspark": dg.ResourceDefinition.none_resource(),
            "export_storage": LocalExportStorage(root="/tmp/z"),
            **topology.sinks,
        },
        topology.feeds,
        topology.routes,
    )
    job = defs.resolve_job_def("post_alerts_to_alerts_api")
    assert job.tags["lakerelay/route"] == "alerts_api"
    assert defs.resolve_assets_def(route.asset_key).specs_by_key[route.asset_key].kinds >= {"rest", "spark"}


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (
            {"feeds/web": FEED.format(name="web").replace("name: web", "name: web\n  format: jsn")},
            r"feeds/web/defs.yaml: Feed: format: Input should be 'json', 'json_array', 'csv' or 'parquet' \(got 'jsn'\)",
        ),
        (
            {"feeds/web": FEED.format(name="web") + "  sorce: web\n"},
            r"feeds/web/defs.yaml:5: Feed: unknown key 'sorce'; the keys it takes: name, source, table",
        ),
        (
            {
                "feeds/web": FEED.format(name="web"),
                "routes/web": "type: pipelines.components.Route\nattributes:\n  feed: web\n  sink: es\n",
            },
            r"routes/web/defs.yaml: route of feed 'web' to sink 'es': no sink is named 'es'; sinks: none",
        ),
        (
            {"feeds/a": FEED.format(name="web"), "feeds/b": FEED.format(name="web")},
            r"feeds/b/defs.yaml: feed 'web' is also declared in .*feeds/a/defs.yaml",
        ),
        (
            {"feeds/web": FEED.format(name="web").replace("name: web", "name: web\n  settle_time: soon")},
            r"feeds/web/defs.yaml: feed 'web': settle_time: cannot read duration 'soon'",
        ),
    ],
)
def test_a_wrong_value_names_the_file_the_key_and_the_fix(project, files: dict, message: str) -> None:
    root = project(files)
    with pytest.raises(Exception, match=message):
        load_topology(root)


def test_a_destination_key_the_sink_does_not_take_is_refused() -> None:
    feed = Feed(name="web")
    hec = SplunkHecSink(name="hec", url="http://127.0.0.1:1", token_env="T")
    with pytest.raises(
        ValueError,
        match=r"destination key\(s\) op_type do not apply to a SplunkHecSink; it takes index, source",
    ):
        join([feed], [hec], [Route(feed="web", sink="hec", destination={"op_type": "create"})], [])


def test_two_routes_of_a_feed_to_one_sink_need_their_own_names() -> None:
    feed, es = Feed(name="web"), ElasticsearchSink(name="es", url="http://127.0.0.1:1")
    with pytest.raises(ValueError, match="route 'web/es' is also declared"):
        join([feed], [es], [Route(feed="web", sink="es"), Route(feed="web", sink="es", where="true")], [])
    topology = join(
        [feed],
        [es],
        [Route(feed="web", sink="es"), Route(feed="web", sink="es", name="errors", where="status >= 500")],
        [],
    )
    assert sorted(r.asset_key.to_user_string() for r in topology.routes) == [
        "sinks/web_in_errors",
        "sinks/web_in_es",
    ]


def test_an_export_names_its_feed() -> None:
    feed = Feed(name="web", table="web_bronze")
    topology = join([feed], [], [], [Export(dataset="web_daily", feed="web", format="csv")])
    [export] = topology.exports or []
    assert (export.table, export.source_asset, export.format) == ("web_bronze", "web", "csv")
    with pytest.raises(ValueError, match="names feed 'nope', which is not declared; feeds: web"):
        join([feed], [], [], [Export(dataset="x", feed="nope")])


def test_secrets_are_environment_references_not_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MY_KEY", raising=False)
    assert (
        ElasticsearchSink(name="es", url="http://127.0.0.1:1", api_key_env="MY_KEY").resource().api_key
        is None
    )
    monkeypatch.setenv("MY_KEY", "s3cr3t-value")
    es = ElasticsearchSink(name="es", url="http://127.0.0.1:1", api_key_env="MY_KEY").resource()
    assert isinstance(es.api_key, dg.EnvVar) and "s3cr3t-value" not in repr(es)
    with pytest.raises(Exception, match="api_key"):
        ElasticsearchSink(name="es", url="http://127.0.0.1:1", api_key="literal")  # type: ignore[call-arg]
    hec = SplunkHecSink(
        name="h", url="http://127.0.0.1:1", token_env="UNSET_TOKEN_VAR", development_token="dev"
    )
    assert hec.resource().token == "dev"  # only while the variable is unset
    monkeypatch.setenv("UNSET_TOKEN_VAR", "real")
    assert isinstance(hec.resource().token, dg.EnvVar)


def test_dg_checks_lists_and_launches_the_project_as_printed(tmp_path: Path) -> None:
    dg_cli = str(Path(sys.executable).parent / "dg")
    home = tmp_path / "home"
    write_landing_zone(home / "landing" / "events", files=2, records_per_file=25)
    env = {**os.environ, "LAKERELAY_HOME": str(home)}
    env.pop("DAGSTER_HOME", None)
    launched = subprocess.run(
        [dg_cli, "launch", "--job", "ingest_events"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert read_delta(DeltaTable(str(home / "lake" / "events"))).num_rows == 50
    listed = subprocess.run(
        [dg_cli, "list", "defs", "--json"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert "post_events_to_elasticsearch" in listed.stdout and "sinks/events_in_splunk" in listed.stdout
    checked = subprocess.run([dg_cli, "check", "yaml"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert checked.returncode == 0, checked.stdout[-2000:] + checked.stderr[-2000:]


def test_dg_scaffold_writes_a_commented_declaration_that_loads_as_it_is(project) -> None:
    root = project({"feeds/events": FEED.format(name="events")})
    dg_cli = str(Path(sys.executable).parent / "dg")
    for kind, folder in [
        ("Feed", "feeds/web"),
        ("ElasticsearchSink", "sinks/elasticsearch"),
        ("SplunkHecSink", "sinks/hec"),
        ("RestSink", "sinks/api"),
        ("Route", "routes/web_to_es"),
        ("Export", "exports/web"),
    ]:
        made = subprocess.run(
            [dg_cli, "scaffold", "defs", f"pipelines.components.{kind}", folder],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert made.returncode == 0, made.stdout[-2000:] + made.stderr[-2000:]
        text = (root / "userproj" / "defs" / folder / "defs.yaml").read_text()
        assert text.startswith("# ") and f"type: pipelines.components.{kind}" in text
    topology = load_topology(root)
    assert sorted(f.name for f in topology.feeds) == ["events", "web"]
    assert sorted(topology.sinks) == ["api", "elasticsearch", "hec"]
    assert [(r.feed.name, r.name) for r in topology.routes] == [("events", "web_to_es")]
    assert [e.dataset for e in topology.exports or []] == ["web"]
