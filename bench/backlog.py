"""Catch-up after an outage: a day of backlog landed at once → every record in both sinks.

Side by side in one command, on the same files and the same local sink (Elasticsearch ``_bulk`` and
Splunk HEC, in this process), one after the other so that neither shares the 2 cores with the other:

- **lakerelay**: the feed's relay job run to its end with Dagster's CLI (``dagster job execute -m
  pipelines.definitions -j relay_events``), local Spark ``local[2]`` in the run's process: the files are
  ingested into the Delta table exactly once, then the new rows are posted by the Spark op to both sinks.
  Its ingest takes at most ``--batch-mb`` of files per Delta commit (the feed's ``max_bytes_per_batch``).
- **streaming**: the seed's "Auto Loader to REST API" peer (``bench.freshness_peer``) with
  ``trigger(availableNow=True)``, ``maxFilesPerTrigger`` as ``--peer-files-per-trigger``, each micro-batch
  brought to its driver and posted with lakerelay's own sink writer. It writes no table.

For each: wall seconds from the command's start to its exit (JVM start and, for lakerelay, Dagster's
run included), records/s, and the peak resident memory of its whole process tree (driver, JVM, Python
workers), sampled every 0.2 s. Then the sink is read: every event id must be in Elasticsearch and in
HEC exactly once. Last line, ``key=value``: ``records= lakerelay_s= lakerelay_records_per_s=
lakerelay_peak_rss_mb= streaming_s= streaming_records_per_s= streaming_peak_rss_mb= vs_streaming=
lost= duplicates= streaming_lost= streaming_duplicates=``; the goal is ``vs_streaming`` ≥ 1.5 with
bounded memory and nothing lost or doubled.

    .venv/bin/python -m bench.backlog                                 # 5,000,000 records in 100 files
    .venv/bin/python -m bench.backlog --records 200000 --files 20     # a quick look
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import orjson
import psutil

from bench.freshness import events_file, stop_group
from lakerelay.devtools.dagster_home import prepare as prepare_dagster_home
from lakerelay.localsink import LocalSinkServer

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
LAKERELAY, STREAMING = "lakerelay", "streaming"
# system → (Elasticsearch index, HEC index) it posts to.
STREAMS = {LAKERELAY: ("events", "main"), STREAMING: ("peer", "peer")}


class PeakRss(threading.Thread):
    """The largest sum of resident memory over a process and all its descendants, sampled."""

    def __init__(self, pid: int, every_s: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.pid, self.every_s = pid, every_s
        self.peak = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(self.every_s):
            try:
                root = psutil.Process(self.pid)
                tree = [root, *root.children(recursive=True)]
            except psutil.Error:
                continue
            total = 0
            for process in tree:
                try:
                    total += process.memory_info().rss
                except psutil.Error:
                    continue
            self.peak = max(self.peak, total)


def write_backlog(folder: Path, files: int, records: int) -> int:
    """``files`` JSON-lines files holding ``records`` events between them; returns the bytes written."""
    folder.mkdir(parents=True, exist_ok=True)
    per_file, extra = divmod(records, files)
    size = 0
    for index in range(files):
        payload = events_file(index, per_file + (1 if index < extra else 0))
        (folder / f"events-{index:05d}.json").write_bytes(payload)
        size += len(payload)
    return size


def timed(command: list[str], env: dict[str, str], log: Path) -> tuple[float, int]:
    """Run ``command`` to its end: (wall seconds, peak RSS bytes of its process tree)."""
    started = time.perf_counter()
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        sampler = PeakRss(process.pid)
        sampler.start()
        try:
            code = process.wait()
        except BaseException:
            stop_group(process)
            raise
        finally:
            sampler.stopping.set()
            sampler.join()
    seconds = time.perf_counter() - started
    if code != 0:
        raise RuntimeError(f"{' '.join(command[:6])} … exited {code}; see {log}")
    return seconds, sampler.peak


def run_lakerelay(work: Path, source: Path, sink_url: str, batch_mb: int) -> tuple[float, int]:
    home = work / "lakerelay"
    shutil.copytree(source, home / "landing" / "events")
    feeds = home / "feeds.json"
    from pipelines.feeds import EVENTS_FEED

    feed = {
        "name": "events",
        "source": "events",
        "schema_hints": EVENTS_FEED.schema_hints,
        "max_bytes_per_batch": batch_mb * 1024 * 1024,
    }
    feeds.write_bytes(orjson.dumps({"feeds": [feed]}))
    env = {
        **os.environ,
        "DAGSTER_HOME": str(prepare_dagster_home(work / "dagster")),
        "LAKERELAY_HOME": str(home),
        "LAKERELAY_FEEDS_FILE": str(feeds),
        "LAKERELAY_ES_URL": sink_url,
        "LAKERELAY_HEC_URL": sink_url,
        "LAKERELAY_SPARK_MASTER": "local[2]",
    }
    env.pop("LAKERELAY_SPARK_REMOTE", None)
    command = [str(BIN / "dagster"), "job", "execute", "-m", "pipelines.definitions", "-j", "relay_events"]
    return timed(command, env, work / "lakerelay.log")


def run_streaming(work: Path, source: Path, sink_url: str, files_per_trigger: int) -> tuple[float, int]:
    landing = work / "peer-landing"
    shutil.copytree(source, landing)
    command = [
        sys.executable,
        "-m",
        "bench.freshness_peer",
        str(landing),
        sink_url,
        str(work / "peer"),
        "--trigger",
        "available-now",
        "--max-files-per-trigger",
        str(files_per_trigger),
    ]
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"}
    return timed(command, env, work / "peer.log")


def delivered(sink: LocalSinkServer, system: str, records: int) -> tuple[int, int]:
    """(lost, duplicates) of ``system`` over both sinks, by event id."""
    es_index, hec_index = STREAMS[system]
    es_ids = set(sink.store.es_ids(es_index) or ())
    index = sink.store.es_index(es_index)
    # Elasticsearch overwrites by id: each write past the first of an id took a sequence number too.
    es_overwrites = 0 if index is None else index.next_seq_no - len(index)
    hec_ids: Counter = Counter()
    offset, chunk = 0, 200_000
    while events := sink.store.hec_list(hec_index, limit=chunk, offset=offset):
        hec_ids.update(event["event"]["event_id"] for event in events)
        offset += len(events)
    lost = (records - len(es_ids)) + (records - len(hec_ids))
    duplicates = sum(hec_ids.values()) - len(hec_ids) + es_overwrites
    return lost, duplicates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=5_000_000)
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--batch-mb", type=int, default=256, help="lakerelay: files per Delta commit, in MB")
    parser.add_argument(
        "--peer-files-per-trigger", type=int, default=10, help="streaming: maxFilesPerTrigger"
    )
    parser.add_argument("--systems", default=f"{LAKERELAY},{STREAMING}", help="comma-separated")
    parser.add_argument("--keep", action="store_true", help="keep the working folder")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="lakerelay-backlog-"))
    source = work / "source"
    started = time.perf_counter()
    size = write_backlog(source, args.files, args.records)
    print(
        f"backlog: {args.records:,} events, {args.files} files, {size / 1e6:.0f} MB, "
        f"written in {time.perf_counter() - started:.0f}s",
        flush=True,
    )
    runners: dict[str, Callable[[str], tuple[float, int]]] = {
        LAKERELAY: lambda url: run_lakerelay(work, source, url, args.batch_mb),
        STREAMING: lambda url: run_streaming(work, source, url, args.peer_files_per_trigger),
    }
    results: dict[str, object] = {"records": args.records}
    try:
        for system in args.systems.split(","):
            with LocalSinkServer(host="127.0.0.1", port=0) as sink:
                seconds, peak = runners[system](sink.url)
                lost, duplicates = delivered(sink, system, args.records)
            label = "" if system == LAKERELAY else f"{system}_"
            rate = args.records / seconds
            print(
                f"{system}: {seconds:.1f}s, {rate:,.0f} records/s, peak RSS {peak / 2**20:,.0f} MB, "
                f"lost {lost}, duplicates {duplicates}",
                flush=True,
            )
            results[f"{system}_s"] = round(seconds, 1)
            results[f"{system}_records_per_s"] = round(rate)
            results[f"{system}_peak_rss_mb"] = round(peak / 2**20)
            results[f"{label}lost"] = lost
            results[f"{label}duplicates"] = duplicates
    finally:
        if args.keep:
            print(f"working folder: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    if f"{LAKERELAY}_records_per_s" in results and f"{STREAMING}_records_per_s" in results:
        ratio = float(results[f"{LAKERELAY}_records_per_s"]) / float(results[f"{STREAMING}_records_per_s"])  # type: ignore[arg-type]
        results["vs_streaming"] = round(ratio, 2)
    print(" ".join(f"{key}={value}" for key, value in results.items()))


if __name__ == "__main__":
    main()
