"""The flow driven the way CI drives it: the Dagster CLI in subprocesses, with a persistent DAGSTER_HOME."""

import gzip
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance, DagsterRunStatus

from helpers import dagster_cli_env, delta_table, land_events, local_lake

pytestmark = pytest.mark.e2e
DAGSTER = str(Path(sys.executable).parent / "dagster")
ROOT = Path(__file__).resolve().parent.parent


def cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    result = subprocess.run([DAGSTER, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (
        f"dagster {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    )
    return result


def test_definitions_validate_through_the_workspace_file() -> None:
    result = subprocess.run(
        [DAGSTER, "definitions", "validate", "-w", "workspace.yaml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "All code locations passed validation" in result.stderr + result.stdout


def test_ingest_post_and_export_through_the_dagster_cli(tmp_path: Path, sink_server) -> None:
    lake = local_lake(tmp_path)
    written = land_events(lake, files=6, records_per_file=400)
    env = dagster_cli_env(tmp_path, sink_server.url)
    dagster_home = Path(env["DAGSTER_HOME"])
    defs = ["-m", "pipelines.definitions"]

    cli(["asset", "materialize", *defs, "--select", "events"], env)
    cli(["job", "execute", *defs, "-j", "post_events_to_elasticsearch"], env)
    cli(["job", "execute", *defs, "-j", "post_events_to_splunk"], env)
    cli(["asset", "materialize", *defs, "--select", "events_export"], env)

    rows = delta_table(lake).num_rows
    assert rows == written
    assert sink_server.es_count("events") == rows
    assert sink_server.hec_count("main") == rows
    [manifest_path] = (tmp_path / "exports" / "events").glob("*/manifest.json")
    manifest = json.loads(manifest_path.read_text())
    assert manifest["total_rows"] == rows
    for part in manifest["parts"]:
        data = (tmp_path / "exports" / part["key"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == part["sha256"]
        assert len(gzip.decompress(data).splitlines()) == part["rows"]

    # What the UI would show: four successful runs, with the post metadata recorded.
    with DagsterInstance.from_config(str(dagster_home)) as instance:
        runs = instance.get_runs()
        assert [r.status for r in runs] == [DagsterRunStatus.SUCCESS] * 4
        event = instance.get_latest_materialization_event(AssetKey(["sinks", "events_in_elasticsearch"]))
        assert event.asset_materialization.metadata["accepted"].value == rows
