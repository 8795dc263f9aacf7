"""`python -m bench.sink`: the same records to the same local sink, by lakerelay's writer and by the anchors.

Measured, in one run, against ``python -m lakerelay.localsink`` in a child process (so it does not share
our GIL):
- lakerelay ES: Arrow batches of (id, JSON document) — what the Spark stage hands each task —
  through ``make_poster`` (SinkWriter, 1000 records per call, 4 in flight);
- ``elasticsearch.helpers.parallel_bulk`` with 4 threads, records as dicts (its documented use);
- the ceiling: pre-built ``_bulk`` bodies of 1000 records over 4 keep-alive connections (the
  local sink's own limit on this machine, so also the server's measured ceiling);
- the same for Splunk HEC (lakerelay vs pre-built HEC bodies);
- records missing with 5% per-item 429s (lakerelay; goal 0).
The last line is ``key=value`` pairs.
"""

import argparse
import tempfile
import threading
import time
from pathlib import Path

import orjson
import pyarrow as pa
import requests
from elasticsearch import Elasticsearch, helpers

from lakerelay.devtools.sample_events import generate_event
from lakerelay.devtools.sink_process import SinkProcess
from pipelines.deployment import LOCAL_HEC_TOKEN
from pipelines.post.post_stage import make_poster
from resources.sinks.resource import ElasticsearchSinkResource, SplunkHecSinkResource

THREADS = 4
PER_CALL = 1000


def make_events(n: int) -> list[dict]:
    import random
    from datetime import UTC, datetime

    rng = random.Random(42)
    when = datetime(2026, 1, 1, tzinfo=UTC)
    return [generate_event(rng, when, i) for i in range(n)]


def as_arrow(events: list[dict]) -> pa.Table:
    """What a Spark task receives: hex ids, JSON bytes, epoch seconds."""
    return pa.table(
        {
            "_id": [f"{i:040x}" for i in range(len(events))],
            "_doc": pa.array([orjson.dumps(e) for e in events], pa.binary()),
            "_time": pa.array([1_767_225_600.0 + i for i in range(len(events))], pa.float64()),
        }
    )


def lakerelay(settings, table: pa.Table) -> tuple[float, dict]:
    poster = make_poster(settings)
    started = time.perf_counter()
    [stats, *dead] = list(poster(iter(table.to_batches(max_chunksize=8192))))
    elapsed = time.perf_counter() - started
    row = {k: v[0] for k, v in stats.to_pydict().items()}
    row["dead_lettered"] = sum(b.num_rows for b in dead)
    return elapsed, row


def parallel_bulk(url: str, index: str, events: list[dict]) -> float:
    client = Elasticsearch(url, request_timeout=60)
    actions = ({"_index": index, "_id": f"{i:040x}", "_source": e} for i, e in enumerate(events))
    started = time.perf_counter()
    for ok, info in helpers.parallel_bulk(client, actions, thread_count=THREADS, chunk_size=PER_CALL):
        if not ok:
            raise RuntimeError(info)
    return time.perf_counter() - started


def prebuilt(url: str, bodies: list[bytes], content_type: str, auth: str | None = None) -> float:
    """Post ready-made bodies over THREADS keep-alive sessions: nothing left to do but send."""
    queue = list(bodies)
    lock = threading.Lock()

    def work() -> None:
        session = requests.Session()
        session.headers["Content-Type"] = content_type
        if auth:
            session.headers["Authorization"] = auth
        while True:
            with lock:
                if not queue:
                    return
                body = queue.pop()
            session.post(url, data=body, timeout=60).raise_for_status()

    threads = [threading.Thread(target=work) for _ in range(THREADS)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - started


def bulk_bodies(events: list[dict], index: str) -> list[bytes]:
    bodies = []
    for start in range(0, len(events), PER_CALL):
        lines = []
        for i in range(start, min(start + PER_CALL, len(events))):
            lines.append(orjson.dumps({"index": {"_index": index, "_id": f"{i:040x}"}}))
            lines.append(orjson.dumps(events[i]))
        bodies.append(b"\n".join(lines) + b"\n")
    return bodies


def hec_bodies(events: list[dict]) -> list[bytes]:
    return [
        b"".join(
            orjson.dumps({"time": 1_767_225_600.0 + i, "event": events[i]}) + b"\n"
            for i in range(s, min(s + PER_CALL, len(events)))
        )
        for s in range(0, len(events), PER_CALL)
    ]


def best(rates: dict[str, float], name: str, value: float) -> None:
    rates[name] = max(rates.get(name, 0.0), value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3, help="runs per contender; the best counts")
    args = parser.parse_args()
    n = args.records
    events = make_events(n)
    table = as_arrow(events)
    rate = {}
    with tempfile.TemporaryDirectory() as tmp, SinkProcess(Path(tmp) / "port") as sink:
        url = sink.url
        es = lambda index, **o: ElasticsearchSinkResource(  # noqa: E731
            sink_name="bench", url=url, index=index, max_records_per_call=PER_CALL, max_in_flight=THREADS, **o
        ).settings()
        hec = SplunkHecSinkResource(
            sink_name="bench",
            url=url,
            token=LOCAL_HEC_TOKEN,
            max_records_per_call=PER_CALL,
            max_in_flight=THREADS,
        ).settings()

        for attempt in range(args.repeat):
            # Best of N: the 2 cores are shared, and the best run is the least disturbed one.
            elapsed, row = lakerelay(es(f"lakerelay-{attempt}"), table)
            assert row["accepted"] == n, row
            best(rate, "lakerelay_es", n / elapsed)
            best(rate, "parallel_bulk", n / parallel_bulk(url, f"parallel-bulk-{attempt}", events))
            bodies = bulk_bodies(events, f"ceiling-{attempt}")
            best(rate, "es_ceiling", n / prebuilt(f"{url}/_bulk", bodies, "application/x-ndjson"))
            elapsed, row = lakerelay(hec, table)
            assert row["accepted"] == n, row
            best(rate, "lakerelay_hec", n / elapsed)
            hec_rate = n / prebuilt(
                f"{url}/services/collector/event",
                hec_bodies(events),
                "application/json",
                f"Splunk {LOCAL_HEC_TOKEN}",
            )
            best(rate, "hec_ceiling", hec_rate)
            indices = sink.stats()["es"]["indices"]
            assert all(v == n for v in indices.values()), indices

        requests.post(
            f"{url}/_localsink/faults", json={"seed": 7, "item_429_rate": 0.05}, timeout=10
        ).raise_for_status()
        _, row = lakerelay(es("faults", backoff_initial_s=0.05), table)
        stored = sink.stats()["es"]["indices"].get("faults", 0)
        injected = sink.stats()["faults"]["injected"].get("item_429", 0)
        lost = n - stored - row["dead_lettered"]

    print(
        f"records: {n}, {PER_CALL} per call, {THREADS} threads/in flight; sink in a child process; "
        f"best of {args.repeat}"
    )
    for name, value in rate.items():
        print(f"  {name:<15} {value:>10,.0f} records/s")
    print(
        f"  5% item 429s: {injected} items rejected by the sink, {row['retried']} resent, {stored} stored, lost {lost}"
    )
    print(
        f"vs_parallel_bulk={rate['lakerelay_es'] / rate['parallel_bulk']:.2f} "
        f"vs_ceiling={rate['lakerelay_es'] / rate['es_ceiling']:.2f} "
        f"hec_vs_ceiling={rate['lakerelay_hec'] / rate['hec_ceiling']:.2f} "
        f"loss_under_faults={lost} "
        f"es_ceiling_records_per_s={rate['es_ceiling']:.0f} hec_ceiling_records_per_s={rate['hec_ceiling']:.0f}"
    )


if __name__ == "__main__":
    main()
