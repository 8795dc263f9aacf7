"""kill -9 of the ingest process after each phase, then a rerun: every record once, every bad line once."""

import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.compute as pc
import pytest

from pipelines.feeds import EVENTS_FEED
from pipelines.ingest.runner import ingest_feed

from helpers import delta_table, land_events, local_lake

# Runs a real ingest (2 files per batch) in a child process and SIGKILLs it right after the step.
CRASH_AT = Path(__file__).resolve().parent / "crash_at.py"


@pytest.mark.e2e
@pytest.mark.parametrize("phase", ["planned", "quarantined", "committed", "cursor"])
def test_kill_9_after_each_phase_then_rerun_gives_every_record_once(tmp_path: Path, phase: str) -> None:
    lake = local_lake(tmp_path)
    written = land_events(lake, files=3, records_per_file=50)
    ingest_feed(EVENTS_FEED, lake)  # batch 1 is in; the crash hits batch 2
    written += land_events(lake, files=3, records_per_file=50, start_seq=150)
    bad = Path(lake.landing_uri) / "events" / "events-00009.json"
    bad.write_bytes(b'{"event_id": "evt-bad-ok"}\n{"event_id": \n')
    written += 1

    child = subprocess.run(
        [sys.executable, str(CRASH_AT), phase, lake.lake_uri, lake.landing_uri],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        timeout=120,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()[-2000:]

    rerun = ingest_feed(EVENTS_FEED, lake)
    again = ingest_feed(EVENTS_FEED, lake, full_listing=True)

    table = delta_table(lake)
    assert table.num_rows == written
    assert pc.count_distinct(table["event_id"]).as_py() == written
    assert again.rows == 0 and again.batches == []
    quarantine = delta_table(lake, "_lakerelay/quarantine/events")
    assert quarantine.select(["source_file", "line"]).to_pylist() == [{"source_file": str(bad), "line": 2}]
    if phase in ("planned", "quarantined"):
        assert rerun.replayed_batches == 1
