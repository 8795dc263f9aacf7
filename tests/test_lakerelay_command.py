"""The `lakerelay` command: every subcommand answers --help, an unknown one is exit 2, and
`lakerelay sample-events` lands files under new names each time."""

import subprocess
import sys
from pathlib import Path

import pytest

from lakerelay.cli import COMMANDS

BIN = Path(sys.executable).parent


def lakerelay(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "lakerelay"), *args], capture_output=True, text=True, timeout=120)


def test_the_command_lists_its_subcommands() -> None:
    done = lakerelay("--help")
    assert done.returncode == 0
    assert all(name in done.stdout for name in COMMANDS)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_each_subcommand_answers_help(command: str) -> None:
    done = lakerelay(command, "--help")
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout.lower()


def test_an_unknown_subcommand_is_exit_2_with_the_list() -> None:
    done = lakerelay("nope")
    assert done.returncode == 2
    assert "unknown command 'nope'" in done.stderr and "sample-events" in done.stderr


def test_sample_events_lands_new_names_each_time(tmp_path: Path) -> None:
    for _ in range(2):
        assert lakerelay("sample-events", str(tmp_path), "--files", "2").returncode == 0
    assert len(list(tmp_path.iterdir())) == 4
