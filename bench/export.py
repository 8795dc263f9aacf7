"""Benchmark of bulk exports against their peers, side by side in one run (not a test).

    python -m bench.export [--rows 4000000] [--dir /tmp/lakerelay-bench-export]

Generates (once, then cached in ``--dir``) a Delta table of ``--rows`` rows and 10 columns in
500k-row commits, and one of ``--small-rows`` rows (default a quarter) for ``rss_growth``. Cases:

- ``ours_ndjson_gz``: ``export_table`` gzip NDJSON (level 6) to a local folder, parts of 1M rows.
- ``peer_deltalake_ndjson_gz``: a plain deltalake ``QueryBuilder`` stream, each batch written as
  NDJSON by polars and gzipped (level 6) into one file.
- ``ours_csv_gz`` / ``peer_polars_csv_gz``: gzip CSV, ours vs ``polars.scan_delta(...).sink_csv``.
- ``ours_parquet_zstd``: ``export_table`` Parquet (zstd pages), for its memory only.
- the three ``ours_*`` cases again on the small table, for ``rss_growth`` of each format.

Memory: every case runs in its own freshly exec'd process, and its peak RSS is the ``VmHWM`` of that
process (``/proc/self/status``), read when the case ends. ``VmHWM`` belongs to the process's address
space, which ``exec`` creates new, so it is the case's own peak (imports included). ``ru_maxrss`` is
not used: Linux carries the parent's high-water mark into it across ``exec``, so after generating the
tables in the same run every case reported the driver's peak. ``import_mb`` is the peak after the
imports, before the clock starts.

``--repeat N`` runs the cases N times, interleaved, and keeps each case's fastest run; its peak RSS is
the highest of its runs.

The last line is ``key=value`` pairs: ``vs_deltalake_stream`` (ours ÷ peer rows/s, goal >= 1),
``vs_polars_csv_gz`` (goal >= 1), ``peak_rss_mb`` (ours gzip NDJSON, full table, goal <= 300) and
``rss_growth`` (its peak on the full table ÷ on the small one, goal <= 1.05), then the same two for
CSV and Parquet, ``over_imports_mb`` / ``peer_over_imports_mb`` (peak minus the imports, ours gzip
NDJSON and the deltalake stream peer: what the export itself holds, independent of how much the
libraries' versions weigh), and how memory was measured.
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


def _ours(table: str, out: str, fmt: str, compression: str = "gzip") -> int:
    from pipelines.export.exporter import export_table
    from resources.export_storage import LocalExportStorage

    result = export_table(
        table, None, LocalExportStorage(root=out), "bench", "e1", format=fmt, compression=compression
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
    "ours_parquet_zstd": lambda t, o: _ours(t, o, "parquet", "zstd"),
    "peer_deltalake_ndjson_gz": _peer_deltalake_ndjson_gz,
    "peer_polars_csv_gz": _peer_polars_csv_gz,
}


def _peak_rss_mb() -> float:
    """This process's own peak RSS: VmHWM of its address space, which exec made new."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status: this benchmark measures memory on Linux only")


def run_case(name: str, table: str, out: str) -> None:
    # Imports are not what is measured: load every module a case uses before the clock starts. Every
    # case loads the same ones, in the order a Dagster run of the export does (the export package
    # first: it sets the allocator options deltalake and polars read as they load), so peers run alike.
    import pipelines.export.exporter  # noqa: F401, I001
    import deltalake  # noqa: F401
    import polars  # noqa: F401
    import resources.export_storage  # noqa: F401

    imported = _peak_rss_mb()
    started = time.perf_counter()
    rows = CASES[name](table, out)
    seconds = time.perf_counter() - started
    # ru_maxrss only for comparison: it includes the parent's high-water mark (see the module doc).
    inherited = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "case": name,
                "rows": rows,
                "seconds": seconds,
                "peak_rss_mb": _peak_rss_mb(),
                "import_mb": imported,
                "ru_maxrss_mb": inherited,
            }
        )
    )


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
        f"peak RSS {result['peak_rss_mb']:5.0f} MB (imports {result['import_mb']:.0f}; "
        f"ru_maxrss {result['ru_maxrss_mb']:.0f})",
        flush=True,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=4_000_000)
    parser.add_argument(
        "--small-rows", type=int, help="rows of the table for rss_growth (default: a quarter of --rows)"
    )
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
    small_rows = args.small_rows or args.rows // 4
    full, small = workdir / f"delta_{args.rows}", workdir / f"delta_{small_rows}"
    started = time.perf_counter()
    generate(full, args.rows)
    generate(small, small_rows)
    print(
        f"tables ready in {time.perf_counter() - started:.1f} s ({COLUMNS} columns): {full}, {small}",
        flush=True,
    )

    runs: dict[str, list[dict]] = {}
    plan = [
        ("ours", "ours_ndjson_gz", full),
        ("peer", "peer_deltalake_ndjson_gz", full),
        ("ours_csv", "ours_csv_gz", full),
        ("peer_csv", "peer_polars_csv_gz", full),
        ("ours_parquet", "ours_parquet_zstd", full),
        ("small", "ours_ndjson_gz", small),
        ("small_csv", "ours_csv_gz", small),
        ("small_parquet", "ours_parquet_zstd", small),
    ]
    for _ in range(args.repeat):  # interleaved, so a burst of load on the shared machine hits every case
        for label, case, table in plan:
            runs.setdefault(label, []).append(measure(case, table, workdir))
    fastest = {label: max(results, key=lambda r: r["rows_per_s"]) for label, results in runs.items()}
    # Memory is not noise to pick the best of: keep the highest peak of the repeats.
    peak = {label: max(r["peak_rss_mb"] for r in results) for label, results in runs.items()}
    over_imports = {
        label: max(r["peak_rss_mb"] - r["import_mb"] for r in results) for label, results in runs.items()
    }
    print(
        f"vs_deltalake_stream={fastest['ours']['rows_per_s'] / fastest['peer']['rows_per_s']:.2f} "
        f"vs_polars_csv_gz={fastest['ours_csv']['rows_per_s'] / fastest['peer_csv']['rows_per_s']:.2f} "
        f"peak_rss_mb={peak['ours']:.0f} "
        f"rss_growth={peak['ours'] / peak['small']:.2f} "
        f"csv_peak_rss_mb={peak['ours_csv']:.0f} "
        f"csv_rss_growth={peak['ours_csv'] / peak['small_csv']:.2f} "
        f"parquet_peak_rss_mb={peak['ours_parquet']:.0f} "
        f"parquet_rss_growth={peak['ours_parquet'] / peak['small_parquet']:.2f} "
        f"rss_growth_rows={small_rows}->{args.rows} "
        # What the export itself holds, whatever the libraries' versions make the imports weigh.
        f"over_imports_mb={over_imports['ours']:.0f} peer_over_imports_mb={over_imports['peer']:.0f} "
        "rss_measured_by=VmHWM_of_each_case_process"
    )


if __name__ == "__main__":
    main()
