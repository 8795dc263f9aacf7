"""`make lint` as part of the suite, so CI holds the code to it: ruff (style) and basedpyright
(pyright's basic type checks, configured in pyproject.toml) on the code that ships."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_finds_nothing() -> None:
    check = run(str(BIN / "ruff"), "check", ".")
    assert check.returncode == 0, check.stdout + check.stderr
    style = run(str(BIN / "ruff"), "format", "--check", ".")
    assert style.returncode == 0, style.stdout + style.stderr


def test_pyright_basic_finds_no_error() -> None:
    types = run(str(BIN / "basedpyright"), "--level", "error")
    assert types.returncode == 0, types.stdout[-4000:] + types.stderr[-2000:]
