"""Memory stays bounded: exporting a table 10x larger than another (and 10x larger than one part)
must not raise peak RSS with it. Measured in fresh subprocesses, so nothing else skews the peak.
The allocator settings that make it flat must be in place before deltalake and polars load."""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from deltalake import write_deltalake

REPO = Path(__file__).resolve().parents[1]
ROWS_PER_COMMIT = 100_000

_MEASURE = """
import json, resource, sys
from pipelines.export.exporter import export_table
from resources.export_storage import LocalExportStorage
from deltalake import DeltaTable
table, root = sys.argv[1:3]
DeltaTable(table).version()  # load everything an export loads before taking the baseline
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
result = export_table(table, None, LocalExportStorage(root=root), "t", "e1", order_by="id",
                      part_max_rows=ROWS, level=1)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"before_mb": before / 1024, "peak_mb": peak / 1024, "rows": result.rows, "parts": result.parts}))
"""


def make_events(path: Path, commits: int) -> None:
    rng = np.random.default_rng(1)
    for n in range(commits):
        ids = np.arange(n * ROWS_PER_COMMIT, (n + 1) * ROWS_PER_COMMIT)
        batch = pa.table(
            {
                "id": ids,
                "user_id": rng.integers(0, 10_000, len(ids)),
                "amount": rng.random(len(ids)) * 100,
                "event": pa.array(np.array(["login", "logout", "purchase", "view"])[ids % 4]),
                "url": pa.array([f"https://example.com/p/{i % 9973}" for i in ids]),
                "ts": pa.array(ids * 1_000_000, pa.timestamp("us", tz="UTC")),
            }
        )
        write_deltalake(str(path), batch, mode="append")


def export_rss(table: Path, root: Path) -> dict:
    script = _MEASURE.replace("ROWS", str(ROWS_PER_COMMIT // 2))
    out = subprocess.run(
        [sys.executable, "-c", script, str(table), str(root)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.integration
def test_peak_rss_does_not_grow_with_the_table(tmp_path: Path) -> None:
    make_events(tmp_path / "small", commits=1)
    make_events(tmp_path / "large", commits=10)

    small = export_rss(tmp_path / "small", tmp_path / "out-small")
    large = export_rss(tmp_path / "large", tmp_path / "out-large")

    assert (small["rows"], large["rows"]) == (ROWS_PER_COMMIT, 10 * ROWS_PER_COMMIT)
    assert large["parts"] == 20  # the table is 20 parts, each of 50k rows
    print(f"peak RSS {small['peak_mb']:.0f} MB at 100k rows, {large['peak_mb']:.0f} MB at 1M rows")
    # What a 10x larger table may add: noise of the allocator, not a share of the data (~150 MB of NDJSON).
    assert large["peak_mb"] <= 1.1 * small["peak_mb"] + 20, (small, large)


_FIRST_IMPORTS = """
import os, sys
seen = {}
class Watch:  # records the allocator setting at the moment each library starts loading
    def find_spec(self, name, path=None, target=None):
        if name in ("deltalake", "polars") and name not in seen:
            seen[name] = os.environ.get("_RJEM_MALLOC_CONF")
sys.meta_path.insert(0, Watch())
import MODULE
print(repr(seen))
"""


@pytest.mark.parametrize("module", ["pipelines.definitions", "pipelines.export.cli"])
def test_allocator_is_configured_before_deltalake_and_polars_load(module: str) -> None:
    from pipelines.export.alloc import JEMALLOC_CONF

    env = {k: v for k, v in os.environ.items() if k != "_RJEM_MALLOC_CONF"}
    out = subprocess.run(
        [sys.executable, "-c", _FIRST_IMPORTS.replace("MODULE", module)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    seen = ast.literal_eval(out.stdout.strip().splitlines()[-1])
    assert seen == {"deltalake": JEMALLOC_CONF, "polars": JEMALLOC_CONF}
