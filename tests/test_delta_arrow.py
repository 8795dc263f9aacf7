"""Delta reads through pyarrow's native filesystems: same rows, and a process that read exits 0."""

import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pytest
from deltalake import write_deltalake

from resources.delta_arrow import read_delta
from resources.lake import LakeResource

from helpers import local_lake, s3_lake

ROOT = Path(__file__).resolve().parent.parent
ROWS = pa.table({"id": list(range(300)), "name": [f"n{i}" for i in range(300)]})


def _write(lake: LakeResource) -> None:
    for start in range(0, 300, 100):
        write_deltalake(
            lake.table_uri("t"), ROWS.slice(start, 100), mode="append", storage_options=lake.storage_options()
        )


@pytest.mark.integration
@pytest.mark.parametrize("where", ["local", "s3"])
def test_read_delta_reads_every_row_of_a_local_or_s3_table(
    where: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    lake = local_lake(tmp_path) if where == "local" else s3_lake(request.getfixturevalue("s3_settings"))
    _write(lake)
    table = read_delta(lake.table("t"), lake.filesystem_settings())
    assert sorted(table["id"].to_pylist()) == list(range(300))
    picked = read_delta(
        lake.table("t"), lake.filesystem_settings(), columns=["id"], filter=ds.field("id") < 5
    )
    assert picked.column_names == ["id"] and sorted(picked["id"].to_pylist()) == [0, 1, 2, 3, 4]


def test_processes_that_read_a_table_exit_cleanly(tmp_path: Path) -> None:
    """The default PyFileSystem read aborted 38 of 100 such processes at exit on busy cores."""
    lake = local_lake(tmp_path)
    _write(lake)
    script = (
        "from deltalake import DeltaTable\n"
        "from resources.delta_arrow import read_delta\n"
        f"print(read_delta(DeltaTable({lake.table_uri('t')!r})).num_rows)\n"
    )
    for _ in range(8):
        done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True)
        assert (done.returncode, done.stdout.strip()) == (0, "300"), done.stderr[-500:]


def test_no_code_reads_a_delta_table_through_a_python_filesystem() -> None:
    """Every table read passes a native filesystem (resources/delta_arrow.py says why)."""
    offenders = []
    for folder in ("pipelines", "resources", "sensors", "devtools", "lakerelay.localsink", "bench", "tests"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path.name in ("delta_arrow.py", Path(__file__).name):
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if ".to_pyarrow_table(" in line or (
                    ".to_pyarrow_dataset(" in line and "filesystem=" not in line
                ):
                    offenders.append(f"{path.relative_to(ROOT)}:{number}")
    assert not offenders, f"use resources.delta_arrow.read_delta / delta_dataset: {offenders}"
