"""`make demo`: the whole flow once, through the Dagster CLI, on embedded defaults.

From the checkout (a dg project) each job runs with `dg launch --job`; from an installed package
with no project around it (`make plain`) with `dagster job execute -m pipelines.definitions`, the
CLI the design card names for CI. Every job logs at INFO, so the output is the steps' own lines.

Generates a landing zone, starts the local sink server, ingests through the ingest asset, posts with
the Spark jobs to the Elasticsearch- and Splunk-compatible endpoints, exports to a local folder, then
prints what each stage holds, asked from the stage itself, and exits non-zero if the counts disagree.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import requests
from deltalake import DeltaTable

from lakerelay.devtools.sample_events import write_landing_zone
from lakerelay.devtools.sink_process import SinkProcess
from resources.delta_arrow import read_delta

BIN = Path(sys.executable).parent


def launch(job: str, env: dict[str, str]) -> None:
    """Run ``job`` to its end with Dagster's CLI, printing the command first."""
    in_project = Path("pyproject.toml").is_file() and "[tool.dg" in Path("pyproject.toml").read_text()
    if in_project:
        command = [str(BIN / "dg"), "launch", "--job", job]
    else:
        command = [str(BIN / "dagster"), "job", "execute", "-m", "pipelines.definitions", "-j", job]
    print(f"\n$ {' '.join(command)}", flush=True)
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True)
    print(f"  ({time.perf_counter() - started:.1f}s)", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--home", type=Path, default=Path(".lakerelay/demo"), help="all demo state goes here")
    parser.add_argument("--files", type=int, default=40)
    parser.add_argument("--records-per-file", type=int, default=1000)
    args = parser.parse_args()

    home = args.home.resolve()
    if home.exists():
        shutil.rmtree(home)
    (home / "dagster").mkdir(parents=True)
    (home / "dagster" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    written = write_landing_zone(home / "landing" / "events", args.files, args.records_per_file)
    print(f"landing zone: {written} events in {args.files} files under {home / 'landing' / 'events'}")

    with SinkProcess(home / "sink.port") as sink:
        print(f"local sink server: {sink.url} (Elasticsearch _bulk and Splunk HEC)")
        env = {
            **os.environ,
            "DAGSTER_HOME": str(home / "dagster"),
            "LAKERELAY_HOME": str(home),
            "LAKERELAY_ES_URL": sink.url,
            "LAKERELAY_HEC_URL": sink.url,
        }
        for job in (
            "ingest_events",
            "post_events_to_elasticsearch",
            "post_events_to_splunk",
            "export_events",
        ):
            launch(job, env)
        es_docs = requests.get(f"{sink.url}/events/_count", timeout=10).json()["count"]
        hec_events = sink.stats()["hec"]["indices"].get("main", 0)

    delta_rows = read_delta(DeltaTable(str(home / "lake" / "events")), columns=[]).num_rows
    manifests = sorted((home / "exports").glob("events/*/manifest.json"))
    manifest = json.loads(manifests[-1].read_text()) if manifests else {"total_rows": -1}

    print("\nlakerelay demo summary")
    print(f"  landing events written          {written}")
    print(f"  rows in Delta table events      {delta_rows}")
    print(f"  Elasticsearch docs (sink count) {es_docs}")
    print(f"  Splunk HEC events (sink count)  {hec_events}")
    print(f"  export manifest                 {manifests[-1] if manifests else 'MISSING'}")
    print(
        f"  export rows (manifest)          {manifest['total_rows']}  in {len(manifest.get('parts', []))} parts"
    )
    counts = {written, delta_rows, es_docs, hec_events, manifest["total_rows"]}
    if len(counts) != 1:
        print("\nFAILED: the stages disagree; see the run logs above.", file=sys.stderr)
        return 1
    print("\nOK: every stage holds every record.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
