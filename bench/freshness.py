"""Freshness of the always-on mode: a file lands → all its records are counted by both sinks.

lakerelay runs as `make ui` runs it: the Dagster daemon with sensors on (1 s interval), a queue that
holds one run per pool, a long-lived Spark Connect server, the relay job (ingest, then post to
Elasticsearch and Splunk HEC in one run) and the table sensors. Side by side, in the same run, the
peer is the seed's "Auto Loader to REST API" design: Spark Structured Streaming's file source with
`trigger(processingTime="1 second")` and `foreachBatch` posting each micro-batch with the same sink
writer. Both watch their own landing folder; every file is written to both at once (atomic rename).

A file counts as fresh when every one of its records is in Elasticsearch *and* in HEC (the local sink,
read in this process: each poll scans only documents that arrived since the last one). Last line:
`freshness_p50_s= freshness_p95_s= streaming_p50_s= streaming_p95_s= files= lost= duplicates=
streaming_lost= streaming_duplicates=`, goals p50 ≤ 15 s, p95 ≤ 30 s, 0 lost, 0 duplicates.

    .venv/bin/python -m bench.freshness                     # 3 minutes, a 1,000-event file every 5 s
    .venv/bin/python -m bench.freshness --duration 60 --no-peer
    .venv/bin/python -m bench.freshness --mode continuous --interval 1 --idle 60

``--mode continuous`` gives the feed ``mode: continuous``: the daemon's keeper sensor starts one
long-lived run that watches the folder (inotify) and posts each micro-batch; its figures are printed
as ``continuous_p50_s``/``continuous_p95_s``, and ``--idle N`` then lands nothing for N seconds and
prints the CPU the continuous run's process (and the Spark Connect server) used meanwhile, as
``idle_cpu_pct`` and ``idle_cpu_spark_pct`` (percent of one core).
"""

import argparse
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import orjson
import psutil

from lakerelay.devtools import spark_connect
from lakerelay.devtools.dagster_home import prepare as prepare_dagster_home
from lakerelay.localsink import LocalSinkServer

ROOT = Path(__file__).resolve().parent.parent
LAKERELAY, STREAMING = "lakerelay", "streaming"
# (system, sink) → where the local sink stores what that system posted.
STREAMS = {
    (LAKERELAY, "es"): "events",
    (LAKERELAY, "hec"): "main",
    (STREAMING, "es"): "peer",
    (STREAMING, "hec"): "peer",
}


def events_file(index: int, records: int) -> bytes:
    """One landing file: ``records`` events, each naming its file so that the watcher can count them."""
    base = 1_764_000_000 + index * 5
    lines = (
        orjson.dumps(
            {
                "event_id": f"f{index:05d}-{n:05d}",
                "file": index,
                "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(base + n % 5)),
                "host": f"web-{n % 16:02d}",
                "severity": ("info", "warning", "error")[n % 3],
                "status_code": 200 if n % 7 else 503,
                "bytes_in": n * 13 % 5000,
                "message": f"request {n} of file {index}",
            }
        )
        for n in range(records)
    )
    return b"\n".join(lines) + b"\n"


def land(folder: Path, name: str, payload: bytes) -> None:
    """Write where readers cannot see a half file, then rename into the landing folder."""
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder.parent / f".{folder.name}-{name}.partial"
    partial.write_bytes(payload)
    os.replace(partial, folder / name)


class Watcher(threading.Thread):
    """Polls the local sink's store and records when each file's records are all in each stream."""

    def __init__(self, sink: LocalSinkServer, records: int) -> None:
        super().__init__(daemon=True)
        self.sink = sink
        self.records = records
        self.offsets = dict.fromkeys(STREAMS, 0)
        self.counts: dict[tuple, Counter] = {key: Counter() for key in STREAMS}
        self.ids: dict[tuple, Counter] = {key: Counter() for key in STREAMS}
        self.done_at: dict[tuple, dict[int, float]] = {key: {} for key in STREAMS}
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(0.2):
            self.poll()

    def poll(self) -> None:
        now = time.time()
        for key, index in STREAMS.items():
            if key[1] == "es":
                new = [orjson.loads(s) for s in self.sink.store.es_sources_after(index, self.offsets[key])]
            else:
                new = [e["event"] for e in self.sink.store.hec_list(index, offset=self.offsets[key]) or []]
            self.offsets[key] += len(new)
            for doc in new:
                self.ids[key][doc["event_id"]] += 1
                # ES overwrites by id: count a file's document once, however often it was re-posted.
                if key[1] == "hec" or self.ids[key][doc["event_id"]] == 1:
                    self.counts[key][doc["file"]] += 1
                    if self.counts[key][doc["file"]] == self.records:
                        self.done_at[key][doc["file"]] = now

    def fresh_at(self, system: str, file: int) -> float | None:
        """When the file's records were in both sinks of ``system``."""
        times = [self.done_at[(system, sink)].get(file) for sink in ("es", "hec")]
        return None if None in times else max(times)


def start_daemon(env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", "workspace.yaml"],
        cwd=ROOT,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def start_peer(landing: Path, sink_url: str, work: Path, log: Path) -> subprocess.Popen:
    ready = work / "ready"
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.freshness_peer", str(landing), sink_url, str(work)],
        cwd=ROOT,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"},
    )
    deadline = time.monotonic() + 180
    while not ready.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the streaming peer did not start; see {log}")
        time.sleep(0.5)
    return process


def stop_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def run_breakdown(dagster_home: Path, written: list[float]) -> dict[str, float]:
    """Median seconds per stage, from the Dagster instance's own records of the relay runs.

    tick_wait_s: a file's write → the first relay run created after it (sensor tick, queue);
    run_launch_s: created → started (queue, process start, code load); ingest_s and post_s: steps.
    """
    from dagster import DagsterEventType, DagsterInstance, RunsFilter

    stages: dict[str, list[float]] = {"tick_wait_s": [], "run_launch_s": [], "ingest_s": [], "post_s": []}
    with DagsterInstance.from_config(str(dagster_home)) as instance:
        records = instance.get_run_records(RunsFilter(job_name="relay_events"))
        created = sorted(r.create_timestamp.timestamp() for r in records)
        for moment in written:
            later = [c for c in created if c >= moment]
            if later:
                stages["tick_wait_s"].append(later[0] - moment)
        for record in records:
            if record.start_time is None or record.end_time is None:
                continue
            stages["run_launch_s"].append(record.start_time - record.create_timestamp.timestamp())
            steps: dict[str, dict[DagsterEventType, float]] = {}
            for event_type in (DagsterEventType.STEP_START, DagsterEventType.STEP_SUCCESS):
                for event in instance.all_logs(record.dagster_run.run_id, of_type=event_type):
                    steps.setdefault(event.step_key, {})[event_type] = event.timestamp
            for step, marks in steps.items():
                if len(marks) == 2:
                    seconds = marks[DagsterEventType.STEP_SUCCESS] - marks[DagsterEventType.STEP_START]
                    stages["post_s" if "post" in step else "ingest_s"].append(seconds)
    return {name: round(statistics.median(values), 2) for name, values in stages.items() if values}


def continuous_run_processes(dagster_home: Path) -> list[psutil.Process]:
    """The continuous run's worker of this instance and its children.

    The daemon's code server starts a run worker as a ``multiprocessing`` spawn child (Dagster 1.13's
    default launcher), or as ``dagster api execute_run``.
    """
    found = []
    for process in psutil.process_iter():
        try:
            command = " ".join(process.cmdline())
            if ("execute_run" in command or "spawn_main" in command) and process.environ().get(
                "DAGSTER_HOME"
            ) == str(dagster_home):
                found.extend([process, *process.children(recursive=True)])
        except psutil.Error:
            continue
    for process in found:
        with contextlib.suppress(psutil.Error):
            print(f"idle CPU of pid {process.pid}: {' '.join(process.cmdline())[:120]}", flush=True)
    return found


def cpu_seconds(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system + times.children_user + times.children_system
    return total


def idle_cpu_pct(processes: list[psutil.Process], seconds: float) -> float:
    """Percent of one core ``processes`` used over ``seconds`` of nothing landing."""
    before, started = cpu_seconds(processes), time.monotonic()
    time.sleep(seconds)
    return round(100 * (cpu_seconds(processes) - before) / (time.monotonic() - started), 2)


def wait_until_ready(heartbeat: Path, timeout_s: float = 600) -> None:
    """Until the continuous run says it waits for files (as the streaming peer's ``ready`` file does)."""
    deadline = time.monotonic() + timeout_s
    while not (heartbeat.exists() and orjson.loads(heartbeat.read_bytes()).get("ready")):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the continuous run did not get ready in {timeout_s:.0f}s ({heartbeat})")
        time.sleep(0.5)


def write_continuous_feeds(home: Path) -> Path:
    """A feeds file with the embedded events feed in continuous mode."""
    from pipelines.feeds import EVENTS_FEED

    path = home / "feeds.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    feed = {
        "name": "events",
        "source": "events",
        "schema_hints": EVENTS_FEED.schema_hints,
        "mode": "continuous",
    }
    path.write_bytes(orjson.dumps({"feeds": [feed]}))
    return path


def continuous_breakdown(dagster_home: Path) -> list[dict[str, float]]:
    """The continuous run's coalesced reports (about one a minute): per window, the median seconds of a
    micro-batch's ingest, each sink's post, and the whole micro-batch."""
    from dagster import AssetKey, DagsterInstance

    keys = {
        "ingest_s": (AssetKey("events"), "continuous_window_ingest_s_median"),
        "micro_batch_s": (AssetKey("events"), "continuous_window_micro_batch_s_median"),
        "micro_batch_max_s": (AssetKey("events"), "continuous_window_micro_batch_s_max"),
        "post_es_s": (AssetKey(["sinks", "events_in_elasticsearch"]), "continuous_window_post_s_median"),
        "post_hec_s": (AssetKey(["sinks", "events_in_splunk"]), "continuous_window_post_s_median"),
    }
    windows: dict[int, dict[str, float]] = {}
    with DagsterInstance.from_config(str(dagster_home)) as instance:
        for name, (key, field) in keys.items():
            records = instance.fetch_materializations(key, limit=50).records
            for index, record in enumerate(sorted(records, key=lambda r: r.timestamp)):
                value = record.asset_materialization.metadata.get(field)
                if value is not None:
                    windows.setdefault(index, {})[name] = value.value
    return [windows[i] for i in sorted(windows)]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=180, help="seconds of landing files")
    parser.add_argument("--interval", type=float, default=5, help="seconds between two files")
    parser.add_argument("--records", type=int, default=1000, help="events per file")
    parser.add_argument("--drain-timeout", type=float, default=180, help="seconds to wait for the last files")
    parser.add_argument("--no-peer", action="store_true", help="lakerelay alone")
    parser.add_argument("--keep", action="store_true", help="keep the working folder")
    parser.add_argument(
        "--mode", choices=("triggered", "continuous"), default="triggered", help="the feed's mode"
    )
    parser.add_argument(
        "--idle", type=float, default=0, help="continuous: seconds of idle CPU measured at the end"
    )
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="lakerelay-freshness-"))
    home = work / "lakerelay"
    dagster_home = prepare_dagster_home(work / "dagster")
    sink = LocalSinkServer(host="127.0.0.1", port=0).start()
    watcher = Watcher(sink, args.records)
    processes: list[subprocess.Popen] = []
    connect_dir = work / "spark-connect"
    try:
        started = time.perf_counter()
        connect = spark_connect.start(connect_dir, port=spark_connect.free_port(), master="local[2]")
        print(f"Spark Connect server {connect.url} up in {time.perf_counter() - started:.1f}s", flush=True)
        env = {
            **os.environ,
            "DAGSTER_HOME": str(dagster_home),
            "LAKERELAY_HOME": str(home),
            "LAKERELAY_ES_URL": sink.url,
            "LAKERELAY_HEC_URL": sink.url,
            "LAKERELAY_SENSORS_RUNNING": "1",
            "LAKERELAY_SENSOR_INTERVAL_S": "1",
            "LAKERELAY_SPARK_REMOTE": connect.url,
        }
        if args.mode == "continuous":
            env["LAKERELAY_FEEDS_FILE"] = str(write_continuous_feeds(home))
        processes.append(start_daemon(env, work / "daemon.log"))
        if not args.no_peer:
            processes.append(start_peer(work / "peer-landing", sink.url, work / "peer", work / "peer.log"))
        watcher.start()
        if args.mode == "continuous":
            wait_until_ready(home / "lake" / "_lakerelay" / "continuous" / "events.json")

        files = int(args.duration // args.interval)
        written: list[float] = []
        next_at = time.time()
        for index in range(files):
            time.sleep(max(0.0, next_at - time.time()))
            payload = events_file(index, args.records)
            written.append(time.time())
            land(home / "landing" / "events", f"events-{index:05d}.json", payload)
            if not args.no_peer:
                land(work / "peer-landing", f"events-{index:05d}.json", payload)
            next_at += args.interval
        systems = [LAKERELAY] if args.no_peer else [LAKERELAY, STREAMING]
        deadline = time.time() + args.drain_timeout
        while time.time() < deadline and any(
            watcher.fresh_at(system, i) is None for system in systems for i in range(files)
        ):
            time.sleep(0.5)
        time.sleep(2)  # late duplicates would arrive now
        watcher.stopping.set()
        watcher.join()
        watcher.poll()
        idle: dict[str, float] = {}
        if args.mode == "continuous" and args.idle > 0:
            run_processes = continuous_run_processes(dagster_home)
            spark = [psutil.Process(connect.pid)]
            before_spark = cpu_seconds(spark)
            idle["idle_cpu_pct"] = idle_cpu_pct(run_processes, args.idle)
            idle["idle_cpu_spark_pct"] = round(100 * (cpu_seconds(spark) - before_spark) / args.idle, 2)
            idle["idle_run_processes"] = len(run_processes)
    finally:
        for process in processes:
            stop_group(process)
        spark_connect.stop(connect_dir)
        sink.stop()

    results: dict[str, object] = {}
    own_prefix = "continuous" if args.mode == "continuous" else "freshness"
    for system, prefix in ((LAKERELAY, own_prefix), (STREAMING, "streaming")):
        if system not in systems:
            continue
        delays = [t - written[i] for i in range(files) if (t := watcher.fresh_at(system, i)) is not None]
        expected = files * args.records
        unique = [len(watcher.ids[(system, sink)]) for sink in ("es", "hec")]
        hec_copies = sum(watcher.ids[(system, "hec")].values())
        es_copies = watcher.offsets[(system, "es")]  # documents first indexed (overwrites are not new)
        label = "" if system == LAKERELAY else "streaming_"
        print(
            f"{system}: {len(delays)}/{files} files fresh; write → in both sinks: "
            f"p50 {percentile(delays, 0.5):.1f}s p95 {percentile(delays, 0.95):.1f}s max {max(delays):.1f}s"
            if delays
            else f"{system}: no file reached both sinks"
        )
        print(
            f"  unique ids ES {unique[0]}, HEC {unique[1]}; HEC events {hec_copies}; ES documents {es_copies}"
        )
        if delays:
            results[f"{prefix}_p50_s"] = round(percentile(delays, 0.5), 1)
            results[f"{prefix}_p95_s"] = round(percentile(delays, 0.95), 1)
        results[f"{label}lost"] = sum(expected - u for u in unique)
        results[f"{label}duplicates"] = hec_copies - unique[1] + es_copies - unique[0]
    if args.mode == "triggered":
        breakdown = run_breakdown(dagster_home, written)
        print("lakerelay relay runs, median seconds per stage (from the Dagster instance):", breakdown)
    else:
        for window in continuous_breakdown(dagster_home):
            print("continuous run, one report window, median seconds per micro-batch:", window)
    results.update(idle)
    if args.keep:
        print(f"working folder: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    results["files"] = files
    print(" ".join(f"{k}={v}" for k, v in results.items()))


if __name__ == "__main__":
    main()
