"""Re-resolve lakerelay's whole dependency closure: the one deliberate way to upgrade what installs.

    python -m lakerelay.devtools.lock          # writes requirements.lock and deploy/executor-requirements.txt

``pyproject.toml`` names the direct dependencies; ``requirements.lock`` pins every distribution they
pull in (pip, dagster's and moto's dependencies, idna, ...), and every install of the project
(``make``, ``make plain``, CI) takes it as pip's constraints file, so a clean clone next month
installs exactly what it installs today, whatever the registry published since. This command
resolves again in a throwaway virtualenv (newest releases that satisfy ``pyproject.toml``), and
rewrites both files from what got installed there; review the diff like code, then run the tests.
"""

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements.lock"
EXECUTOR_REQUIREMENTS = ROOT / "deploy" / "executor-requirements.txt"
# Every extra, so one lock serves the dev environment, the production instance and a plain install.
EXTRAS = "dev,deploy"
# lakerelay itself; setuptools comes with the virtualenv from Python's ensurepip, not from an install.
UNLOCKED = {"lakerelay", "setuptools"}
HEADER = (
    "# Every distribution lakerelay installs, pinned: pip's constraints for `make`, `make plain` and CI.\n"
    "# Direct dependencies live in pyproject.toml. Upgrade on purpose: python -m lakerelay.devtools.lock, review\n"
    "# the diff, run `make test`.\n"
)


def _run(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def lock_lines(python: Path) -> list[str]:
    """``name==version`` of every distribution in ``python``'s environment but lakerelay itself."""
    frozen = _run(str(python), "-m", "pip", "freeze", "--all", "--exclude-editable")
    lines = [line.strip() for line in frozen.splitlines() if "==" in line and not line.startswith("#")]
    return sorted((line for line in lines if line.split("==")[0].lower() not in UNLOCKED), key=str.lower)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lakerelay-lock-") as scratch:
        venv = Path(scratch) / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        python = venv / "bin" / "python"
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--upgrade", "pip"], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "-e", f"{ROOT}[{EXTRAS}]"], check=True
        )
        LOCK.write_text(HEADER + "\n".join(lock_lines(python)) + "\n")
        EXECUTOR_REQUIREMENTS.write_text(_run(str(python), "-m", "resources.executor_check"))
    print(f"wrote {LOCK.relative_to(ROOT)} and {EXECUTOR_REQUIREMENTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
