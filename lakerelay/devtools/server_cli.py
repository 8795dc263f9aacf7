"""What the command lines of the throwaway test servers share: start/stop/status and their log's tail."""

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

Server = TypeVar("Server")


def log_tail(path: Path, lines: int = 20, missing: str = "") -> str:
    """The last ``lines`` lines of a server's log, for an error message; ``missing`` when there is none."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return missing


def server_main(
    prog: str,
    description: str | None,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    actions: dict[str, Callable[[argparse.Namespace], int]],
    errors: tuple[type[Exception], ...],
    argv: Sequence[str] | None = None,
) -> int:
    """Parse ``<action> [options]``, run that action; an expected error prints ``error: …`` and exits 1."""
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("action", choices=tuple(actions))
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return actions[args.action](args)
    except errors as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def server_cli(
    prog: str,
    description: str | None,
    name: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    start: Callable[[argparse.Namespace], int],
    stop: Callable[[Path], bool],
    status: Callable[[Path], Server | None],
    describe: Callable[[Server], str],
    errors: tuple[type[Exception], ...],
    argv: Sequence[str] | None = None,
) -> int:
    """``<action> --dir <folder> [options]`` of a throwaway server called ``name``: ``start`` as given;
    ``stop`` and ``status`` of the server of ``--dir`` (``describe`` says where it runs), the same for
    every server. ``status`` exits 1 when none runs."""

    def stop_action(args: argparse.Namespace) -> int:
        print(f"{name} stopped" if stop(args.dir) else f"no {name} was running")
        return 0

    def status_action(args: argparse.Namespace) -> int:
        server = status(args.dir)
        if server is None:
            print("not running")
            return 1
        print(f"running: {describe(server)}")
        return 0

    actions = {"start": start, "stop": stop_action, "status": status_action}
    return server_main(prog, description, add_arguments, actions, errors, argv)
