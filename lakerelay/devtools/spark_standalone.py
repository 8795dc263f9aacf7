"""A Spark standalone cluster on 127.0.0.1: one master and one worker, for the tests of the cluster deployment.

    with standalone_cluster(Path("/tmp/cluster"), cores=2) as cluster:
        ...  # LAKERELAY_SPARK_MASTER=cluster.master_url

Both are pyspark's own JVMs (``spark-class …Master`` / ``…Worker`` from the wheel), listening on
loopback only, with their logs and the worker's work dir (the executors' folders, which otherwise
land inside the virtualenv's ``pyspark/work``) under the given folder. The Python of the executors is
not the worker's business: each application names it (``spark.pyspark.python``).
"""

import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from lakerelay.devtools.spark_connect import HOST, free_port

MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"


@dataclass(frozen=True)
class StandaloneCluster:
    master_url: str
    master_ui: str
    directory: Path
    cores: int

    @property
    def work_dir(self) -> Path:
        return self.directory / "work"


def _spawn(spark_class: Path, args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    with log.open("ab") as out:
        # A session of its own: stopping it takes the executors the worker started along.
        return subprocess.Popen(
            [str(spark_class), *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _stop(process: subprocess.Popen) -> None:
    for sig, wait_s in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        if process.poll() is not None:
            return
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue


def _alive_workers(master_ui: str) -> int:
    try:
        with urllib.request.urlopen(f"{master_ui}/json/", timeout=2) as response:
            state = json.load(response)
    except (OSError, ValueError):
        # Not up yet, or up but still wiring its handlers: the master can answer /json/ with its
        # HTML page for a moment while it starts (seen once in CI). Both mean "ask again".
        return 0
    return sum(1 for worker in state.get("workers", []) if worker.get("state") == "ALIVE")


@contextmanager
def standalone_cluster(
    directory: Path, cores: int = 2, memory: str = "2g", timeout_s: float = 120.0
) -> Iterator[StandaloneCluster]:
    """Start a master and a worker, wait until the worker is registered, stop both on exit."""
    import pyspark

    spark_class = Path(pyspark.__file__).resolve().parent / "bin" / "spark-class"
    directory = directory.resolve()
    (directory / "work").mkdir(parents=True, exist_ok=True)
    master_port, master_ui_port, worker_ui_port = free_port(), free_port(), free_port()
    cluster = StandaloneCluster(
        f"spark://{HOST}:{master_port}", f"http://{HOST}:{master_ui_port}", directory, cores
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PYSPARK_", "SPARK_"))},
        "SPARK_HOME": str(spark_class.parent.parent),
        "SPARK_LOCAL_IP": HOST,  # RPC, block manager and the web UIs on loopback
        "SPARK_LOCAL_DIRS": str(directory / "tmp"),
        "SPARK_WORKER_DIR": str(cluster.work_dir),
    }
    master = _spawn(
        spark_class,
        [MASTER_CLASS, "--host", HOST, "--port", str(master_port), "--webui-port", str(master_ui_port)],
        directory / "master.log",
        env,
    )
    worker = None
    try:
        worker = _spawn(
            spark_class,
            [
                *(WORKER_CLASS, "--host", HOST, "--cores", str(cores), "--memory", memory),
                *("--work-dir", str(cluster.work_dir), "--webui-port", str(worker_ui_port)),
                cluster.master_url,
            ],
            directory / "worker.log",
            env,
        )
        deadline = time.monotonic() + timeout_s
        while _alive_workers(cluster.master_ui) < 1:
            for name, process in (("master", master), ("worker", worker)):
                if process.poll() is not None:
                    log = (directory / f"{name}.log").read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"the standalone {name} exited with {process.returncode}:\n{log}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"no worker registered with {cluster.master_url} in {timeout_s:.0f}s")
            time.sleep(0.5)
        yield cluster
    finally:
        if worker is not None:
            _stop(worker)
        _stop(master)
