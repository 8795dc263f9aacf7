"""`python -m lakerelay.devtools.sample_events DIR` lands new names and new events each time it runs."""

import subprocess
import sys
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent


def test_each_drop_of_sample_events_adds_new_files_and_new_events(tmp_path: Path) -> None:
    landing = tmp_path / "landing" / "events"
    command = [sys.executable, "-m", "lakerelay.devtools.sample_events", str(landing), "--files", "3"]
    command += ["--records-per-file", "4"]
    for _ in range(2):
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
        assert "wrote 12 events in 3 files" in done.stdout
    names = sorted(path.name for path in landing.iterdir())
    assert names == [f"events-{n:05d}.json" for n in range(6)]
    ids = [
        orjson.loads(line)["event_id"]
        for path in sorted(landing.iterdir())
        for line in path.read_bytes().splitlines()
    ]
    assert len(ids) == len(set(ids)) == 24
