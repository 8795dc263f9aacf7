"""Micro-benchmark of the Elasticsearch ``_bulk`` encoder: a static index, and per-record destinations.

Encodes 100k records (40-character hex ids, ~300-byte documents) in calls of 1000, as a writer cuts
them, with ``overhead`` (call sizing) included, and prints the best of ``--repeat`` runs (the least
disturbed by other processes). The static case uses only what the encoder had before templates, so
the same file measures an older checkout: ``cd <old checkout> && python -m bench.encode_destination``.

    python -m bench.encode_destination [--records 100000] [--repeat 9] [--cpu]
"""

import argparse
import hashlib
import time

import pyarrow as pa

from resources.sinks.records import ArrowRecords
from resources.sinks.resource import ElasticsearchSinkResource

CALL = 1000


def columns(n: int) -> tuple[pa.Array, pa.Array, pa.Array, list[str], list[str]]:
    ids = [hashlib.sha1(str(i).encode()).hexdigest() for i in range(n)]
    days = [f"2026.03.0{1 + i * 3 // n}" for i in range(n)]
    services = [("api", "web", "auth")[i % 3] for i in range(n)]
    docs = [
        (
            f'{{"event_id":"e{i}","ts":"2026-03-0{1 + i * 3 // n}T12:00:00.000000Z","service":"{services[i]}",'
            f'"severity":"info","status_code":200,"bytes_in":{i % 1000},"bytes_out":{i % 700},'
            f'"dest_ip":"10.0.{i % 250}.{i % 200}","message":"GET /api/v1/items/{i} HTTP/1.1 200 in 12 ms",'
            f'"user_agent":"Mozilla/5.0 (X11; Linux x86_64)","_pad":"{"x" * 40}"}}'
        ).encode()
        for i in range(n)
    ]
    return (
        pa.array(ids, pa.string()),
        pa.array(docs, pa.binary()),
        pa.array([None] * n, pa.float64()),
        days,
        services,
    )


def best_of(repeat: int, protocol, records: ArrowRecords, clock=time.perf_counter) -> tuple[float, int]:
    best, size = float("inf"), 0
    for _ in range(repeat):
        started = clock()
        size = 0
        for start in range(0, len(records), CALL):
            chunk = records[start : start + CALL]
            protocol.overhead(chunk)
            size += len(protocol.encode(chunk))
        best = min(best, clock() - started)
    return best, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument(
        "--cpu", action="store_true", help="time the process's CPU, not the wall clock (on a busy machine)"
    )
    args = parser.parse_args()
    clock = time.process_time if args.cpu else time.perf_counter
    ids, docs, times, days, services = columns(args.records)

    settings = ElasticsearchSinkResource(
        sink_name="bench", url="http://127.0.0.1:1", index="events"
    ).settings()
    seconds, size = best_of(
        args.repeat, settings.protocol.open(settings), ArrowRecords(ids, docs, times), clock
    )
    print(
        f"static index           : {seconds * 1e3:7.1f} ms  {args.records / seconds / 1e6:5.2f} M records/s  {size} bytes"
    )

    try:
        from pipelines.post.destination import plan_destination
    except ImportError:
        return  # a checkout from before templates: the static case is the comparison
    dtypes = [("ts", "timestamp"), ("service", "string")]
    per_record = {
        "templated index        ": (
            {"index": "logs-{feed}-{ts:%Y.%m.%d}"},
            {"_index": [f"logs-web-{d}" for d in days]},
        ),
        "templated index+pipeline": (
            {"index": "logs-{feed}-{ts:%Y.%m.%d}", "pipeline": "{service}"},
            {"_index": [f"logs-web-{d}" for d in days], "_pipeline": services},
        ),
    }
    for name, (overrides, values) in per_record.items():
        destination = plan_destination(settings, "web", dtypes, overrides)
        records = ArrowRecords(ids, docs, times, {k: pa.array(v, pa.string()) for k, v in values.items()})
        protocol = destination.settings.protocol.open(destination.settings)
        seconds, size = best_of(args.repeat, protocol, records, clock)
        print(
            f"{name}: {seconds * 1e3:7.1f} ms  {args.records / seconds / 1e6:5.2f} M records/s  {size} bytes"
        )


if __name__ == "__main__":
    main()
