"""The table sensor: keeps a sink caught up with a feed's Delta table, and heals it after failures.

Each tick compares the table's version with the sink's settled progress. When the sink is behind and
no post of this (sink, feed) is in flight, it requests one — also when no new data arrived, because
the last run failed: a failed post is requested again after a bounded exponential backoff
(15 s doubling up to 15 min), so a sink that comes back catches up with no one acting. A run that
failed on something a retry cannot fix (credentials, TLS, a URL; the post op tags it) waits the
longest backoff between tries, so it never becomes a retry storm, and the tick says why.
"""

import datetime as dt
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import dagster as dg
from deltalake.exceptions import TableNotFoundError

from resources.lake import LakeResource
from resources.run_tags import DELTA_VERSION_TAG, FEED_TAG, NEEDS_FIX, RELAY_TAG, ROUTE_TAG, SINK_TAG
from sensors.fleet import single_target_sensor

BACKOFF_FIRST_S = 15.0
BACKOFF_MAX_S = 900.0
REQUEST_GRACE_S = 60.0  # a requested run that is not in the instance after this was lost or deleted
UNFINISHED = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


def cursor_text(fields: dict[str, Any]) -> str:
    """A cursor as the UI shows it: JSON, its ``*_at`` instants in UTC (ISO 8601), not epochs."""
    shown = {
        key: _instant_text(value) if key.endswith("_at") and isinstance(value, int | float) else value
        for key, value in fields.items()
    }
    return json.dumps(shown, sort_keys=True)


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _instant_text(epoch_s: float) -> str | None:
    # Whole microseconds, rounded down: read back, an instant is never later than the one written, so a
    # retry is never postponed by the text form.
    return (
        (_EPOCH + dt.timedelta(microseconds=math.floor(epoch_s * 1_000_000))).isoformat() if epoch_s else None
    )


def cursor_fields(text: str) -> dict[str, Any]:
    """``cursor_text``'s fields back, with its instants as epoch seconds (older cursors wrote epochs)."""
    fields = json.loads(text)
    for key, value in fields.items():
        if key.endswith("_at"):
            fields[key] = (
                (dt.datetime.fromisoformat(value) - _EPOCH) / dt.timedelta(seconds=1)
                if isinstance(value, str)
                else (value or 0.0)
            )
    return fields


@dataclass(kw_only=True)
class RetryCursor:
    """The part of a healing sensor's cursor that says what it last asked for and how often that went
    wrong in a row (the table and landing sensors' cursors extend it with what the request was for)."""

    run_key: str = ""
    failures: int = 0
    retry_at: float = 0.0  # epoch seconds; no new request before this after a failure
    requested_at: float = 0.0

    def dump(self) -> str:
        return cursor_text(asdict(self))


@dataclass(kw_only=True)
class TableSensorCursor(RetryCursor):
    """What the table sensor last asked for, and how often that has failed in a row."""

    version: int = -1  # the table version the last request was for

    @classmethod
    def parse(cls, text: str | None) -> "TableSensorCursor":
        if not text:
            return cls()
        if text.lstrip("-").isdigit():  # the cursor before self-healing: just the requested version
            return cls(version=int(text))
        return cls(**cursor_fields(text))


def backoff_s(
    failures: int, needs_fix: bool, first_s: float = BACKOFF_FIRST_S, max_s: float = BACKOFF_MAX_S
) -> float:
    """Seconds to wait after ``failures`` failed runs in a row (the longest for a configuration error)."""
    if needs_fix:
        return max_s
    return min(max_s, first_s * 2.0 ** min(max(0, failures - 1), 60))


def schedule_retry(
    cursor: RetryCursor,
    now: float,
    run: dg.DagsterRun | None,
    first_s: float = BACKOFF_FIRST_S,
    max_s: float = BACKOFF_MAX_S,
) -> str:
    """Count one more unsuccessful ``run`` on ``cursor`` and set when to ask again (the longest wait when
    the run was tagged as needing a person); returns that tag's reason, "" when none.

    The one backoff rule of the sensors that heal (this one and the landing sensor).
    """
    needs_fix = run.tags.get(NEEDS_FIX, "") if run is not None else ""
    cursor.failures += 1
    cursor.retry_at = now + backoff_s(cursor.failures, bool(needs_fix), first_s, max_s)
    return needs_fix


def table_version(
    lake: LakeResource, table_name: str, versions: dict[str, int | None] | None = None
) -> int | None:
    """The latest version of ``table_name``, None when it does not exist; read once per ``versions``
    (a sensor tick's memo: the routes of one feed share its table)."""
    if versions is not None and table_name in versions:
        return versions[table_name]
    try:
        version: int | None = lake.table(table_name).version()
    except TableNotFoundError:
        version = None
    if versions is not None:
        versions[table_name] = version
    return version


@dataclass(frozen=True)
class _Route:
    """What a table sensor's tick knows of its route: names, job and backoff."""

    feed_name: str
    sink_key: str
    sink_name: str
    job_name: str
    backoff_first_s: float
    backoff_max_s: float


def build_table_evaluation(
    feed_name: str,
    table_name: str,
    sink_key: str,
    sink_name: str,
    job_name: str,
    settled_version: Callable[[LakeResource], int],
    backoff_first_s: float = BACKOFF_FIRST_S,
    backoff_max_s: float = BACKOFF_MAX_S,
    clock: Callable[[], float] = time.time,
) -> Callable[..., dg.SensorResult | dg.SkipReason]:
    """One tick of the table sensor of a route: requests job ``job_name`` while Delta table
    ``table_name`` of feed ``feed_name`` is ahead of ``settled_version(lake)``, the last version route
    ``sink_name`` (a route to sink ``sink_key``) settled (-1: none). It reads ``cursor``, ``instance``
    and ``log`` of the context it is given (a sensor's, or one target's of ``sensors/fleet.py``).
    ``clock`` gives epoch seconds (the backoff's and the request grace's), so tests need not sleep."""
    route = _Route(feed_name, sink_key, sink_name, job_name, backoff_first_s, backoff_max_s)

    def table_sensor(
        context: dg.SensorEvaluationContext, lake: LakeResource, versions: dict[str, int | None] | None = None
    ) -> dg.SensorResult | dg.SkipReason:
        version = table_version(lake, table_name, versions)
        if version is None:
            return dg.SkipReason(f"table {table_name} does not exist yet")
        cursor = TableSensorCursor.parse(context.cursor)
        if version <= settled_version(lake):
            return _settled(route, cursor, version)
        in_flight = _post_in_flight(context.instance, route)
        if in_flight is not None:
            return dg.SkipReason(
                f"run {in_flight.run_id} is posting to {sink_name}; it settles what it planned"
            )
        now = clock()
        if cursor.run_key:
            waiting = _follow_up_last_request(context, route, cursor, version, now)
            if waiting is not None:
                return waiting
        return _request_post(route, cursor, version, now)

    return table_sensor


def _settled(route: _Route, cursor: TableSensorCursor, version: int) -> dg.SensorResult | dg.SkipReason:
    """The sink has everything: nothing to request, and a count of failures to forget."""
    settled = f"sink {route.sink_name} has settled version {version}"
    if cursor.failures:
        return dg.SensorResult(skip_reason=settled, cursor=TableSensorCursor(version=cursor.version).dump())
    return dg.SkipReason(settled)


def _post_in_flight(instance: dg.DagsterInstance, route: _Route) -> dg.DagsterRun | None:
    """A post of this route, or a relay run of the feed (it posts on every route of the feed)."""
    in_flight = instance.get_runs(
        dg.RunsFilter(tags={FEED_TAG: route.feed_name, ROUTE_TAG: route.sink_name}, statuses=UNFINISHED),
        limit=1,
    ) or instance.get_runs(dg.RunsFilter(tags={RELAY_TAG: route.feed_name}, statuses=UNFINISHED), limit=1)
    return in_flight[0] if in_flight else None


def _follow_up_last_request(
    context: dg.SensorEvaluationContext, route: _Route, cursor: TableSensorCursor, version: int, now: float
) -> dg.SensorResult | dg.SkipReason | None:
    """How the run the cursor requested went: a skip while it is not created yet or its retry is not
    due (counting the failure on ``cursor`` the first time), None when a new request may follow."""
    last = context.instance.get_runs(dg.RunsFilter(tags={"dagster/run_key": cursor.run_key}), limit=1)
    if not last and now - cursor.requested_at < REQUEST_GRACE_S:
        # The daemon creates the run right after the tick that asked for it.
        return dg.SkipReason(f"a run for version {cursor.version} was requested ({cursor.run_key})")
    ended_well = bool(last) and last[0].status == dg.DagsterRunStatus.SUCCESS
    if ended_well and version > cursor.version:
        cursor.failures, cursor.retry_at = 0, 0.0  # new commits after a good run
    elif cursor.retry_at == 0.0:
        # Failed, or ended well without settling this version (another writer held the sink): ask
        # again, after a backoff so that it is never a tight loop.
        _count_failure(context, route, cursor, last[0] if last else None, ended_well, now)
    if now < cursor.retry_at:
        return dg.SensorResult(
            skip_reason=f"retrying sink {route.sink_name} at version {version} in {cursor.retry_at - now:.0f}s "
            f"after {cursor.failures} unsuccessful run(s)",
            cursor=cursor.dump(),
        )
    return None


def _count_failure(
    context: dg.SensorEvaluationContext,
    route: _Route,
    cursor: TableSensorCursor,
    last: dg.DagsterRun | None,
    ended_well: bool,
    now: float,
) -> None:
    needs_fix = schedule_retry(cursor, now, last, route.backoff_first_s, route.backoff_max_s)
    context.log.warning(
        f"run {last.run_id if last is not None else cursor.run_key} of {route.job_name} "
        f"{'ended' if ended_well else 'failed'} with sink {route.sink_name} still behind "
        f"({cursor.failures} in a row{'; it needs a fix: ' + needs_fix if needs_fix else ''}); "
        f"requesting it again in {cursor.retry_at - now:.0f}s"
    )


def _request_post(
    route: _Route, cursor: TableSensorCursor, version: int, now: float
) -> dg.SensorResult | dg.SkipReason:
    """A run of the route's post for ``version`` (its run key names the attempt after failures)."""
    attempt = cursor.failures
    run_key = f"{route.sink_name}:{route.feed_name}:v{version}" + (f":retry{attempt}" if attempt else "")
    if run_key == cursor.run_key:
        return dg.SkipReason(f"a run for version {version} was already requested ({run_key})")
    next_cursor = TableSensorCursor(
        version=version, run_key=run_key, failures=cursor.failures, requested_at=now
    )
    tags = {
        DELTA_VERSION_TAG: str(version),
        FEED_TAG: route.feed_name,
        SINK_TAG: route.sink_key,
        ROUTE_TAG: route.sink_name,
    }
    return dg.SensorResult(
        run_requests=[dg.RunRequest(run_key=run_key, tags=tags)], cursor=next_cursor.dump()
    )


def build_table_sensor(
    feed_name: str,
    table_name: str,
    sink_key: str,
    sink_name: str,
    job_name: str,
    settled_version: Callable[[LakeResource], int],
    minimum_interval_seconds: int = 30,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.STOPPED,
    backoff_first_s: float = BACKOFF_FIRST_S,
    backoff_max_s: float = BACKOFF_MAX_S,
    clock: Callable[[], float] = time.time,
) -> dg.SensorDefinition:
    """The table sensor of one route, on its own (``build_table_evaluation`` says what a tick does)."""
    evaluate = build_table_evaluation(
        feed_name,
        table_name,
        sink_key,
        sink_name,
        job_name,
        settled_version,
        backoff_first_s,
        backoff_max_s,
        clock,
    )

    return single_target_sensor(
        f"{feed_name}_to_{sink_name}_sensor",
        f"Requests job {job_name} when table {table_name!r} has commits route {sink_name!r} has not settled "
        "and no post is in flight; requests it again with backoff after a failed run.",
        job_name,
        evaluate,
        minimum_interval_seconds,
        default_status,
    )
