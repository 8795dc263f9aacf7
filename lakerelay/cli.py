"""`lakerelay`: one command for lakerelay's tools, each a subcommand with its own --help.

lakerelay demo            the whole flow once on embedded defaults (what `make demo` runs)
lakerelay sample-events   land files of sample events in a landing folder, under new names each time
lakerelay sink            the local sink server (Elasticsearch _bulk and Splunk HEC on one port)
lakerelay spark-connect   start, stop or check a local Spark Connect server
lakerelay export          take, sign, fetch and verify exports (also installed as lakerelay-export)
lakerelay dead-letters    list and replay dead letters (also installed as lakerelay-dead-letters)
"""

import importlib
import sys
from collections.abc import Callable
from typing import Any

# subcommand → (module, what it does); each module's main() parses the rest of the command line.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("lakerelay.devtools.demo", "the whole flow once on embedded defaults"),
    "sample-events": ("lakerelay.devtools.sample_events", "land files of sample events, new names each time"),
    "sink": ("lakerelay.localsink.__main__", "the local Elasticsearch + Splunk HEC sink server"),
    "spark-connect": (
        "lakerelay.devtools.spark_connect",
        "start, stop or check a local Spark Connect server",
    ),
    "export": ("pipelines.export.cli", "take, sign, fetch and verify exports"),
    "dead-letters": ("pipelines.post.replay_cli", "list and replay dead letters"),
}


def usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [f"  {name.ljust(width)}  {what}" for name, (_, what) in COMMANDS.items()]
    return "usage: lakerelay <command> [options]   (lakerelay <command> --help)\n\ncommands:\n" + "\n".join(
        lines
    )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"lakerelay: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    entry: Callable[[], Any] = module.main
    sys.argv = [f"lakerelay {command}", *rest]  # each tool parses sys.argv and names itself from argv[0]
    result = entry()
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
