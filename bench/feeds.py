"""Cost in feeds: does lakerelay's cost grow with work, not with the number of feeds declared?

For a topology of N feeds, each routed to three sinks (Elasticsearch, Splunk HEC, a REST API), all
declared as component YAML in a throwaway dg project (``LAKERELAY_DEFS_PROJECT``), it measures:

- ``load``: CPU seconds of a fresh process that imports the definitions and validates them
  (``dg.Definitions.validate_loadable``), median of ``--repeat``; the ratio of N feeds to one feed.
- ``idle``: the Dagster daemon with every sensor running at ``--interval`` seconds and nothing
  landing: the CPU share of one core used by the daemon and its code server over ``--idle`` seconds,
  after a warm-up; and each sensor's cadence (mean seconds between its ticks in that window). Twice:
  with the workspace's ``python_module`` (the daemon starts a new code server every 60 s, so the load
  cost recurs every minute) and with a long-lived ``dagster code-server start`` the workspace points
  at (``grpc_server``, deploy/workspace.yaml).

- ``fan_in``: a daemon (sensors every ``--fan-in-interval`` s, a Spark Connect server, the local sink
  for all three sinks) and one file landing in each of ``--fan-in`` feeds at once: seconds until each
  feed's records are in all three destinations, and the largest excess over two sensor intervals
  plus that feed's relay run's own duration (≤ 0: within the bound).

Goals (issue 20): load ratio ≤ 1.5, idle ≤ 5 % of a core, every sensor ticking at its interval, and
``fan_in_over_bound_max_s`` ≤ 0.
Last line, ``key=value``: ``layout= feeds= load_one_cpu_s= load_many_cpu_s= load_ratio= sensors=
idle_one_cpu_pct= idle_cpu_pct= idle_code_server_cpu_pct= cadence_max_s= cadence_code_server_max_s= interval_s= fan_in_feeds= fan_in_arrived= fan_in_max_s=
fan_in_over_bound_max_s=`` (``idle_one``: the same daemon with one
feed, the floor of a daemon and its code server doing nothing).

    .venv/bin/python -m bench.feeds                  # 50 feeds x 3 routes, shared jobs
    .venv/bin/python -m bench.feeds --layout per_route   # a job per feed and per route
    .venv/bin/python -m bench.feeds --feeds 10 --idle 30
"""

import argparse
import itertools
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import dagster as dg
import psutil

from lakerelay.devtools import spark_connect
from lakerelay.devtools.dagster_home import prepare as prepare_dagster_home
from lakerelay.localsink import LocalSinkServer
from resources.run_tags import RELAY_TAG

ROOT = Path(__file__).resolve().parent.parent
SINKS = {
    "es": "type: pipelines.components.ElasticsearchSink\nattributes:\n  name: es\n  url: {url}\n",
    "hec": "type: pipelines.components.SplunkHecSink\nattributes:\n  name: hec\n  url: {url}\n"
    "  token_env: BENCH_HEC_TOKEN\n  development_token: lakerelay-local-hec-token\n",
    "api": "type: pipelines.components.RestSink\nattributes:\n  name: api\n  url: {url}\n"
    "  path: /_generic/all\n  body_format: ndjson\n",
}
# Where each route of feed F puts its records: an index, a HEC index, a REST collection of its own.
DESTINATIONS = {
    "es": "  destination:\n    index: logs-{feed}\n",
    "hec": "  destination:\n    index: {feed}\n",
    "api": "  destination:\n    path: /_generic/{feed}\n",
}


def project_with_sinks(root: Path, package_name: str, sinks: list[str], url: str) -> Path:
    """A throwaway dg project (``LAKERELAY_DEFS_PROJECT``) declaring ``sinks`` (keys of SINKS) at ``url``;
    returns its defs folder, where the caller declares feeds and routes."""
    package = root / package_name
    defs = package / "defs"
    defs.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (defs / "__init__.py").write_text("")
    (root / "pyproject.toml").write_text(
        '[tool.dg]\ndirectory_type = "project"\n[tool.dg.project]\n'
        f'root_module = "{package_name}"\ndefs_module = "{package_name}.defs"\n'
    )
    for name in sinks:
        (defs / "sinks" / name).mkdir(parents=True)
        (defs / "sinks" / name / "defs.yaml").write_text(SINKS[name].replace("{url}", url))
    return defs


def write_project(root: Path, feeds: int, url: str = "http://127.0.0.1:9") -> Path:
    """A dg project of ``feeds`` feeds, each routed to the three sinks (its index by the feed's name)."""
    defs = project_with_sinks(root, "benchtopology", list(SINKS), url)
    for n in range(feeds):
        feed = f"feed{n:03d}"
        (defs / "feeds" / feed).mkdir(parents=True)
        (defs / "feeds" / feed / "defs.yaml").write_text(
            f"type: pipelines.components.Feed\nattributes:\n  name: {feed}\n  source: {feed}\n"
        )
        routes = "\n---\n".join(
            textwrap.dedent(
                f"""\
                type: pipelines.components.Route
                attributes:
                  feed: {feed}
                  sink: {sink}
                """
            )
            + DESTINATIONS[sink].replace("{feed}", feed)
            for sink in SINKS
        )
        (defs / "routes" / feed).mkdir(parents=True)
        (defs / "routes" / feed / "defs.yaml").write_text(routes)
    return root


def load_cpu_s(project: Path, home: Path) -> float:
    """CPU seconds (user + system) of a process that loads and validates the definitions."""
    code = (
        "import dagster as dg; from pipelines.definitions import defs; dg.Definitions.validate_loadable(defs)"
    )
    env = {**os.environ, "LAKERELAY_DEFS_PROJECT": str(project), "LAKERELAY_HOME": str(home)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def tree_cpu_s(process: psutil.Process) -> float:
    """CPU seconds of ``process``, its living descendants, and the children it already reaped (the
    daemon replaces its code server every minute: the old ones' CPU counts too)."""
    total = 0.0
    try:
        own = process.cpu_times()
        total += own.user + own.system + own.children_user + own.children_system
    except psutil.Error:
        return total
    for child in process.children(recursive=True):
        try:
            t = child.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system
    return total


def idle_daemon(
    project: Path, work: Path, interval_s: int, warmup_s: float, window_s: float, code_server: bool = False
) -> tuple[float, dict]:
    """The idle daemon's CPU share of one core over ``window_s`` (with its code server: the one it
    starts and replaces every minute, or with ``code_server`` a long-lived one the workspace points
    at, as deploy/ recommends), and each sensor's mean tick gap."""
    server = start_code_server(project, work) if code_server else None
    daemon = start_daemon(project, work, interval_s, {}, grpc_port=server[1] if server else None)
    try:
        watched = [psutil.Process(daemon.pid)] + ([psutil.Process(server[0].pid)] if server else [])
        time.sleep(warmup_s)  # the code server loads, the first ticks run
        start_cpu, start = sum(tree_cpu_s(p) for p in watched), time.time()
        time.sleep(window_s)
        cpu, end = sum(tree_cpu_s(p) for p in watched) - start_cpu, time.time()
    finally:
        stop_daemon(daemon)
        if server:
            stop_daemon(server[0])
    home = work / "dagster_home"
    os.environ["DAGSTER_HOME"] = str(home)
    cadence = {}
    with dg.DagsterInstance.get() as instance:
        for state in instance.all_instigator_state():
            if state.instigator_type.value != "SENSOR":
                continue
            ticks = instance.get_ticks(state.instigator_origin_id, state.selector_id, before=end, after=start)
            stamps = sorted(t.timestamp for t in ticks)
            gaps = [b - a for a, b in itertools.pairwise(stamps)]
            cadence[state.instigator_name] = statistics.mean(gaps) if gaps else float("inf")
    return 100.0 * cpu / (end - start), cadence


def deployment_env(project: Path, work: Path, interval_s: int, extra_env: dict[str, str]) -> dict[str, str]:
    return {
        **os.environ,
        "DAGSTER_HOME": str(prepare_dagster_home(work / "dagster_home")),
        "LAKERELAY_DEFS_PROJECT": str(project),
        "LAKERELAY_HOME": str(work / "lakerelay"),
        "LAKERELAY_SENSORS_RUNNING": "1",
        "LAKERELAY_SENSOR_INTERVAL_S": str(interval_s),
        **extra_env,
    }


def start_code_server(project: Path, work: Path) -> tuple[subprocess.Popen, int]:
    """A long-lived code server (``dagster code-server start``) on a free port of 127.0.0.1."""
    work.mkdir(parents=True, exist_ok=True)
    port = spark_connect.free_port()
    server = subprocess.Popen(
        [
            *(
                str(Path(sys.executable).parent / "dagster"),
                "code-server",
                "start",
                "-m",
                "pipelines.definitions",
            ),
            *("-h", "127.0.0.1", "-p", str(port), "--location-name", "lakerelay"),
        ],
        cwd=ROOT,
        env=deployment_env(project, work, 30, {}),
        stdout=(work / "code-server.log").open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return server, port


def start_daemon(
    project: Path, work: Path, interval_s: int, extra_env: dict[str, str], grpc_port: int | None = None
) -> subprocess.Popen:
    env = deployment_env(project, work, interval_s, extra_env)
    location = (
        f"  - grpc_server:\n      host: 127.0.0.1\n      port: {grpc_port}\n      location_name: lakerelay\n"
        if grpc_port
        else "  - python_module:\n      module_name: pipelines.definitions\n"
        f"      working_directory: {ROOT}\n      location_name: lakerelay\n"
    )
    (work / "workspace.yaml").write_text("load_from:\n" + location)
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", str(work / "workspace.yaml")],
        cwd=ROOT,
        env=env,
        stdout=(work / "daemon.log").open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop_daemon(daemon: subprocess.Popen) -> None:
    os.killpg(daemon.pid, signal.SIGTERM)
    try:
        daemon.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(daemon.pid, signal.SIGKILL)


def fan_in(work: Path, feeds: int, interval_s: int, records: int, timeout_s: float) -> dict[str, float]:
    """One file lands in each of ``feeds`` feeds at once: seconds until each feed's records are in all
    three of its destinations, against two sensor intervals plus the feed's relay run's own duration."""
    sink = LocalSinkServer(host="127.0.0.1", port=0).start()
    connect_dir = work / "spark-connect"
    connect = spark_connect.start(connect_dir, port=spark_connect.free_port(), master="local[2]")
    project = write_project(work / "fan_project", feeds, sink.url)
    daemon = start_daemon(project, work / "fan", interval_s, {"LAKERELAY_SPARK_REMOTE": connect.url})
    names = [f"feed{n:03d}" for n in range(feeds)]
    arrived: dict[str, float] = {}
    try:
        time.sleep(interval_s * 3)  # the code server is up and the sensors have ticked once
        landed = time.time()
        for name in names:
            folder = work / "fan" / "lakerelay" / "landing" / name
            folder.mkdir(parents=True, exist_ok=True)
            lines = b"".join(b'{"n": %d, "feed": "%s"}\n' % (i, name.encode()) for i in range(records))
            (folder / ".incoming").write_bytes(lines)
            os.replace(folder / ".incoming", folder / "file-0001.json")
        deadline = landed + timeout_s
        while len(arrived) < feeds and time.time() < deadline:
            for name in names:
                if name not in arrived and (
                    sink.es_count(f"logs-{name}") >= records
                    and sink.hec_count(name) >= records
                    and len(sink.generic_records(name)) >= records
                ):
                    arrived[name] = time.time() - landed
            time.sleep(0.2)
        # The last records arrive before their run has ended: let the runs end, or their own time is unknown.
        os.environ["DAGSTER_HOME"] = str(work / "fan" / "dagster_home")
        with dg.DagsterInstance.get() as instance:
            while time.time() < deadline and instance.get_run_records(
                dg.RunsFilter(
                    statuses=[
                        dg.DagsterRunStatus.QUEUED,
                        dg.DagsterRunStatus.STARTING,
                        dg.DagsterRunStatus.STARTED,
                    ]
                ),
                limit=1,
            ):
                time.sleep(0.5)
    finally:
        stop_daemon(daemon)
        spark_connect.stop(connect_dir)
        sink.stop()
    with dg.DagsterInstance.get() as instance:
        runs = {}
        for record in instance.get_run_records(dg.RunsFilter(job_name=None)):
            feed = record.dagster_run.tags.get(RELAY_TAG)  # relay_<feed> or relay_feeds: the sensor's tag
            if feed and record.end_time:
                # The run's own time: from its creation (queue, launch, code load) to its end.
                runs[feed] = record.end_time - record.create_timestamp.timestamp()
    slack = [arrived[n] - (2 * interval_s + runs.get(n, 0.0)) for n in arrived]
    for name in names:
        print(
            f"  {name}: in every destination after {arrived.get(name, float('nan')):.1f} s, its relay run took {runs.get(name, float('nan')):.1f} s from creation to end"
        )
    return {
        "fan_in_feeds": feeds,
        "fan_in_arrived": len(arrived),
        "fan_in_max_s": round(max(arrived.values(), default=float("nan")), 1),
        "fan_in_over_bound_max_s": round(max(slack, default=float("nan")), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--feeds", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--interval", type=int, default=30, help="sensor interval, seconds (the default's)")
    parser.add_argument("--warmup", type=float, default=60.0)
    parser.add_argument("--idle", type=float, default=120.0, help="seconds of the idle window")
    parser.add_argument("--skip-daemon", action="store_true")
    parser.add_argument(
        "--fan-in", type=int, default=10, help="feeds that each get one file at once (0: skip)"
    )
    parser.add_argument("--fan-in-interval", type=int, default=5, help="sensor interval of that run, seconds")
    parser.add_argument(
        "--layout",
        choices=("per_route", "shared"),
        default="shared",
        help="LAKERELAY_JOB_LAYOUT of every process measured (shared: one job per path, not per feed)",
    )
    args = parser.parse_args()
    os.environ["LAKERELAY_JOB_LAYOUT"] = args.layout  # the loads, daemons and code servers inherit it
    work = Path(tempfile.mkdtemp(prefix="lakerelay-bench-feeds-"))
    try:
        one, many = write_project(work / "one", 1), write_project(work / "many", args.feeds)
        home = work / "lakerelay"
        loads_one, loads_many = [], []
        for _ in range(args.repeat):  # interleaved, so both see the same machine
            loads_one.append(load_cpu_s(one, home))
            loads_many.append(load_cpu_s(many, home))
        load_one, load_many = statistics.median(loads_one), statistics.median(loads_many)
        print(f"load CPU-s: 1 feed {sorted(loads_one)}, {args.feeds} feeds {sorted(loads_many)}")
        figures = {
            "layout": args.layout,
            "feeds": args.feeds,
            "load_one_cpu_s": round(load_one, 2),
            "load_many_cpu_s": round(load_many, 2),
            "load_ratio": round(load_many / load_one, 2),
        }
        if not args.skip_daemon:
            idle_one, _ = idle_daemon(one, work / "daemon_one", args.interval, args.warmup, args.idle)
            idle_pct, cadence = idle_daemon(many, work / "daemon", args.interval, args.warmup, args.idle)
            served, served_cadence = idle_daemon(
                many, work / "served", args.interval, args.warmup, args.idle, code_server=True
            )
            for name, gap in sorted(cadence.items()):
                print(f"  sensor {name}: a tick every {gap:.1f} s")
            figures |= {
                "sensors": len(cadence),
                "idle_one_cpu_pct": round(idle_one, 1),
                "idle_cpu_pct": round(idle_pct, 1),
                "idle_code_server_cpu_pct": round(served, 1),
                "cadence_max_s": round(max(cadence.values(), default=float("nan")), 1),
                "cadence_code_server_max_s": round(max(served_cadence.values(), default=float("nan")), 1),
                "interval_s": args.interval,
            }
        if args.fan_in:
            figures |= fan_in(work / "fan_in", args.fan_in, args.fan_in_interval, 100, timeout_s=600)
        print(" ".join(f"{k}={v}" for k, v in figures.items()))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
