"""Every command README.md and docs/*.md print works as printed, from a fresh shell.

Each command comes from a ```bash block (continuation lines joined) or from an inline code span that
starts with a known program. Its program and subcommands must answer `--help`, every option it uses must
be in that help, `make` targets must exist, the jobs, assets and component types it names must exist, and
the cheap self-contained ones are run for real. Commands that need something outside the checkout are
skipped with the reason in SKIPPED."""

import itertools
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import dagster
import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

PROGRAMS = {
    "dagster",
    "dagster-webserver",
    "dagster-daemon",
    "dg",
    "lakerelay",
    "lakerelay-export",
    "lakerelay-dead-letters",
    "make",
    "python",
    "python3",
}
# Commands (by their start, after `VAR=value` prefixes) that need something outside the checkout.
SKIPPED = {
    "curl ": "asks the local sink server that `make ui` starts",
    "$SPARK_HOME/": "needs a Spark distribution, as on a cluster host",
    "/opt/": "the executors' venv of a cluster host",
    "python3.11 -m venv": "creates a venv outside the checkout",
}
# Commands run for real (not just --help): cheap and self-contained in a fresh LAKERELAY_HOME.
RUN = {
    "dg check yaml",
    "dg check defs",
    "dg list defs",
    "dg launch --job ingest_events",
    "dagster job execute -m pipelines.definitions -j ingest_events",
}
# Options whose value names a job, or an asset selection, in pipelines.definitions.defs.
JOB_OPTIONS = {"-j", "--job"}
ASSET_OPTIONS = {"--select", "--assets"}
PLACEHOLDER = re.compile(r"<[^>]*>|…|\.\.\.")


@dataclass(frozen=True)
class DocCommand:
    source: str  # file:line
    text: str  # as printed (continuations joined)


def _strip_comment(line: str) -> str:
    return re.sub(r"(^|\s)#.*$", "", line).rstrip()


def doc_commands() -> list[DocCommand]:
    commands: list[DocCommand] = []
    for doc in DOCS:
        lines = doc.read_text().splitlines()
        in_bash = False
        pending, start = "", 0
        for number, line in enumerate(lines, 1):
            fence = line.strip()
            if fence.startswith("```"):
                in_bash = fence == "```bash" and not in_bash
                continue
            name = doc.relative_to(ROOT)
            if in_bash:
                code = _strip_comment(line).strip()
                if not code and not pending:
                    continue
                if not pending:
                    start = number
                if code.endswith("\\"):
                    pending += code[:-1].strip() + " "
                    continue
                commands.append(DocCommand(f"{name}:{start}", (pending + code).strip()))
                pending = ""
                continue
            for span in re.findall(r"`([^`]+)`", line):
                words = _program_words(span)
                if (
                    words
                    and words[0] in PROGRAMS
                    and (words[0] not in {"python", "python3"} or words[1:2] == ["-m"])
                ):
                    commands.append(DocCommand(f"{name}:{number}", span.strip()))
    return commands


def _program_words(text: str) -> list[str]:
    """The command's words: `VAR=value` prefixes dropped, `.venv/bin/` stripped, brackets of optional
    arguments removed, `a|b` kept whole (expanded by alternatives())."""
    try:
        words = shlex.split(text)
    except ValueError:
        words = text.split()
    while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
        words = words[1:]
    if words:
        words[0] = words[0].removeprefix(".venv/bin/")
    return [word.strip("[]") for word in words if word.strip("[]")]


def alternatives(words: list[str]) -> list[list[str]]:
    """`status|stop` in a bare subcommand position stands for two commands."""
    for index, word in enumerate(words):
        if "|" in word and re.fullmatch(r"[\w-]+(\|[\w-]+)+", word):
            return [
                variant
                for choice in word.split("|")
                for variant in alternatives([*words[:index], choice, *words[index + 1 :]])
            ]
    return [words]


def fresh_env(home: Path) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DAGSTER_HOME", "VIRTUAL_ENV", "PYTHONPATH"} and not key.startswith("LAKERELAY_")
    }
    env.update(
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        LAKERELAY_HOME=str(home),
        COLUMNS="200",
        NO_COLOR="1",
        TERM="dumb",
    )
    return env


def run(argv: list[str], home: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        argv, cwd=ROOT, env=fresh_env(home), capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def help_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("lakerelay-help")


@cache
def _help(argv: tuple[str, ...], home: Path) -> tuple[int, str]:
    """`argv --help` (exit code, text); for dg also the subcommands and options its click completion
    lists, because dg's rich help (typer's renderer) omits plain click options and commands."""
    done = run([*argv, "--help"], home)
    text = done.stdout + done.stderr
    if Path(argv[0]).name == "dg":
        for incomplete in ("", "--"):  # its subcommands, then its options
            words = " ".join(["dg", *argv[1:], incomplete])
            env = {"_DG_COMPLETE": "bash_complete", "COMP_WORDS": words, "COMP_CWORD": str(len(argv))}
            completion = subprocess.run(
                argv[:1],
                cwd=ROOT,
                env={**fresh_env(home), **env},
                capture_output=True,
                text=True,
                timeout=120,
            )
            text += "\n" + completion.stdout
    return done.returncode, text


def _subcommand_argv(program: list[str], rest: list[str], home: Path) -> tuple[list[str], list[str]]:
    """Descend into subcommands while the next bare word is named by the current help."""
    argv = list(program)
    while rest and re.fullmatch(r"[a-z][a-z0-9_-]*", rest[0]):
        code, text = _help(tuple(argv), home)
        if code != 0 or not re.search(rf"(?<![\w-]){re.escape(rest[0])}(?![\w-])", text):
            break
        argv.append(rest.pop(0))
    return argv, rest


def _options(words: list[str]) -> list[str]:
    return [word.split("=", 1)[0] for word in words if re.fullmatch(r"--?[A-Za-z][\w-]*(=.*)?", word)]


def _option_values(words: list[str], names: set[str]) -> list[str]:
    return [
        value
        for option, value in itertools.pairwise(words)
        if option in names and not PLACEHOLDER.search(value)
    ]


@cache
def _defs() -> "dagster.Definitions":
    from pipelines.definitions import defs  # imported here: collecting the test loads no definitions

    return defs


TARGET_OPTIONS = {"-m", "--module-name", "-f", "--python-file", "-w", "--workspace", "-a", "--attribute"}


def _code_target(words: list[str]) -> list[str]:
    """The options a dagster command names its code with (none: pyproject's [tool.dagster] must)."""
    return [
        word
        for option, value in itertools.pairwise(words)
        if option in TARGET_OPTIONS
        for word in (option, value)
    ]


# dagster commands that load the definitions (exit 2, "Invalid set of CLI arguments", without a code
# target: pyproject's [tool.dagster] does not serve them): probed with a name that matches nothing.
PROBES = {
    ("job", "execute"): ["-j", "lakerelay_docs_probe_no_such_job"],
    ("asset", "materialize"): ["--select", "lakerelay_docs_probe_no_such_asset"],
}


@cache
def _finds_code(argv: tuple[str, ...], target: tuple[str, ...], home: Path) -> str:
    """The command with the doc's code target and a name that matches nothing: it loads the definitions
    and stops at the name, or fails on the target, and runs nothing either way."""
    done = run([*argv, *target, *PROBES[tuple(argv[1:])]], home)
    return done.stdout + done.stderr


@cache
def _component_types(home: Path) -> str:
    return run([str(BIN / "dg"), "list", "components", "--json"], home).stdout


COMMANDS = doc_commands()


def test_the_docs_print_commands() -> None:
    assert len(COMMANDS) > 40, [c.text for c in COMMANDS]


@pytest.mark.parametrize("command", COMMANDS, ids=[f"{c.source} {c.text[:60]}" for c in COMMANDS])
def test_doc_command_works_as_printed(command: DocCommand, help_home: Path, tmp_path: Path) -> None:
    words = _program_words(command.text)
    for prefix, reason in SKIPPED.items():
        if " ".join(words).startswith(prefix) or command.text.startswith(prefix):
            pytest.skip(reason)
    assert words and words[0] in PROGRAMS, (
        f"{command.source}: `{command.text}` runs an unknown program: check it here or add it to SKIPPED"
    )
    for variant in alternatives(words):
        _check(command, variant, help_home, tmp_path)


def _check(command: DocCommand, words: list[str], help_home: Path, tmp_path: Path) -> None:
    where = f"{command.source}: `{command.text}`"
    program, rest = words[0], words[1:]
    if program == "make":
        # `make -n` runs a recipe line only when it starts with `+` or names $(MAKE): none may, or the
        # check would start the demo, the suite or the UI.
        makefile = (ROOT / "Makefile").read_text()
        assert not re.search(r"^\t[@-]*\+|\$\(MAKE\)", makefile, re.MULTILINE), "make -n would run a recipe"
        for target in [word for word in rest if not word.startswith("-") and "=" not in word]:
            done = run(["make", "-n", target], help_home)
            assert done.returncode == 0, f"{where}: the Makefile has no target {target}:\n{done.stderr}"
        return
    if program in {"python", "python3"}:
        assert rest[:1] == ["-m"] and len(rest) > 1, f"{where}: only `python -m <module>` is checked"
        base, rest = [str(BIN / "python"), "-m", rest[1]], rest[2:]
    else:
        base = [str(BIN / program)]
        assert Path(base[0]).exists(), f"{where}: {program} is not in the venv's bin"
    argv, remaining = _subcommand_argv(base, list(rest), help_home)
    code, text = _help(tuple(argv), help_home)
    shown = " ".join([program, *argv[len(base) :]])
    assert code == 0, f"{where}: `{shown} --help` exited {code}:\n{text[-2000:]}"
    for option in _options(remaining):
        assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text), (
            f"{where}: `{shown}` has no option {option} (see `{shown} --help`)"
        )
    if program in {"dagster", "dg"}:
        defs = _defs()
        for job in _option_values(remaining, JOB_OPTIONS):
            assert job in {j.name for j in defs.resolve_all_job_defs()}, f"{where}: no job named {job}"
        keys = {key.to_user_string() for key in defs.resolve_all_asset_keys()}
        for selection in _option_values(remaining, ASSET_OPTIONS):
            for key in selection.split(","):
                assert key in keys, f"{where}: no asset named {key}"
    if tuple(argv[1:]) in PROBES and remaining:
        text = _finds_code(tuple(argv), tuple(_code_target(remaining)), help_home)
        assert "Invalid set of CLI arguments" not in text, (
            f"{where}: from a fresh shell it finds no definitions (add -m pipelines.definitions):\n{text[-800:]}"
        )
    if argv[1:3] == ["scaffold", "defs"] and remaining and not PLACEHOLDER.search(remaining[0]):
        assert f'"{remaining[0]}"' in _component_types(help_home), (
            f"{where}: no component type {remaining[0]}"
        )
    if " ".join([program, *rest]) in RUN:
        done = run([*base, *rest], tmp_path / "lakerelay", timeout=600)
        assert done.returncode == 0, (
            f"{where} failed (exit {done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        )


def test_dagster_job_execute_runs_a_documented_job(tmp_path: Path) -> None:
    """operating.md prints `dagster job execute -m pipelines.definitions -j <job>` for CI: with the
    ingest job over an empty landing zone it runs, quickly, from a fresh shell."""
    [printed] = [
        c for c in COMMANDS if c.text.startswith("dagster job execute -m pipelines.definitions -j <job>")
    ]
    argv = [str(BIN / "dagster"), *_program_words(printed.text)[1:]]
    argv[argv.index("<job>")] = "ingest_events"
    done = run(argv, tmp_path / "lakerelay", timeout=600)
    assert done.returncode == 0, (
        f"{printed.source}: {' '.join(argv)}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    )
