"""`make demo`: the whole flow once, through the Dagster CLI, on embedded defaults.

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

from devtools.sample_events import write_landing_zone
from devtools.sink_process import SinkProcess
from resources.delta_arrow import read_delta

DEFS = ["-m", "pipelines.definitions"]


def dagster(args: list[str], env: dict[str, str]) -> None:
    command = [str(Path(sys.executable).parent / "dagster"), *args]
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
    # Run logs at INFO: the steps' own lines (counts, versions, timings), not every engine event.
    quiet = home / "run_logging.yaml"
    quiet.write_text("loggers:\n  console:\n    config:\n      log_level: INFO\n")
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
        config = ["-c", str(quiet)]
        dagster(["asset", "materialize", *DEFS, *config, "--select", "events"], env)
        dagster(["job", "execute", *DEFS, *config, "-j", "post_events_to_elasticsearch"], env)
        dagster(["job", "execute", *DEFS, *config, "-j", "post_events_to_splunk"], env)
        dagster(["asset", "materialize", *DEFS, *config, "--select", "events_export"], env)
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
