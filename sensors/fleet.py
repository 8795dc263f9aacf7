"""One sensor for many targets: the landing sensor of every feed, the table sensor of every route.

A sensor per feed and per route made the daemon's work grow with what is declared, not with what
happens: 50 feeds routed to 3 sinks were 200 sensors, each a gRPC call and a tick record per
interval, and the daemon fell behind its own schedule. Here a tick evaluates every target in turn
(each with its own cursor, stored under its key in the sensor's one JSON cursor), and returns all
their run requests at once, each for its target's job. One target that raises is logged and
skipped; the others are evaluated all the same.
"""

import json
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg

from resources.lake import LakeResource

Evaluation = dg.SensorResult | dg.SkipReason | dg.RunRequest | None


@dataclass(frozen=True)
class Target:
    """A feed's or route's evaluation: ``evaluate(context, lake, tick)`` reads ``context.cursor``."""

    key: str  # its cursor's key: a feed's name, a route's "<feed>/<route>"
    job_name: str
    evaluate: Callable[..., Evaluation]
    # The assets its runs materialize when ``job_name`` is a job shared by many targets (None: all
    # of the job's): one shared job instead of one per feed or route keeps the code location's
    # snapshot, which the daemon fetches again every minute, from growing with the targets.
    asset_selection: tuple[dg.AssetKey, ...] | None = None


@dataclass(frozen=True)
class TargetContext:
    """What a target's evaluation reads of the sensor context: its own cursor, the instance, the log."""

    cursor: str | None
    instance: dg.DagsterInstance
    log: Any


def fleet_cursor_text(cursors: dict[str, str]) -> str:
    """One JSON object, each target's cursor nested as JSON (not as an escaped string), so the UI shows
    it as a person reads it."""
    return json.dumps({key: _nested(text) for key, text in cursors.items()}, sort_keys=True)


def read_fleet_cursor(text: str | None) -> dict[str, str]:
    """Each target's cursor text, from ``fleet_cursor_text`` or the older form (cursors as strings)."""
    stored = json.loads(text) if text else {}
    return {
        key: value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        for key, value in stored.items()
    }


def _nested(text: str) -> Any:
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, dict) else text  # a bare number or key stays a string


def build_fleet_sensor(
    name: str,
    description: str,
    targets: Sequence[Target],
    jobs: Sequence[Any],
    minimum_interval_seconds: int,
    default_status: dg.DefaultSensorStatus,
    tick_memo: Callable[[], Any] = dict,
) -> dg.SensorDefinition:
    """A sensor evaluating every target at each tick; ``tick_memo()`` is handed to each evaluation
    (e.g. the table versions read this tick, shared by the routes of one feed)."""

    @dg.sensor(
        name=name,
        jobs=list(jobs),
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        description=description,
    )
    def fleet_sensor(context: dg.SensorEvaluationContext, lake: LakeResource) -> dg.SensorResult:
        cursors = read_fleet_cursor(context.cursor)
        memo = tick_memo()
        requests: list[dg.RunRequest] = []
        waiting: list[str] = []
        for target in targets:
            target_context = TargetContext(cursors.get(target.key), context.instance, context.log)
            try:
                result = target.evaluate(target_context, lake, memo)
            except Exception as exc:  # one feed's or route's trouble never stops the others' ticks
                context.log.warning(
                    f"{target.key}: this tick failed ({type(exc).__name__}: {exc}, raised at "
                    f"{_raised_at(exc)}); next tick retries"
                )
                waiting.append(f"{target.key}: tick failed")
                continue
            runs, cursor, skip = _parts(result)
            if cursor is not None:
                cursors[target.key] = cursor
            requests.extend(
                dg.RunRequest(
                    run_key=run.run_key,
                    tags=run.tags,
                    run_config=run.run_config,
                    job_name=target.job_name,
                    asset_selection=list(target.asset_selection) if target.asset_selection else None,
                )
                for run in runs
            )
            if skip and not _idle(skip):
                waiting.append(f"{target.key}: {skip}")
        idle = len(targets) - len(requests) - len(waiting)
        summary = "; ".join(waiting[:5]) + (f"; and {len(waiting) - 5} more" if len(waiting) > 5 else "")
        return dg.SensorResult(
            run_requests=requests,
            cursor=fleet_cursor_text(cursors),
            skip_reason=None if requests else (summary or f"nothing new for any of {idle} targets"),
        )

    return fleet_sensor


def single_target_sensor(
    name: str,
    description: str,
    job_name: str,
    evaluate: Callable[..., Evaluation],
    minimum_interval_seconds: int,
    default_status: dg.DefaultSensorStatus,
) -> dg.SensorDefinition:
    """A sensor of one target on its own, its cursor its own (tests, and one feed or route alone)."""

    @dg.sensor(
        name=name,
        job_name=job_name,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        description=description,
    )
    def sensor(context: dg.SensorEvaluationContext, lake: LakeResource) -> Evaluation:
        return evaluate(context, lake)

    return sensor


def _parts(result: Evaluation) -> tuple[list[dg.RunRequest], str | None, str | None]:
    """(run requests, new cursor or None to keep it, skip message) of one target's evaluation."""
    if result is None:
        return [], None, None
    if isinstance(result, dg.RunRequest):
        return [result], None, None
    if isinstance(result, dg.SkipReason):
        return [], None, result.skip_message
    skip = result.skip_reason.skip_message if result.skip_reason else None
    return list(result.run_requests or []), result.cursor, skip


def _idle(skip: str) -> bool:
    """Skip messages that only say nothing happened: left out of the tick's summary."""
    return skip.startswith("no files under") or "does not exist yet" in skip or "has settled" in skip


def _raised_at(exc: BaseException) -> str:
    """Where ``exc`` was raised (file:line in function): a bug caught at this boundary is found from
    the tick's log, not only a storage hiccup understood."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "an unknown place"
    return f"{Path(frames[-1].filename).name}:{frames[-1].lineno} in {frames[-1].name}"
