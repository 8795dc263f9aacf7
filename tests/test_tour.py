"""The README's tour, step by step, with its own commands (the UI aside): land sample files, the relay
run, both sinks counted over HTTP, an export taken with dg and verified with lakerelay-export."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from lakerelay.localsink.server import LocalSinkServer

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def run(*command: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{' '.join(command)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def test_the_readme_tour_lands_files_in_both_sinks_and_exports_them(
    tmp_path: Path, sink_server: LocalSinkServer
) -> None:
    home = tmp_path / "lakerelay"
    env = {
        **{k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"},
        "LAKERELAY_HOME": str(home),
        "LAKERELAY_ES_URL": sink_server.url,
        "LAKERELAY_HEC_URL": sink_server.url,
    }
    run(str(BIN / "lakerelay"), "sample-events", str(home / "landing" / "events"), "--files", "2", env=env)
    run(str(BIN / "dg"), "launch", "--job", "relay_events", env=env)
    count = requests.get(f"{sink_server.url}/events/_count", timeout=10).json()["count"]
    hec = requests.get(f"{sink_server.url}/_localsink/stats", timeout=10).json()["hec"]["events"]
    assert count == hec == 2000
    run(str(BIN / "dg"), "launch", "--job", "export_events", env=env)
    [manifest] = (home / "exports" / "events").glob("*/manifest.json")
    verified = run(str(BIN / "lakerelay-export"), "verify", str(manifest), env=env)
    assert "every part matches the manifest" in verified.stdout
