"""Run the local sink server as a child process (for the demo and CLI tests) and ask it for counts."""

import subprocess
import sys
import time
from pathlib import Path

import requests


class SinkProcess:
    """``python -m lakerelay.localsink`` on 127.0.0.1 on a free port; stopped on exit, killed if it will not stop."""

    def __init__(self, port_file: Path, *extra_args: str) -> None:
        self.port_file = port_file
        self.extra_args = extra_args
        self.process: subprocess.Popen | None = None
        self.url = ""

    def __enter__(self) -> "SinkProcess":
        self.port_file.unlink(missing_ok=True)
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "lakerelay.localsink",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--port-file",
                str(self.port_file),
                *self.extra_args,
            ],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while not self.port_file.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError(
                    "the local sink server did not start; run `python -m lakerelay.localsink` to see why"
                )
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{int(self.port_file.read_text().strip())}"
        return self

    def stats(self) -> dict:
        return requests.get(f"{self.url}/_localsink/stats", timeout=10).json()

    def __exit__(self, *exc) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
