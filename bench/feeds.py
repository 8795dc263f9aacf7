"""Cost in feeds: does lakerelay's cost grow with work, not with the number of feeds declared?

For a topology of N feeds, each routed to three sinks (Elasticsearch, Splunk HEC, a REST API), all
declared as component YAML in a throwaway dg project (``LAKERELAY_DEFS_PROJECT``), it measures:

- ``load``: CPU seconds of a fresh process that imports the definitions and validates them
  (``dg.Definitions.validate_loadable``), median of ``--repeat``; the ratio of N feeds to one feed.
- ``idle``: the Dagster daemon with every sensor running at ``--interval`` seconds and nothing
  landing: the CPU share of one core used by the daemon and its code server over ``--idle`` seconds,
  after a warm-up; and each sensor's cadence (mean seconds between its ticks in that window).

Goals (issue 20): load ratio ≤ 1.5, idle ≤ 5 % of a core, every sensor ticking at its interval.
Last line, ``key=value``: ``feeds= load_one_cpu_s= load_many_cpu_s= load_ratio= sensors=
idle_one_cpu_pct= idle_cpu_pct= cadence_max_s= interval_s=`` (``idle_one``: the same daemon with one
feed, the floor of a daemon and its code server doing nothing).

    .venv/bin/python -m bench.feeds                  # 50 feeds x 3 routes
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

from devtools.dagster_home import prepare as prepare_dagster_home

ROOT = Path(__file__).resolve().parent.parent
SINKS = {
    "es": "type: pipelines.components.ElasticsearchSink\nattributes:\n  name: es\n  url: http://127.0.0.1:9200\n",
    "hec": "type: pipelines.components.SplunkHecSink\nattributes:\n  name: hec\n  url: http://127.0.0.1:8088\n"
    "  token_env: BENCH_HEC_TOKEN\n  development_token: lakerelay-local-hec-token\n",
    "api": "type: pipelines.components.RestSink\nattributes:\n  name: api\n  url: http://127.0.0.1:8080\n"
    "  path: /v1/events\n",
}


def write_project(root: Path, feeds: int) -> Path:
    """A dg project of ``feeds`` feeds, each routed to the three sinks (its index by the feed's name)."""
    package = root / "benchtopology"
    defs = package / "defs"
    defs.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (defs / "__init__.py").write_text("")
    (root / "pyproject.toml").write_text(
        '[tool.dg]\ndirectory_type = "project"\n[tool.dg.project]\n'
        'root_module = "benchtopology"\ndefs_module = "benchtopology.defs"\n'
    )
    for name, text in SINKS.items():
        (defs / "sinks" / name).mkdir(parents=True)
        (defs / "sinks" / name / "defs.yaml").write_text(text)
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
            + (f"  destination:\n    index: logs-{feed}\n" if sink == "es" else "")
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
    total = 0.0
    for p in [process, *process.children(recursive=True)]:
        try:
            t = p.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system
    return total


def idle_daemon(
    project: Path, work: Path, interval_s: int, warmup_s: float, window_s: float
) -> tuple[float, dict]:
    """The idle daemon's CPU share of one core over ``window_s``, and each sensor's mean tick gap."""
    home = prepare_dagster_home(work / "dagster_home")
    (work / "workspace.yaml").write_text(
        "load_from:\n  - python_module:\n      module_name: pipelines.definitions\n"
        f"      working_directory: {ROOT}\n      location_name: lakerelay\n"
    )
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "LAKERELAY_DEFS_PROJECT": str(project),
        "LAKERELAY_HOME": str(work / "lakerelay"),
        "LAKERELAY_SENSORS_RUNNING": "1",
        "LAKERELAY_SENSOR_INTERVAL_S": str(interval_s),
    }
    daemon = subprocess.Popen(
        [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", str(work / "workspace.yaml")],
        cwd=ROOT,
        env=env,
        stdout=(work / "daemon.log").open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        watched = psutil.Process(daemon.pid)
        time.sleep(warmup_s)  # the code server loads, the first ticks run
        start_cpu, start = tree_cpu_s(watched), time.time()
        time.sleep(window_s)
        cpu, end = tree_cpu_s(watched) - start_cpu, time.time()
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--feeds", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--interval", type=int, default=30, help="sensor interval, seconds (the default's)")
    parser.add_argument("--warmup", type=float, default=60.0)
    parser.add_argument("--idle", type=float, default=120.0, help="seconds of the idle window")
    parser.add_argument("--skip-daemon", action="store_true")
    args = parser.parse_args()
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
            "feeds": args.feeds,
            "load_one_cpu_s": round(load_one, 2),
            "load_many_cpu_s": round(load_many, 2),
            "load_ratio": round(load_many / load_one, 2),
        }
        if not args.skip_daemon:
            idle_one, _ = idle_daemon(one, work / "daemon_one", args.interval, args.warmup, args.idle)
            idle_pct, cadence = idle_daemon(many, work / "daemon", args.interval, args.warmup, args.idle)
            for name, gap in sorted(cadence.items()):
                print(f"  sensor {name}: a tick every {gap:.1f} s")
            figures |= {
                "sensors": len(cadence),
                "idle_one_cpu_pct": round(idle_one, 1),
                "idle_cpu_pct": round(idle_pct, 1),
                "cadence_max_s": round(max(cadence.values(), default=float("nan")), 1),
                "interval_s": args.interval,
            }
        print(" ".join(f"{k}={v}" for k, v in figures.items()))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
