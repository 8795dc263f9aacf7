"""A local Spark Connect server on 127.0.0.1: started for `make ui` and the tests, stopped by its pid file.

    python -m lakerelay.devtools.spark_connect start  --dir .lakerelay/spark-connect --port 15002   # prints the sc:// URL
    python -m lakerelay.devtools.spark_connect status --dir .lakerelay/spark-connect
    python -m lakerelay.devtools.spark_connect stop   --dir .lakerelay/spark-connect

The server is pyspark's own (``spark-submit --class …SparkConnectServer`` from the wheel, what
``sbin/start-connect-server.sh`` runs), in ``local[N]``, listening on 127.0.0.1 only, with this
Python for its Python workers unless ``--python`` names another: that one needs only
``deploy/executor-requirements.txt``, since each run ships lakerelay's code to its session. Its state, log and
Spark scratch space live under ``--dir``: ``server.pid``, ``server.json``, ``server.log``, ``work/``.
"""

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from lakerelay.devtools.server_cli import log_tail, server_cli
from resources.spark import LOCAL_JIT_OPTION, LOG4J2_CONSOLE_WARN, log4j_config_file

SERVER_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"
HOST = "127.0.0.1"
DEFAULT_DIR = Path(".lakerelay/spark-connect")
DEFAULT_PORT = 15002
# The server's log keeps its own "started at" line; everything else of Spark's at WARN.
_SERVER_LOG4J2 = (
    LOG4J2_CONSOLE_WARN
    + "logger.connect_server.name = org.apache.spark.sql.connect.service.SparkConnectServer\n"
    + "logger.connect_server.level = info\n"
)


@dataclass(frozen=True)
class ConnectServer:
    """A running server: its JVM's pid, where it listens, its folder."""

    pid: int
    port: int
    directory: Path
    master: str
    token: bool = False

    @property
    def url(self) -> str:
        # With a token pyspark uses TLS, except towards "localhost" (local channel credentials): this
        # plain-text server on loopback is reached as localhost then.
        return f"sc://{'localhost' if self.token else HOST}:{self.port}"

    @property
    def log(self) -> Path:
        return self.directory / "server.log"


class ConnectServerError(RuntimeError):
    """The server could not be started or stopped; the message says why and what to do."""


def start(
    directory: Path = DEFAULT_DIR,
    port: int = DEFAULT_PORT,
    master: str = "local[2]",
    driver_memory: str = "2g",
    python: str = sys.executable,
    timeout_s: float = 180.0,
    token_env: str | None = None,
    ui: bool = False,
    detached_timeout_s: float = 60.0,
) -> ConnectServer:
    """Start a server (or return the one already running from ``directory`` on ``port``) and wait for it.

    Returns once a client session has run a query on it. ``token_env`` names an environment variable
    whose value the server will require as bearer token (handed over in the server's environment,
    never on its command line, which ``ps`` shows). ``detached_timeout_s``: how long an operation
    whose client is gone (its process killed) keeps running before the server interrupts it.
    """
    directory = directory.resolve()
    running = _running_on(directory, port)
    if running is not None:
        return running
    work = directory / "work"
    for folder in (work / "tmp", work / "warehouse"):
        folder.mkdir(parents=True, exist_ok=True)
    pyspark_home = _pyspark_home()
    command = _server_command(
        pyspark_home,
        directory,
        work,
        master,
        driver_memory,
        _server_conf(port, python, ui, work, detached_timeout_s),
    )
    env = _server_env(pyspark_home, python, work, token_env)
    started = time.monotonic()
    with (directory / "server.log").open("ab") as log:
        # A session of its own: Ctrl-C in the terminal of `make ui` reaches dagster, not the server,
        # which the Makefile's trap then stops in order. Its pyspark.daemon starts a process group of its
        # own: SIGTERM lets the JVM stop it; after a SIGKILL it lingers until it notices the JVM is gone.
        process = subprocess.Popen(
            command,
            cwd=work,  # derby, metastore_db and spark-warehouse leftovers land here, not in the repo
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    # spark-submit execs the JVM, so this pid is the server's own for its whole life.
    server = ConnectServer(process.pid, port, directory, master, token=bool(token_env))
    _record(server)
    try:
        _wait_until_ready(server, process, started + timeout_s, token_env)
    except BaseException:
        stop(directory)
        raise
    return server


def _record(server: ConnectServer) -> None:
    """The pid file and state ``status`` and ``stop`` find the server by."""
    (server.directory / "server.pid").write_text(f"{server.pid}\n")
    (server.directory / "server.json").write_text(
        json.dumps(
            {
                "pid": server.pid,
                "port": server.port,
                "url": server.url,
                "master": server.master,
                "token": server.token,
            }
        )
    )


def _running_on(directory: Path, port: int) -> ConnectServer | None:
    """The server ``directory`` already runs on ``port``; an error when it runs on another, or when
    something else holds ``port``."""
    running = status(directory)
    if running is not None:
        if running.port != port:
            raise ConnectServerError(
                f"a Spark Connect server from {directory} already runs on port {running.port} "
                f"(pid {running.pid}); stop it first: python -m lakerelay.devtools.spark_connect stop --dir {directory}"
            )
        return running
    if not _port_is_free(port):
        raise ConnectServerError(
            f"port {port} on {HOST} is in use (another Spark Connect server?); "
            f"choose another --port or stop what listens there"
        )
    return None


def _server_conf(port: int, python: str, ui: bool, work: Path, detached_timeout_s: float) -> dict[str, str]:
    return {
        "spark.connect.grpc.binding.address": HOST,
        "spark.connect.grpc.binding.port": str(port),
        "spark.connect.grpc.port.maxRetries": "0",  # a busy port is an error, never a silent other port
        "spark.driver.bindAddress": HOST,
        "spark.driver.host": HOST,
        "spark.ui.enabled": "true" if ui else "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.pyspark.python": python,
        "spark.sql.warehouse.dir": str(work / "warehouse"),
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.shuffle.partitions": "8",
        # An operation whose client went away (killed: no run left to interrupt it) is interrupted
        # after this, not after Spark's 5 minutes, so its Python workers stop posting. Longer than a
        # client's own retries of an unreachable server (connect_retry_s, 30 s), which detach it too.
        # The server notices a client is gone only when a response stream ends (a query that is still
        # running sends nothing), so streams end (the client reattaches at once) every half of it.
        "spark.connect.execute.manager.detachedTimeout": f"{round(detached_timeout_s * 1000)}ms",
        "spark.connect.execute.manager.maintenanceInterval": f"{round(min(5.0, detached_timeout_s / 2) * 1000)}ms",
        "spark.connect.execute.reattachable.senderMaxStreamDuration": f"{round(detached_timeout_s * 500)}ms",
    }


def _server_command(
    pyspark_home: Path, directory: Path, work: Path, master: str, driver_memory: str, conf: dict[str, str]
) -> list[str]:
    """``spark-submit`` of the server class, its log4j settings in ``directory``."""
    log4j = log4j_config_file(_SERVER_LOG4J2, directory)
    java_options = f"{LOCAL_JIT_OPTION} -Dderby.system.home={work}" + (
        f" -Dlog4j.configurationFile={log4j}" if log4j else ""
    )
    command = [str(pyspark_home / "bin" / "spark-submit"), "--class", SERVER_CLASS]
    command += ["--name", "lakerelay Spark Connect server", "--master", master]
    command += ["--driver-memory", driver_memory, "--driver-java-options", java_options]
    for key, value in conf.items():
        command += ["--conf", f"{key}={value}"]
    return command


def _server_env(pyspark_home: Path, python: str, work: Path, token_env: str | None) -> dict[str, str]:
    """This environment without a Connect client's variables, with the server's; the token, if any,
    handed over here, never on the command line (``ps`` shows it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPARK_CONNECT_", "SPARK_REMOTE"))}
    env.pop("SPARK_LOCAL_REMOTE", None)
    env.update(
        {
            "SPARK_HOME": str(pyspark_home),
            "SPARK_LOCAL_IP": HOST,  # every other socket of the JVM (block manager, UI) on loopback too
            "PYSPARK_PYTHON": python,
            # Scratch space; as spark.local.dir it would make Spark warn at every start.
            "SPARK_LOCAL_DIRS": str(work / "tmp"),
        }
    )
    if token_env:
        token = os.environ.get(token_env)
        if not token:
            raise ConnectServerError(f"--token-env {token_env}: that environment variable is not set")
        env["SPARK_CONNECT_AUTHENTICATE_TOKEN"] = token  # the server's own variable for its token
    return env


def status(directory: Path = DEFAULT_DIR) -> ConnectServer | None:
    """The server started from ``directory`` if it still runs; a stale pid file is removed."""
    directory = directory.resolve()
    try:
        info = json.loads((directory / "server.json").read_text())
        pid = int((directory / "server.pid").read_text().strip())
    except (OSError, ValueError):
        return None
    if _is_our_server(pid, int(info["port"])):
        return ConnectServer(
            pid, int(info["port"]), directory, str(info.get("master", "")), bool(info.get("token"))
        )
    _forget(directory)
    return None


def stop(directory: Path = DEFAULT_DIR, timeout_s: float = 30.0) -> bool:
    """Stop the server of ``directory``: SIGTERM (Spark's shutdown hooks run), SIGKILL if it lingers.

    Returns False when none was running. Only the process named by the pid file is signalled, and only
    while its command line is still this server's (a pid can be reused after a reboot).
    """
    directory = directory.resolve()
    server = status(directory)
    if server is None:
        return False
    _signal_group(server.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while _alive(server.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(server.pid):
        _signal_group(server.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _alive(server.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
    if _alive(server.pid):
        raise ConnectServerError(
            f"the Spark Connect server (pid {server.pid}) did not stop; kill {server.pid}"
        )
    _forget(directory)
    return True


def _wait_until_ready(
    server: ConnectServer, process: subprocess.Popen, deadline: float, token_env: str | None
) -> None:
    """Wait for the port, then for a session that runs a query (the JVM listens before it is warm)."""
    from resources.spark import SparkConnectUnavailable, connect_session

    while True:
        if process.poll() is not None:
            raise ConnectServerError(
                f"the Spark Connect server exited with code {process.returncode} while starting:\n"
                f"{log_tail(server.log, 25, '(no log)')}\n(full log: {server.log})"
            )
        if time.monotonic() > deadline:
            raise ConnectServerError(
                f"the Spark Connect server did not accept a session on {server.url} in time:\n{log_tail(server.log, 25, '(no log)')}"
            )
        if not _port_is_free(server.port):
            break
        time.sleep(0.2)
    token = os.environ.get(token_env) if token_env else None
    try:
        session = connect_session(server.url, token, timeout_s=max(5.0, deadline - time.monotonic()))
    except SparkConnectUnavailable as exc:
        raise ConnectServerError(f"{exc}\n{log_tail(server.log, 25, '(no log)')}") from None
    try:
        session.range(1).collect()
    finally:
        session.stop()


def _pyspark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((HOST, port)) != 0


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        pass
    result = subprocess.run(["ps", "-p", str(pid), "-o", "command="], capture_output=True, text=True)
    return result.stdout.strip()


def _is_our_server(pid: int, port: int) -> bool:
    line = _command_line(pid)
    return _alive(pid) and SERVER_CLASS in line and f"spark.connect.grpc.binding.port={port}" in line


def _alive(pid: int) -> bool:
    try:
        # Reaps it when it is our child (the tests start it in-process): a zombie is not a server.
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _signal_group(pid: int, sig: signal.Signals) -> None:
    """The process group the server leads (started with a new session); its pyspark.daemon has its own."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _forget(directory: Path) -> None:
    for name in ("server.pid", "server.json"):
        (directory / name).unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--dir", type=Path, default=DEFAULT_DIR, help="pid file, log and Spark scratch space"
        )
        parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port on 127.0.0.1 (start)")
        parser.add_argument("--master", default="local[2]", help="Spark master of the server (start)")
        parser.add_argument("--driver-memory", default="2g", help="the server's JVM heap (start)")
        parser.add_argument(
            "--python", default=sys.executable, help="the Python of its Python workers (start)"
        )
        parser.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for start-up")
        parser.add_argument(
            "--token-env", default=None, help="require the token held by this environment variable (start)"
        )
        parser.add_argument("--ui", action="store_true", help="also serve the Spark UI (on 127.0.0.1:4040)")

    def start_action(args: argparse.Namespace) -> int:
        began = time.monotonic()
        before = status(args.dir)
        server = start(
            args.dir,
            args.port,
            args.master,
            args.driver_memory,
            python=args.python,
            timeout_s=args.timeout,
            token_env=args.token_env,
            ui=args.ui,
        )
        what = "already running" if before else f"started in {time.monotonic() - began:.1f}s"
        print(
            f"Spark Connect server {what}: pid {server.pid}, {server.master}, log {server.log}",
            file=sys.stderr,
        )
        print(server.url)
        return 0

    return server_cli(
        "python -m lakerelay.devtools.spark_connect",
        __doc__,
        "Spark Connect server",
        add_arguments,
        start_action,
        stop,
        status,
        lambda server: f"{server.url} (pid {server.pid}, {server.master}, log {server.log})",
        (ConnectServerError,),
        argv,
    )


if __name__ == "__main__":
    raise SystemExit(main())
