"""Freshness: a file lands → all its records are counted by both sinks, four ways side by side.

In one run, every file is written (atomic rename) to the landing folder of each system at once:

- ``continuous``: a lakerelay feed in ``mode: continuous``: the daemon's keeper sensor starts one
  long-lived run that watches its folder (inotify), ingests each micro-batch into Delta and posts it.
- ``triggered``: a lakerelay feed in the default mode, as `make ui` runs it: the daemon's landing sensor
  (``--sensor-interval``, 1 s) launches the relay job (ingest, then post to Elasticsearch and HEC).
- ``streaming``: the seed's "Auto Loader to REST API" design: Spark Structured Streaming's file source,
  ``trigger(processingTime="1 second")``, ``foreachBatch`` posting with lakerelay's own sink writer.
- ``streaming_default``: the same at Spark's default trigger (a micro-batch as soon as the last ends).

Both lakerelay feeds are declared as components in a throwaway dg project (sinks ``es`` and ``hec``
on the local sink, each feed to its own index) and share the Dagster daemon and one Spark Connect
server (``local[2]``; ``--spark local`` runs Spark in each run's process instead). A file counts as
fresh when every one of its records is in Elasticsearch *and* in HEC (the local sink, read in this
process). After the files, ``--idle N`` lands nothing for N seconds and measures the CPU of the
continuous run's processes; ``--sustained-rate R`` then lands R events a second for
``--sustained-duration`` seconds (in files of ``--sustained-file-records``) on the continuous feed only,
and measures its lag (written → in both sinks) and whether it grows (the last third's p95 over the
first third's).

Goals (issue 21): continuous p50 ≤ 1.0 s and p95 ≤ 2.0 s, p50 no higher than the better streaming
p50, 0 lost and 0 duplicates (HEC included), idle ≤ 2 % of one core, sustained lag p95 ≤ 3 s and not
growing. Last line, ``key=value``: ``continuous_p50_s= continuous_p95_s= triggered_p50_s=
streaming_p50_s= streaming_default_p50_s= idle_cpu_pct= sustained_lag_p95_s= lost= duplicates=`` and
more (each system's p95, lost and duplicates; ``sustained_growth``).

    .venv/bin/python -m bench.freshness --interval 1 --idle 60 --sustained-rate 10000   # the issue's run
    .venv/bin/python -m bench.freshness --systems continuous,streaming --duration 60     # a quick look
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
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path

import orjson
import psutil

from bench.feeds import project_with_sinks
from lakerelay.devtools import spark_connect
from lakerelay.devtools.dagster_home import prepare as prepare_dagster_home
from lakerelay.localsink import LocalSinkServer

ROOT = Path(__file__).resolve().parent.parent
CONTINUOUS, TRIGGERED, STREAMING, STREAMING_DEFAULT = (
    "continuous",
    "triggered",
    "streaming",
    "streaming_default",
)
SYSTEMS = (CONTINUOUS, TRIGGERED, STREAMING, STREAMING_DEFAULT)
# The last line, in its order; the other figures follow.
LAST_LINE_KEYS = (
    "continuous_p50_s",
    "continuous_p95_s",
    "triggered_p50_s",
    "streaming_p50_s",
    "streaming_default_p50_s",
    "idle_cpu_pct",
    "sustained_lag_p95_s",
    "lost",
    "duplicates",
)


# The lakerelay feeds are named as their index: the feed's table, relay job and assets follow.
INDEX = {CONTINUOUS: "cont", TRIGGERED: "trig", STREAMING: "peer", STREAMING_DEFAULT: "peerdefault"}


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

    def __init__(self, sink: LocalSinkServer, systems: list[str]) -> None:
        super().__init__(daemon=True)
        self.sink = sink
        self.streams = [(system, kind) for system in systems for kind in ("es", "hec")]
        self.expected: dict[int, int] = {}  # file → its records, set before the file is landed
        self.offsets = dict.fromkeys(self.streams, 0)
        self.counts: dict[tuple, Counter] = {key: Counter() for key in self.streams}
        self.ids: dict[tuple, Counter] = {key: Counter() for key in self.streams}
        self.done_at: dict[tuple, dict[int, float]] = {key: {} for key in self.streams}
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(0.1):
            self.poll()

    def poll(self) -> None:
        now = time.time()
        store = self.sink.store
        for key in self.streams:
            system, kind = key
            index = INDEX[system]
            if kind == "es":
                new = [orjson.loads(s) for s in store.es_sources_after(index, self.offsets[key])]
            else:
                new = [e["event"] for e in store.hec_list(index, offset=self.offsets[key]) or []]
            self.offsets[key] += len(new)
            for doc in new:
                self.ids[key][doc["event_id"]] += 1
                # ES overwrites by id: count a file's document once, however often it was re-posted.
                if kind == "hec" or self.ids[key][doc["event_id"]] == 1:
                    file = doc["file"]
                    self.counts[key][file] += 1
                    if self.counts[key][file] == self.expected.get(file):
                        self.done_at[key][file] = now

    def fresh_at(self, system: str, file: int) -> float | None:
        """When the file's records were in both sinks of ``system``."""
        times = [self.done_at[(system, kind)].get(file) for kind in ("es", "hec")]
        return None if None in times else max(t for t in times if t is not None)

    def lost_and_duplicates(self, system: str, files: list[int]) -> tuple[int, int]:
        expected = sum(self.expected[f] for f in files)
        unique = [len(self.ids[(system, kind)]) for kind in ("es", "hec")]
        hec_copies = sum(self.ids[(system, "hec")].values())
        es_copies = self.offsets[(system, "es")]  # every write takes a sequence number, overwrites too
        lost = sum(expected - u for u in unique)
        return lost, hec_copies - unique[1] + es_copies - unique[0]


def write_project(root: Path, url: str, systems: list[str]) -> Path:
    """A dg project with the lakerelay systems' feeds, each routed to ``es`` and ``hec`` into its own index."""
    from pipelines.feeds import EVENTS_FEED

    defs = project_with_sinks(root, "benchfreshness", ["es", "hec"], url)
    hints = EVENTS_FEED.schema_hints  # "column type, …", as a feed's YAML may give it too
    for system in systems:
        feed = INDEX[system]
        (defs / "feeds" / feed).mkdir(parents=True)
        (defs / "feeds" / feed / "defs.yaml").write_text(
            f"type: pipelines.components.Feed\nattributes:\n  name: {feed}\n  source: {feed}\n"
            f"  mode: {system}\n  schema_hints: {hints}\n"
        )
        routes = "\n---\n".join(
            textwrap.dedent(
                f"""\
                type: pipelines.components.Route
                attributes:
                  feed: {feed}
                  sink: {sink}
                  destination:
                    index: {feed}
                """
            )
            for sink in ("es", "hec")
        )
        (defs / "routes" / feed).mkdir(parents=True)
        (defs / "routes" / feed / "defs.yaml").write_text(routes)
    return root


def start_daemon(env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", "workspace.yaml"],
        cwd=ROOT,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def start_peer(system: str, landing: Path, sink_url: str, work: Path) -> subprocess.Popen:
    peer_work = work / system
    trigger = "processing" if system == STREAMING else "default"
    log = work / f"{system}.log"
    command = [sys.executable, "-m", "bench.freshness_peer", str(landing), sink_url, str(peer_work)]
    command += ["--index", INDEX[system], "--trigger", trigger]
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"},
    )
    deadline = time.monotonic() + 300
    while not (peer_work / "ready").exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the {system} peer did not start; see {log}")
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
    """Median seconds per stage of the triggered feed, from the Dagster instance's own records of its relay runs.

    tick_wait_s: a file's write → the first relay run created after it (sensor tick, queue);
    run_launch_s: created → started (queue, process start, code load); ingest_s and post_s: steps.
    """
    from dagster import DagsterEventType, DagsterInstance, RunsFilter

    stages: dict[str, list[float]] = {"tick_wait_s": [], "run_launch_s": [], "ingest_s": [], "post_s": []}
    with DagsterInstance.from_config(str(dagster_home)) as instance:
        records = instance.get_run_records(RunsFilter(job_name=f"relay_{INDEX[TRIGGERED]}"))
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
                    steps.setdefault(event.step_key or "", {})[event_type] = event.timestamp
            for step, marks in steps.items():
                if len(marks) == 2:
                    seconds = marks[DagsterEventType.STEP_SUCCESS] - marks[DagsterEventType.STEP_START]
                    stages["post_s" if "sinks__" in step else "ingest_s"].append(seconds)
    return {name: round(statistics.median(values), 2) for name, values in stages.items() if values}


def continuous_breakdown(dagster_home: Path) -> list[dict[str, float]]:
    """The continuous run's coalesced reports (about one a minute): per window, the median seconds of a
    micro-batch's ingest, each sink's post, and the whole micro-batch."""
    from dagster import AssetKey, DagsterInstance

    feed = INDEX[CONTINUOUS]
    keys = {
        "ingest_s": (AssetKey(feed), "continuous_window_ingest_s_median"),
        "micro_batch_s": (AssetKey(feed), "continuous_window_micro_batch_s_median"),
        "micro_batch_max_s": (AssetKey(feed), "continuous_window_micro_batch_s_max"),
        "post_es_s": (AssetKey(["sinks", f"{feed}_in_es"]), "continuous_window_post_s_median"),
        "post_hec_s": (AssetKey(["sinks", f"{feed}_in_hec"]), "continuous_window_post_s_median"),
    }
    windows: dict[int, dict[str, float]] = {}
    with DagsterInstance.from_config(str(dagster_home)) as instance:
        for name, (key, field) in keys.items():
            records = instance.fetch_materializations(key, limit=100).records
            for index, record in enumerate(sorted(records, key=lambda r: r.timestamp)):
                materialization = record.asset_materialization
                value = materialization.metadata.get(field) if materialization else None
                if value is not None:
                    windows.setdefault(index, {})[name] = value.value  # type: ignore[assignment]
    return [windows[i] for i in sorted(windows)]


def runs_in_flight(dagster_home: Path) -> int:
    """Runs of the instance not finished yet, the continuous run aside."""
    from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

    busy = [DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING]
    busy.append(DagsterRunStatus.STARTED)
    with DagsterInstance.from_config(str(dagster_home)) as instance:
        runs = instance.get_runs(RunsFilter(statuses=busy))
    return sum(1 for run in runs if not run.job_name.startswith("continuous_"))


def continuous_run_processes(dagster_home: Path) -> list[psutil.Process]:
    """The continuous run's worker of this instance and its children (the only run left by then).

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


def cpu_seconds(processes: list[psutil.Process]) -> dict[int, float]:
    """CPU seconds used so far, by pid (a process gone by now is left out)."""
    used = {}
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        used[process.pid] = times.user + times.system + times.children_user + times.children_system
    return used


def idle_cpu_pct(groups: dict[str, list[psutil.Process]], seconds: float) -> dict[str, float]:
    """Per group, percent of one core its processes used over the same ``seconds`` of nothing landing
    (counting the processes alive throughout)."""
    before, started = {name: cpu_seconds(p) for name, p in groups.items()}, time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - started
    shares = {}
    for name, processes in groups.items():
        after = cpu_seconds(processes)
        used = sum(after[pid] - before[name][pid] for pid in after.keys() & before[name].keys())
        shares[name] = round(100 * used / elapsed, 2)
    return shares


def wait_until_ready(heartbeat: Path, timeout_s: float = 600) -> None:
    """Until the continuous run says it waits for files (as the streaming peer's ``ready`` file does)."""
    deadline = time.monotonic() + timeout_s
    while not (heartbeat.exists() and orjson.loads(heartbeat.read_bytes()).get("ready")):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the continuous run did not get ready in {timeout_s:.0f}s ({heartbeat})")
        time.sleep(0.5)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Lander:
    """Writes numbered files to the systems' landing folders and remembers when."""

    def __init__(self, work: Path, home: Path, watcher: Watcher) -> None:
        self.work, self.home, self.watcher = work, home, watcher
        self.written: dict[int, float] = {}

    def folder(self, system: str) -> Path:
        if system in (CONTINUOUS, TRIGGERED):
            return self.home / "landing" / INDEX[system]
        return self.work / f"{system}-landing"

    def land(self, file: int, records: int, systems: list[str]) -> None:
        payload = events_file(file, records)
        self.watcher.expected[file] = records
        self.written[file] = time.time()
        for system in systems:
            land(self.folder(system), f"events-{file:06d}.json", payload)

    def paced(self, first: int, count: int, interval_s: float, records: int, systems: list[str]) -> list[int]:
        """``count`` files, one every ``interval_s``, numbered from ``first``."""
        files = list(range(first, first + count))
        next_at = time.time()
        for file in files:
            time.sleep(max(0.0, next_at - time.time()))
            self.land(file, records, systems)
            next_at += interval_s
        return files


def drain(watcher: Watcher, systems: list[str], files: list[int], timeout_s: float) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline and any(watcher.fresh_at(s, f) is None for s in systems for f in files):
        time.sleep(0.2)


def delays(watcher: Watcher, lander: Lander, system: str, files: list[int]) -> list[float]:
    return [t - lander.written[f] for f in files if (t := watcher.fresh_at(system, f)) is not None]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--systems", default=",".join(SYSTEMS), help=f"comma-separated, of {', '.join(SYSTEMS)}"
    )
    parser.add_argument("--duration", type=float, default=180, help="seconds of landing files")
    parser.add_argument("--interval", type=float, default=1, help="seconds between two files")
    parser.add_argument("--records", type=int, default=1000, help="events per file")
    parser.add_argument("--drain-timeout", type=float, default=180, help="seconds to wait for the last files")
    parser.add_argument("--sensor-interval", type=int, default=1, help="the daemon's sensors, seconds")
    parser.add_argument("--idle", type=float, default=0, help="continuous: seconds of idle CPU measured")
    parser.add_argument(
        "--sustained-rate",
        type=int,
        default=0,
        help="continuous: events a second landed after the rest (0: none)",
    )
    parser.add_argument("--sustained-duration", type=float, default=180, help="seconds of the sustained rate")
    parser.add_argument("--sustained-file-records", type=int, default=5000, help="events per sustained file")
    parser.add_argument(
        "--spark",
        choices=("connect", "local"),
        default="connect",
        help="lakerelay's Spark: a Spark Connect server (local[2]) or local Spark in each run's process",
    )
    parser.add_argument("--keep", action="store_true", help="keep the working folder")
    args = parser.parse_args()
    args.systems = [s for s in args.systems.split(",") if s]
    unknown = set(args.systems) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown systems {sorted(unknown)}; choose among {', '.join(SYSTEMS)}")
    return args


def main() -> None:
    args = parse_args()
    systems: list[str] = args.systems
    ours = [s for s in systems if s in (CONTINUOUS, TRIGGERED)]
    work = Path(tempfile.mkdtemp(prefix="lakerelay-freshness-"))
    home = work / "lakerelay"
    dagster_home = prepare_dagster_home(work / "dagster")
    sink = LocalSinkServer(host="127.0.0.1", port=0).start()
    watcher = Watcher(sink, systems)
    lander = Lander(work, home, watcher)
    processes: list[subprocess.Popen] = []
    connect_dir = work / "spark-connect"
    connect = None
    results: dict[str, object] = {}
    files: list[int] = []
    sustained: list[int] = []
    try:
        if ours:
            if args.spark == "connect":
                started = time.perf_counter()
                connect = spark_connect.start(connect_dir, port=spark_connect.free_port(), master="local[2]")
                print(
                    f"Spark Connect server {connect.url} up in {time.perf_counter() - started:.1f}s",
                    flush=True,
                )
            env = {
                **os.environ,
                "DAGSTER_HOME": str(dagster_home),
                "LAKERELAY_HOME": str(home),
                "LAKERELAY_DEFS_PROJECT": str(write_project(work / "project", sink.url, ours)),
                "LAKERELAY_SENSORS_RUNNING": "1",
                "LAKERELAY_SENSOR_INTERVAL_S": str(args.sensor_interval),
            }
            env.pop("LAKERELAY_FEEDS_FILE", None)
            if connect is not None:
                env["LAKERELAY_SPARK_REMOTE"] = connect.url
            else:
                env.pop("LAKERELAY_SPARK_REMOTE", None)
                env["LAKERELAY_SPARK_MASTER"] = "local[2]"
            processes.append(start_daemon(env, work / "daemon.log"))
        for peer in (STREAMING, STREAMING_DEFAULT):
            if peer in systems:
                processes.append(start_peer(peer, lander.folder(peer), sink.url, work))
        watcher.start()
        if CONTINUOUS in systems:
            wait_until_ready(home / "lake" / "_lakerelay" / "continuous" / f"{INDEX[CONTINUOUS]}.json")
        print(
            f"ready; landing a {args.records}-event file every {args.interval:g}s for {args.duration:g}s",
            flush=True,
        )

        files = lander.paced(0, int(args.duration // args.interval), args.interval, args.records, systems)
        drain(watcher, systems, files, args.drain_timeout)
        time.sleep(2)  # late duplicates would arrive now
        watcher.poll()
        if CONTINUOUS in systems and args.idle > 0:
            deadline = time.time() + 120
            while runs_in_flight(dagster_home) and time.time() < deadline:
                time.sleep(1)
            run_processes = continuous_run_processes(dagster_home)
            groups = {"idle_cpu_pct": run_processes}
            if connect is not None:
                groups["idle_cpu_spark_pct"] = [psutil.Process(connect.pid)]
            results.update(idle_cpu_pct(groups, args.idle))
        if CONTINUOUS in systems and args.sustained_rate > 0:
            per_file = args.sustained_file_records
            interval = per_file / args.sustained_rate
            print(
                f"sustained: {args.sustained_rate} events/s ({per_file} a file) for {args.sustained_duration:g}s",
                flush=True,
            )
            count = int(args.sustained_duration // interval)
            sustained = lander.paced(100_000, count, interval, per_file, [CONTINUOUS])
            drain(watcher, [CONTINUOUS], sustained, args.drain_timeout)
            time.sleep(2)
            watcher.poll()
        watcher.stopping.set()
        watcher.join()
    finally:
        for process in processes:
            stop_group(process)
        if connect is not None:
            spark_connect.stop(connect_dir)
        sink.stop()

    for system in systems:
        late = delays(watcher, lander, system, files)
        lost, duplicates = watcher.lost_and_duplicates(
            system, files + (sustained if system == CONTINUOUS else [])
        )
        print(
            f"{system}: {len(late)}/{len(files)} files fresh; write → in both sinks: p50 {percentile(late, 0.5):.1f}s "
            f"p95 {percentile(late, 0.95):.1f}s max {max(late):.1f}s; lost {lost}, duplicates {duplicates}"
            if late
            else f"{system}: no file reached both sinks; lost {lost}, duplicates {duplicates}"
        )
        if late:
            results[f"{system}_p50_s"] = round(percentile(late, 0.5), 2)
            results[f"{system}_p95_s"] = round(percentile(late, 0.95), 2)
        label = "" if system == CONTINUOUS else f"{system}_"
        results[f"{label}lost"] = lost
        results[f"{label}duplicates"] = duplicates
    if sustained:
        lag = delays(watcher, lander, CONTINUOUS, sustained)
        third = max(1, len(sustained) // 3)
        first = delays(watcher, lander, CONTINUOUS, sustained[:third])
        last = delays(watcher, lander, CONTINUOUS, sustained[-third:])
        if lag:
            results["sustained_lag_p50_s"] = round(percentile(lag, 0.5), 2)
            results["sustained_lag_p95_s"] = round(percentile(lag, 0.95), 2)
        if first and last:
            results["sustained_growth"] = round(
                percentile(last, 0.95) / max(percentile(first, 0.95), 1e-9), 2
            )
        results["sustained_files_fresh"] = f"{len(lag)}/{len(sustained)}"
    if TRIGGERED in systems:
        print(
            "triggered relay runs, median seconds per stage:",
            run_breakdown(dagster_home, [lander.written[f] for f in files]),
        )
    if CONTINUOUS in systems:
        for window in continuous_breakdown(dagster_home):
            print("continuous run, one report window, median seconds per micro-batch:", window)
    if args.keep:
        print(f"working folder: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    results["files"] = len(files)
    first = [k for k in LAST_LINE_KEYS if k in results]
    print(" ".join(f"{key}={results[key]}" for key in first + [k for k in results if k not in first]))


if __name__ == "__main__":
    main()
