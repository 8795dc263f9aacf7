"""A throwaway PostgreSQL server on 127.0.0.1, for the tests of deploy/dagster.yaml (and to try it by hand).

    python -m lakerelay.devtools.postgres start --dir /tmp/lakerelay-pg   # prints the LAKERELAY_PG_* variables
    python -m lakerelay.devtools.postgres stop  --dir /tmp/lakerelay-pg   # stops it and removes the folder

It is Debian's ``postgresql`` package's own server (``initdb`` and ``pg_ctl`` from PATH or the newest
``/usr/lib/postgresql/<version>/bin``), in a folder of its own: the cluster in ``data/``, the unix socket
and ``server.log`` beside it. It listens on 127.0.0.1 only, on a free port, and asks for a password
(scram-sha-256, generated per server) on TCP and on the socket alike: that is how a production
database is reached, so a template that forgot the password fails here as it would there.

PostgreSQL refuses to run as root. As root (here and in CI) the server binaries run as the
``postgres`` system user that Debian's package creates, in a folder chowned to it; otherwise they
run as the current user. Durability is switched off (``fsync``, ``synchronous_commit``,
``full_page_writes``): the cluster is deleted at the end, and Dagster writes an event row per log line.
"""

import argparse
import json
import os
import pwd
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from lakerelay.devtools.server_cli import log_tail, server_cli

HOST = "127.0.0.1"
DEFAULT_USER = "lakerelay"
DEFAULT_DB = "dagster"
SYSTEM_USER = "postgres"  # Debian's package creates it; the server's processes run as it under root
_STATE = "server.json"


class PostgresError(RuntimeError):
    """The server could not be started or stopped; the message says why and what to do."""


@dataclass(frozen=True)
class PostgresServer:
    """A running server and one of its databases, with what a client needs to reach it."""

    directory: Path
    bin_dir: Path
    port: int
    user: str
    password: str
    db: str
    host: str = HOST

    @property
    def url(self) -> str:
        """A libpq URL (psycopg2, psql). SQLAlchemy wants ``postgresql+psycopg2://`` in front instead."""
        return f"postgresql://{quote(self.user)}:{quote(self.password)}@{self.host}:{self.port}/{self.db}"

    @property
    def env(self) -> dict[str, str]:
        """The variables deploy/dagster.yaml reads the connection from."""
        return {
            "LAKERELAY_PG_HOST": self.host,
            "LAKERELAY_PG_PORT": str(self.port),
            "LAKERELAY_PG_USER": self.user,
            "LAKERELAY_PG_PASSWORD": self.password,
            "LAKERELAY_PG_DB": self.db,
        }

    @property
    def log(self) -> Path:
        return self.directory / "server.log"

    def with_db(self, db: str) -> "PostgresServer":
        return PostgresServer(
            self.directory, self.bin_dir, self.port, self.user, self.password, db, self.host
        )


def find_bin_dir() -> Path:
    """The folder holding ``initdb``, ``pg_ctl`` and ``createdb`` of one PostgreSQL version.

    PATH first (resolved, since /usr/local/bin may hold symlinks to a single tool), then the newest
    ``/usr/lib/postgresql/<version>/bin``: Debian installs the server tools there, not on PATH.
    """
    on_path = shutil.which("initdb")
    candidates = [Path(on_path).resolve().parent] if on_path else []
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: [int(n) for n in re.findall(r"\d+", p.parent.name)] or [0],
        reverse=True,
    )
    for folder in candidates + versions:
        if all((folder / tool).is_file() for tool in ("initdb", "pg_ctl", "createdb")):
            return folder
    raise PostgresError(
        "PostgreSQL's server tools (initdb, pg_ctl) are not installed: "
        "apt-get install -y postgresql (Debian/Ubuntu), or put their folder on PATH"
    )


def start(
    directory: Path | None = None,
    port: int | None = None,
    user: str = DEFAULT_USER,
    db: str = DEFAULT_DB,
    timeout_s: float = 60.0,
) -> PostgresServer:
    """Create a cluster in ``directory`` (a new temporary folder by default), start it, create ``db``.

    ``directory`` must not hold a cluster yet; under root its parents must be searchable by the
    ``postgres`` user (so not pytest's tmp_path, which is under a mode-700 folder of root's).
    """
    bin_dir = find_bin_dir()
    if directory is None:
        directory = Path(tempfile.mkdtemp(prefix="lakerelay-pg-"))
    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    data = directory / "data"
    if data.exists():
        raise PostgresError(
            f"{data} already holds a cluster; stop it first: python -m lakerelay.devtools.postgres stop --dir {directory}"
        )
    if port is None:
        from lakerelay.devtools.spark_connect import free_port

        port = free_port()
    _hand_over(directory)
    server = PostgresServer(directory, bin_dir, port, user, secrets.token_urlsafe(18), db)
    _init_cluster(server)
    _configure(server)
    try:
        _server_tool(
            directory,
            [
                str(bin_dir / "pg_ctl"),
                "--pgdata",
                str(data),
                "--log",
                str(server.log),
                "--wait",
                "--timeout",
                str(int(timeout_s)),
                "start",
            ],
        )
        create_database(server, db)
    except BaseException:
        stop(directory)
        raise
    return server


def _init_cluster(server: PostgresServer) -> None:
    """``initdb`` of the server's cluster, its superuser ``server.user`` with ``server.password``."""
    # initdb reads the superuser's password from a file, so it never shows on a command line (ps).
    pwfile = server.directory / "pwfile"
    pwfile.write_text(server.password + "\n")
    pwfile.chmod(0o600)
    _hand_over(pwfile)
    try:
        _server_tool(
            server.directory,
            [
                str(server.bin_dir / "initdb"),
                "--pgdata",
                str(server.directory / "data"),
                "--username",
                server.user,
                "--pwfile",
                str(pwfile),
                "--auth-local",
                "scram-sha-256",
                "--auth-host",
                "scram-sha-256",
                "--encoding",
                "UTF8",
                "--locale",
                "C",
                "--no-sync",  # a throwaway cluster: skip initdb's fsync of every file
            ],
        )
    finally:
        pwfile.unlink(missing_ok=True)


def _configure(server: PostgresServer) -> None:
    """Loopback only, on the server's port, without durability; and the state ``status`` reads back."""
    settings = {
        "listen_addresses": f"'{HOST}'",
        "port": str(server.port),
        "unix_socket_directories": f"'{server.directory}'",  # not /var/run/postgresql: not ours, maybe absent
        "fsync": "off",
        "synchronous_commit": "off",
        "full_page_writes": "off",
    }
    with (server.directory / "data" / "postgresql.conf").open("a") as conf:
        conf.write("\n# devtools/postgres.py\n" + "".join(f"{k} = {v}\n" for k, v in settings.items()))
    state = server.directory / _STATE
    state.write_text(
        json.dumps(
            {
                "bin_dir": str(server.bin_dir),
                "port": server.port,
                "user": server.user,
                "password": server.password,
                "db": server.db,
            }
        )
    )
    state.chmod(0o600)  # it holds the password


def create_database(server: PostgresServer, db: str) -> PostgresServer:
    """Create ``db`` on the server (a fresh one per test keeps their runs apart); returns it selected."""
    result = subprocess.run(
        [
            str(server.bin_dir / "createdb"),
            "--host",
            server.host,
            "--port",
            str(server.port),
            "--username",
            server.user,
            db,
        ],
        env={**os.environ, "PGPASSWORD": server.password},  # libpq's variable: not on the command line
        capture_output=True,
        text=True,
        timeout=60,
    )
    if result.returncode != 0:
        raise PostgresError(f"createdb {db} failed: {result.stderr.strip()}\n{log_tail(server.log)}")
    return server.with_db(db)


def status(directory: Path) -> PostgresServer | None:
    """The server of ``directory`` if its cluster is there and running."""
    directory = directory.resolve()
    try:
        info = json.loads((directory / _STATE).read_text())
    except (OSError, ValueError):
        return None
    bin_dir = Path(info["bin_dir"])
    check = subprocess.run(
        _as_owner([str(bin_dir / "pg_ctl"), "--pgdata", str(directory / "data"), "status"]),
        cwd=directory,
        capture_output=True,
    )
    if check.returncode != 0:
        return None
    return PostgresServer(directory, bin_dir, int(info["port"]), info["user"], info["password"], info["db"])


def stop(directory: Path, remove: bool = True) -> bool:
    """Stop the server of ``directory`` (fast: open sessions are closed) and, by default, delete the folder.

    Returns False when no server was running there.
    """
    directory = directory.resolve()
    server = status(directory)
    if server is not None:
        _server_tool(
            directory,
            [
                str(server.bin_dir / "pg_ctl"),
                "--pgdata",
                str(directory / "data"),
                "--mode",
                "fast",
                "--wait",
                "stop",
            ],
        )
    # Only a folder that holds a cluster of ours: --dir could name anything.
    if remove and ((directory / "data").exists() or (directory / _STATE).exists()):
        shutil.rmtree(directory, ignore_errors=True)
    return server is not None


def _is_root() -> bool:
    return os.geteuid() == 0


def _as_owner(command: list[str]) -> list[str]:
    """``command`` run as the cluster's owner: the ``postgres`` user under root, else ourselves."""
    return ["runuser", "-u", SYSTEM_USER, "--", *command] if _is_root() else command


def _hand_over(path: Path) -> None:
    """Under root, give ``path`` to the ``postgres`` user, who must also be able to reach it."""
    if not _is_root():
        return
    try:
        account = pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        raise PostgresError(
            f"running as root, but there is no {SYSTEM_USER!r} user to run PostgreSQL as "
            "(Debian's postgresql package creates it): install it, or run as another user"
        ) from None
    os.chown(path, account.pw_uid, account.pw_gid)
    if (
        path.is_dir()
        and subprocess.run(_as_owner(["test", "-w", str(path), "-a", "-x", str(path)])).returncode
    ):
        raise PostgresError(
            f"the {SYSTEM_USER} user cannot reach {path} (a parent folder is private to root): "
            "choose a folder under /tmp"
        )


def _server_tool(directory: Path, command: list[str]) -> None:
    # cwd: the postgres user may not be allowed into the caller's working directory.
    result = subprocess.run(_as_owner(command), cwd=directory, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise PostgresError(
            f"{Path(command[0]).name} failed ({result.returncode}):\n{result.stdout[-2000:]}"
            f"{result.stderr[-2000:]}\n{log_tail(directory / 'server.log')}"
        )


def main(argv: list[str] | None = None) -> int:
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--dir", type=Path, required=True, help="the server's folder (removed by stop)")
        parser.add_argument(
            "--port", type=int, default=None, help="port on 127.0.0.1 (start; default: a free one)"
        )

    def start_action(args: argparse.Namespace) -> int:
        began = time.monotonic()
        server = start(args.dir, args.port)
        print(f"PostgreSQL started in {time.monotonic() - began:.1f}s, log {server.log}", file=sys.stderr)
        print("".join(f"export {k}={v}\n" for k, v in server.env.items()), end="")
        return 0

    return server_cli(
        "python -m lakerelay.devtools.postgres",
        __doc__,
        "PostgreSQL server",
        add_arguments,
        start_action,
        stop,
        status,
        lambda server: f"{server.host}:{server.port}, log {server.log}",
        (PostgresError,),
        argv,
    )


if __name__ == "__main__":
    raise SystemExit(main())
