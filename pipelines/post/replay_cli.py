"""``lakerelay-dead-letters``: see and replay the records a sink rejected, from a shell.

    lakerelay-dead-letters list   [--sink NAME] [--table T]
    lakerelay-dead-letters replay --sink elasticsearch [--table events] [--batch N] [--error-type T]
                                  [--reason-contains S] [--since ISO] [--until ISO] [--limit N]
                                  [--include-replayed] [--dry-run]

The lake and the sinks are the deployment's (``LAKERELAY_HOME``, ``LAKERELAY_LAKE_URI``,
``LAKERELAY_ES_*``, ``LAKERELAY_HEC_*``, ...). ``replay`` executes the job
``replay_dead_letters_to_<sink>``, so the run is recorded in Dagster when ``DAGSTER_HOME`` is set.
Exit codes: 0 done, 1 letters rejected again or the replay failed, 2 bad input.
"""

import argparse
import os
import sys
from typing import Any

from dagster import DagsterInstance, DagsterInvalidConfigError

from pipelines import deployment
from pipelines.post.letters import REPLAY_TABLE, LetterFilter, parse_instant, summarize_dead_letters
from pipelines.post.replay_job import build_replay_job, replay_op_name


class BadInput(Exception):
    """Something the user typed cannot work: exit code 2."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lakerelay-dead-letters",
        description="List and replay dead letters (records a sink rejected).",
        epilog="Exit codes: 0 done, 1 letters rejected again or the replay failed, 2 bad input.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser(
        "list", help="dead letters per sink, source table, batch and error type (replayed / waiting)"
    )
    listing.add_argument("--sink", help="only this sink name")
    listing.add_argument("--table", help="only this source table")
    replay = commands.add_parser("replay", help="re-post chosen dead letters with their ids")
    replay.add_argument("--sink", required=True, help="sink key or name: elasticsearch, splunk, ...")
    replay.add_argument("--table", help="only letters of this source table (feed table)")
    replay.add_argument("--batch", type=int, help="only letters of the post run that settled batch N")
    replay.add_argument("--error-type", help="only letters with exactly this error type")
    replay.add_argument("--reason-contains", help="only letters whose reason contains this (any case)")
    replay.add_argument("--since", help="only letters dead-lettered at or after this ISO 8601 instant")
    replay.add_argument("--until", help="only letters dead-lettered before this ISO 8601 instant")
    replay.add_argument("--limit", type=_positive, help="at most N letters, oldest first")
    replay.add_argument(
        "--include-replayed", action="store_true", help="also letters an earlier replay got accepted"
    )
    replay.add_argument("--dry-run", action="store_true", help="show what would be replayed; post nothing")
    return parser


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _list(args: argparse.Namespace) -> int:
    rows = summarize_dead_letters(deployment.resolved(deployment.lake_resource()), args.sink, args.table)
    if not rows:
        print("no dead letters" + (f" for sink {args.sink}" if args.sink else ""))
        return 0
    header = ("sink", "source_table", "batch_to", "error_type", "letters", "replayed", "waiting")
    table = [header, *[tuple(str(row[c]) for c in header) for row in rows]]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for line in table:
        print(
            "  ".join(
                cell.ljust(w) if i < 4 else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(line, widths, strict=True))
            )
        )
    print(
        f"{sum(r['letters'] for r in rows)} letters, {sum(r['waiting'] for r in rows)} waiting for a replay "
        f"(replayed = accepted by a replay, recorded in table {REPLAY_TABLE})"
    )
    return 0


def _sink_key(wanted: str, sinks: dict[str, Any]) -> str:
    """The resource key of a sink given by key or by its ``sink_name``."""
    if wanted in sinks:
        return wanted
    for key, sink in sinks.items():
        if getattr(sink, "sink_name", None) == wanted:
            return key
    names = sorted({*sinks, *(getattr(s, "sink_name", k) for k, s in sinks.items())})
    raise BadInput(f"unknown sink {wanted!r}; known sinks: {', '.join(names)}")


def _replay_config(args: argparse.Namespace) -> dict[str, Any]:
    try:
        # The same checks the job makes, here too, so bad input is exit code 2, not a failed run.
        LetterFilter(
            sink="-",
            since=parse_instant(args.since, "--since"),
            until=parse_instant(args.until, "--until"),
            limit=args.limit,
        )
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    config = {
        "source_table": args.table,
        "batch_to": args.batch,
        "error_type": args.error_type,
        "reason_contains": args.reason_contains,
        "since": args.since,
        "until": args.until,
        "limit": args.limit,
        "include_replayed": args.include_replayed,
        "dry_run": args.dry_run,
    }
    return {k: v for k, v in config.items() if v is not None}


def _instance() -> DagsterInstance:
    """The persistent instance when DAGSTER_HOME is set (the run shows in the UI), else a throwaway one."""
    return DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else DagsterInstance.ephemeral()


def _replay(args: argparse.Namespace) -> int:
    from pipelines.definitions import deployment_topology  # the declared sinks; heavy, so only here

    sinks = deployment_topology().sinks
    key = _sink_key(args.sink, sinks)
    config = _replay_config(args)
    job = build_replay_job(key)
    run_config = {
        "ops": {replay_op_name(key): {"config": config}},
        # The op's own messages, without Dagster's step-by-step debug events.
        "loggers": {"console": {"config": {"log_level": "INFO"}}},
    }
    with _instance() as instance:
        try:
            result = job.execute_in_process(
                run_config=run_config,
                resources={"lake": deployment.lake_resource(), key: sinks[key]},
                instance=instance,
                raise_on_error=False,
            )
        except DagsterInvalidConfigError as exc:
            raise BadInput(str(exc)) from None
        if not result.success:
            failures = [e for e in result.all_events if e.is_step_failure or e.is_failure]
            messages = [_failure_message(e.step_failure_data) for e in failures if e.is_step_failure]
            print(f"replay to sink {args.sink} failed (run {result.run_id}):", file=sys.stderr)
            for message in messages or ["see the run's logs"]:
                print(f"  {message}", file=sys.stderr)
            return 1
        summary = result.output_for_node(replay_op_name(key))
    _print_summary(summary, result.run_id)
    return 1 if summary["rejected_again"] or summary["skipped_without_id"] else 0


def _print_summary(summary: dict[str, Any], run_id: str) -> None:
    print(f"dead letters of sink {summary['sink']} ({summary['filter']})")
    print(f"  matching                 {summary['matched']}")
    print(f"  skipped, replayed before {summary['skipped_already_replayed']}")
    print(f"  selected                 {summary['selected']}")
    if summary["dry_run"]:
        print("dry run: nothing posted, nothing recorded. Would replay:")
        for row in summary["letters"]:
            print(
                f"  {row['source_table']} batch {row['batch_to']} record {row['record_id']!r} "
                f"({row['dead_lettered_at']}): {row['status']} {row['error_type']}: {row['reason'][:120]}"
            )
        if summary["selected"] > len(summary["letters"]):
            print(f"  ... and {summary['selected'] - len(summary['letters'])} more")
        return
    if not summary["selected"]:
        print("nothing to replay")
        return
    print(f"  accepted                 {summary['accepted']}")
    print(f"  rejected again           {summary['rejected_again']}")
    if summary["skipped_without_id"]:
        print(f"  not posted, no record id {summary['skipped_without_id']}")
    print(f"replay {summary['replay_id']} (Dagster run {run_id}) recorded in table {REPLAY_TABLE}")
    for row in summary["rejections"]:
        print(
            f"  rejected again: record {row['record_id']!r}: {row['status']} {row['error_type']}: "
            f"{(row['reason'] or '')[:200]}"
        )
    if summary["rejected_again"]:
        print("letters rejected again stay eligible: fix the cause and replay them again")


def _failure_message(data: Any) -> str:
    """A failed step's own words: a ``dg.Failure``'s description, else the error's message."""
    user = getattr(data, "user_failure_data", None)
    if user is not None and user.description:
        return user.description.strip()
    error = getattr(data, "error", None)
    return error.message.strip() if error is not None else "see the run's logs"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _list(args) if args.command == "list" else _replay(args)
    except BadInput as exc:
        print(f"lakerelay-dead-letters: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # a bad environment setting (deployment reports which one)
        print(f"lakerelay-dead-letters: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
