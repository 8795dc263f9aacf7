"""Benchmark of bulk exports against their peers, side by side in one run (not a test).

    python -m bench.export [--rows 4000000] [--dir /tmp/lakerelay-bench-export]

Generates (once, then cached in ``--dir``) a Delta table of ``--rows`` rows and 10 columns in
500k-row commits, and one of a quarter of the rows. Every case runs in a fresh subprocess so its peak
RSS is its own:

- ``ours_ndjson_gz``: ``export_table`` gzip NDJSON (level 6) to a local folder, parts of 1M rows.
- ``peer_deltalake_ndjson_gz``: a plain deltalake ``QueryBuilder`` stream, each batch written as
  NDJSON by polars and gzipped (level 6) into one file.
- ``ours_csv_gz`` / ``peer_polars_csv_gz``: gzip CSV, ours vs ``polars.scan_delta(...).sink_csv``.
- ``ours_ndjson_gz`` on the quarter-size table, for ``rss_growth``.

``--repeat N`` runs the cases N times, interleaved, and keeps each case's fastest run (and its RSS).

The last line is ``key=value`` pairs: ``vs_deltalake_stream`` (ours ÷ peer rows/s, goal >= 1),
``vs_polars_csv_gz`` (goal >= 1), ``peak_rss_mb`` (ours, full table) and ``rss_growth`` (peak RSS on
the full table ÷ on the quarter table, goal <= 1.1).
"""

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

COMMIT_ROWS = 500_000
COLUMNS = 10


def generate(path: Path, rows: int) -> None:
    """A Delta table of ``rows`` synthetic events in 500k-row append commits (cached by a marker file)."""
    marker = path / "_bench_complete"
    if marker.exists():
        return
    import numpy as np
    import pyarrow as pa
    from deltalake import write_deltalake

    shutil.rmtree(path, ignore_errors=True)
    rng = np.random.default_rng(42)
    events = np.array(["login", "logout", "purchase", "view", "search", "share"])
    countries = np.array(["FR", "DE", "US", "JP", "BR", "IN", "GB", "NL"])
    for start in range(0, rows, COMMIT_ROWS):
        ids = np.arange(start, min(start + COMMIT_ROWS, rows), dtype=np.int64)
        created = (1_700_000_000_000_000 + ids * 1_000_003).astype("datetime64[us]")
        table = pa.table(
            {
                "id": ids,
                "user_id": rng.integers(0, 1_000_000, len(ids)),
                "quantity": rng.integers(1, 20, len(ids)).astype(np.int32),
                "amount_cents": rng.integers(0, 100_000, len(ids)),
                "event_type": pa.array(events[ids % len(events)]),
                "country": pa.array(countries[rng.integers(0, len(countries), len(ids))]),
                "name": pa.array(np.char.add("user-", (ids % 99_991).astype(str))),
                "url": pa.array(np.char.add("https://shop.example.com/item/", (ids % 50_021).astype(str))),
                "created_at": pa.array(created, pa.timestamp("us", tz="UTC")),
                "updated_at": pa.array(created + np.timedelta64(90, "s"), pa.timestamp("us", tz="UTC")),
            }
        )
        write_deltalake(str(path), table, mode="append")
    marker.touch()


# -- the cases (each runs in its own process) ---------------------------------------------------------


def _ours(table: str, out: str, fmt: str) -> int:
    from pipelines.exporter import export_table
    from resources.export_storage import LocalExportStorage

    result = export_table(
        table, None, LocalExportStorage(root=out), "bench", "e1", format=fmt, compression="gzip"
    )
    return result.rows


def _peer_deltalake_ndjson_gz(table: str, out: str) -> int:
    import polars as pl
    import pyarrow as pa
    from deltalake import DeltaTable, QueryBuilder

    stream = QueryBuilder().register("t", DeltaTable(table)).execute("SELECT * FROM t")
    rows = 0
    gzip = zlib.compressobj(6, zlib.DEFLATED, 31)
    with open(Path(out) / "peer.ndjson.gz", "wb") as sink:
        for batch in pa.RecordBatchReader.from_stream(stream):
            rows += batch.num_rows
            sink.write(gzip.compress(pl.from_arrow(pa.Table.from_batches([batch])).write_ndjson().encode()))
        sink.write(gzip.flush())
    return rows


def _peer_polars_csv_gz(table: str, out: str) -> int:
    import polars as pl

    target = Path(out) / "peer.csv.gz"
    pl.scan_delta(table).sink_csv(target, compression="gzip", compression_level=6)
    return pl.scan_delta(table).select(pl.len()).collect().item()


CASES = {
    "ours_ndjson_gz": lambda t, o: _ours(t, o, "ndjson"),
    "ours_csv_gz": lambda t, o: _ours(t, o, "csv"),
    "peer_deltalake_ndjson_gz": _peer_deltalake_ndjson_gz,
    "peer_polars_csv_gz": _peer_polars_csv_gz,
}


def run_case(name: str, table: str, out: str) -> None:
    # Imports are not what is measured: load every module a case uses before the clock starts.
    import deltalake  # noqa: F401
    import polars  # noqa: F401

    import pipelines.exporter  # noqa: F401
    import resources.export_storage  # noqa: F401

    started = time.perf_counter()
    rows = CASES[name](table, out)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"case": name, "rows": rows, "seconds": seconds, "peak_rss_mb": peak}))


def measure(name: str, table: Path, workdir: Path) -> dict:
    out = workdir / f"out-{name}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    proc = subprocess.run(
        [sys.executable, "-m", "bench.export", "--case", name, "--table", str(table), "--out", str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    shutil.rmtree(out, ignore_errors=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["rows_per_s"] = result["rows"] / result["seconds"]
    print(
        f"{name:28s} {result['rows']:>9,} rows  {result['seconds']:7.2f} s  {result['rows_per_s']:>10,.0f} rows/s  "
        f"peak RSS {result['peak_rss_mb']:6.0f} MB",
        flush=True,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=4_000_000)
    parser.add_argument(
        "--repeat", type=int, default=1, help="run each case N times (interleaved) and keep its fastest run"
    )
    parser.add_argument("--dir", default=str(Path(tempfile.gettempdir()) / "lakerelay-bench-export"))
    parser.add_argument("--case", choices=sorted(CASES), help=argparse.SUPPRESS)
    parser.add_argument("--table", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        run_case(args.case, args.table, args.out)
        return

    workdir = Path(args.dir)
    full, quarter = workdir / f"delta_{args.rows}", workdir / f"delta_{args.rows // 4}"
    started = time.perf_counter()
    generate(full, args.rows)
    generate(quarter, args.rows // 4)
    print(
        f"tables ready in {time.perf_counter() - started:.1f} s ({COLUMNS} columns): {full}, {quarter}",
        flush=True,
    )

    runs: dict[str, list[dict]] = {}
    plan = [
        ("ours", "ours_ndjson_gz", full),
        ("peer", "peer_deltalake_ndjson_gz", full),
        ("ours_csv", "ours_csv_gz", full),
        ("peer_csv", "peer_polars_csv_gz", full),
        ("small", "ours_ndjson_gz", quarter),
    ]
    for _ in range(args.repeat):  # interleaved, so a burst of load on the shared machine hits every case
        for label, case, table in plan:
            runs.setdefault(label, []).append(measure(case, table, workdir))
    ours, peer, ours_csv, peer_csv, small = (
        max(runs[label], key=lambda r: r["rows_per_s"])
        for label in ("ours", "peer", "ours_csv", "peer_csv", "small")
    )
    print(
        f"vs_deltalake_stream={ours['rows_per_s'] / peer['rows_per_s']:.2f} "
        f"vs_polars_csv_gz={ours_csv['rows_per_s'] / peer_csv['rows_per_s']:.2f} "
        f"peak_rss_mb={ours['peak_rss_mb']:.0f} "
        f"rss_growth={ours['peak_rss_mb'] / small['peak_rss_mb']:.2f}"
    )


if __name__ == "__main__":
    main()
