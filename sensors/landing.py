"""The landing sensor: requests an ingest run when files wait, and heals like the table sensors.

The ingest domain answers what waits (``files_waiting``, passed in): an incremental listing after the
ingest's own cursor, so a tick costs the files not yet ingested, not the whole landing zone. Names
that arrive out of order are picked up by the ingest's periodic full listing; the sensor requests a
run when that is due. It knows nothing of the cursor's storage or the feed's filters.

Healing: the sensor remembers the run it requested and looks at it on every tick, new files or not.
A run that failed, was canceled, or was dropped (requested but never created, deleted, or created and
never started) while files still wait is requested again after the table sensors' backoff
(``sensors.table.backoff_s``: 15 s doubling up to 15 min, the longest for a run only a person can
fix). Before this, a dropped run's files waited until some other file landed, possibly forever.
A periodic full listing (nothing waits after the cursor) has one run key per backfill interval: a
failed one is asked again at the next interval.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import dagster as dg

from resources.lake import LakeResource
from resources.run_tags import FEED_TAG, RELAY_TAG
from sensors.fleet import single_target_sensor
from sensors.table import (
    BACKOFF_FIRST_S,
    BACKOFF_MAX_S,
    REQUEST_GRACE_S,
    UNFINISHED,
    RetryCursor,
    cursor_fields,
    schedule_retry,
)

# Runs that have not listed the landing zone yet (queued behind a running one, or starting).
NOT_YET_STARTED = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
]
# A run still NOT_STARTED this long after it was created was dropped on its way to the queue (the
# daemon or a launch failed): neither the run coordinator nor run monitoring will ever move it.
NOT_STARTED_TIMEOUT_S = 600.0


class LandingBacklog(Protocol):
    """What the ingest domain says waits in a feed's landing zone (``pipelines.ingest.discovery``)."""

    @property
    def count(self) -> int: ...  # files the next ingest would take

    @property
    def last_path(self) -> str: ...  # the greatest of them

    @property
    def start_after(self) -> str: ...  # the ingest's listing cursor ("" before its first run)

    @property
    def root(self) -> str: ...

    @property
    def full_listing_due(self) -> bool: ...  # the ingest's full listing (out-of-order names) is due

    @property
    def backfill_interval_s(self) -> float: ...


@dataclass(kw_only=True)
class LandingSensorCursor(RetryCursor):
    """What the landing sensor last asked for, and how often that has gone wrong in a row."""

    backlog: str = ""  # what waited when the last run was requested

    @classmethod
    def parse(cls, text: str | None) -> "LandingSensorCursor":
        if not text:
            return cls()
        if not text.startswith("{"):  # the cursor before healing: the run key "<feed>:<backlog>"
            return cls(backlog=text.partition(":")[2], run_key=text)
        return cls(**cursor_fields(text))


def _backlog(waiting: LandingBacklog) -> str:
    """What waits, as a key that changes whenever a run would take something else ("": nothing)."""
    if waiting.count:
        # The cursor and the last path: a run that left a backlog (max_batches) moves the cursor.
        return f"{waiting.start_after}:{waiting.last_path}:{waiting.count}"
    return ""


@dataclass(frozen=True)
class _Feed:
    """What a landing sensor's tick knows of its feed: its name, job and backoff."""

    name: str
    job_name: str
    backoff_first_s: float
    backoff_max_s: float


def build_landing_evaluation(
    feed_name: str,
    job_name: str,
    files_waiting: Callable[[LakeResource], LandingBacklog],
    backoff_first_s: float = BACKOFF_FIRST_S,
    backoff_max_s: float = BACKOFF_MAX_S,
    clock: Callable[[], float] = time.time,
) -> Callable[..., dg.SensorResult | dg.SkipReason | dg.RunRequest]:
    """One tick of the landing sensor of a feed: requests job ``job_name`` (in this code location)
    for feed ``feed_name`` when ``files_waiting`` reports files the ingest has not taken, or a full
    listing that is due, and again with backoff while they still wait after the run it requested
    failed or was dropped. It reads ``cursor``, ``instance`` and ``log`` of the context it is given
    (a sensor's, or one target's of ``sensors/fleet.py``). ``clock`` gives epoch seconds (tests move
    it instead of sleeping)."""
    feed = _Feed(feed_name, job_name, backoff_first_s, backoff_max_s)

    def landing_sensor(
        context: dg.SensorEvaluationContext,
        lake: LakeResource,
        tick_memo: object = None,  # unused: one listing per feed
    ) -> dg.SensorResult | dg.SkipReason | dg.RunRequest:
        now = clock()
        waiting = files_waiting(lake)
        cursor = LandingSensorCursor.parse(context.cursor)
        backlog = _backlog(waiting)
        if not backlog:
            return _nothing_waits(feed, waiting, cursor, now)
        if cursor.run_key:
            held = _follow_up_last_request(context, feed, cursor, backlog, now)
            if held is not None:
                return held
        queued = _run_about_to_start(context.instance, feed, now)
        if queued is not None:
            # It lists the landing zone when it starts: these files are its, no second run needed.
            return dg.SkipReason(f"run {queued.run_id} is about to start and will take these files")
        return _request_ingest(feed, cursor, backlog, waiting.count, now)

    return landing_sensor


def _relay_tags(feed: _Feed) -> dict[str, str]:
    return {FEED_TAG: feed.name, RELAY_TAG: feed.name}


def _nothing_waits(
    feed: _Feed, waiting: LandingBacklog, cursor: LandingSensorCursor, now: float
) -> dg.SensorResult | dg.SkipReason | dg.RunRequest:
    """No new files: the full listing's run when it is due, else a skip; a count of failures is forgotten."""
    forget = cursor.failures or cursor.retry_at  # nothing left for a retry to do
    cursor.failures, cursor.retry_at = 0, 0.0
    if waiting.full_listing_due:
        # The ingest run does the full listing that finds out-of-order and overwritten files.
        # One run key per interval: one that fails is asked again at the next interval.
        bucket = int(now // max(1.0, waiting.backfill_interval_s))
        backfill = dg.RunRequest(run_key=f"{feed.name}:backfill:{bucket}", tags=_relay_tags(feed))
        return dg.SensorResult(run_requests=[backfill], cursor=cursor.dump()) if forget else backfill
    idle = f"no files under {waiting.root} after {waiting.start_after or 'the start'}"
    return dg.SensorResult(skip_reason=idle, cursor=cursor.dump()) if forget else dg.SkipReason(idle)


def _follow_up_last_request(
    context: dg.SensorEvaluationContext, feed: _Feed, cursor: LandingSensorCursor, backlog: str, now: float
) -> dg.SensorResult | dg.SkipReason | None:
    """How the run the cursor requested went: a skip while it may still take the files or its retry
    is not due (counting the failure on ``cursor`` the first time), None when a new request may follow."""
    records = context.instance.get_run_records(
        dg.RunsFilter(tags={"dagster/run_key": cursor.run_key}), limit=1
    )
    record = records[0] if records else None
    run = record.dagster_run if record is not None else None
    if run is None and now - cursor.requested_at < REQUEST_GRACE_S:
        # The daemon creates the run right after the tick that asked for it.
        return dg.SkipReason(f"a run for these files was requested ({cursor.run_key})")
    problem = _problem(record, now, backlog == cursor.backlog)
    if run is not None and problem is None and run.status in UNFINISHED and backlog == cursor.backlog:
        return dg.SkipReason(f"run {run.run_id} is taking these files ({run.status.value})")
    if problem is None and run is not None and run.status == dg.DagsterRunStatus.SUCCESS:
        cursor.failures, cursor.retry_at = 0, 0.0  # it took its files; these are new
    elif problem is not None and cursor.retry_at == 0.0:
        _count_failure(context, feed, cursor, run, problem, now)
    if now < cursor.retry_at:
        return dg.SensorResult(
            skip_reason=f"retrying the ingest of feed {feed.name} in {cursor.retry_at - now:.0f}s "
            f"after {cursor.failures} unsuccessful run(s)",
            cursor=cursor.dump(),
        )
    return None


def _count_failure(
    context: dg.SensorEvaluationContext,
    feed: _Feed,
    cursor: LandingSensorCursor,
    run: dg.DagsterRun | None,
    problem: str,
    now: float,
) -> None:
    needs_fix = schedule_retry(cursor, now, run, feed.backoff_first_s, feed.backoff_max_s)
    context.log.warning(
        f"{'run ' + run.run_id if run is not None else 'the run ' + cursor.run_key} of {feed.job_name} "
        f"{problem} while files of feed {feed.name} still wait ({cursor.failures} in a row"
        f"{'; it needs a fix: ' + needs_fix if needs_fix else ''}); requesting it again in "
        f"{cursor.retry_at - now:.0f}s"
    )


def _run_about_to_start(instance: dg.DagsterInstance, feed: _Feed, now: float) -> dg.DagsterRun | None:
    """A relay run of the feed that has not listed the landing zone yet (and was not dropped)."""
    records = instance.get_run_records(
        dg.RunsFilter(tags={RELAY_TAG: feed.name}, statuses=NOT_YET_STARTED), limit=5
    )
    return next((r.dagster_run for r in records if _problem(r, now, same_backlog=False) is None), None)


def _request_ingest(
    feed: _Feed, cursor: LandingSensorCursor, backlog: str, count: int, now: float
) -> dg.SensorResult | dg.SkipReason:
    """A run for what waits (its run key names the attempt after failures), unless already asked."""
    run_key = f"{feed.name}:{backlog}" + (f":retry{cursor.failures}" if cursor.failures else "")
    if run_key == cursor.run_key:
        return dg.SkipReason(f"{count} pending files already requested (run key {run_key})")
    next_cursor = LandingSensorCursor(
        backlog=backlog, run_key=run_key, failures=cursor.failures, requested_at=now
    )
    return dg.SensorResult(
        run_requests=[dg.RunRequest(run_key=run_key, tags=_relay_tags(feed))], cursor=next_cursor.dump()
    )


def build_landing_sensor(
    feed_name: str,
    job_name: str,
    files_waiting: Callable[[LakeResource], LandingBacklog],
    minimum_interval_seconds: int = 30,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.STOPPED,
    backoff_first_s: float = BACKOFF_FIRST_S,
    backoff_max_s: float = BACKOFF_MAX_S,
    clock: Callable[[], float] = time.time,
) -> dg.SensorDefinition:
    """The landing sensor of one feed, on its own (``build_landing_evaluation`` says what a tick does)."""
    evaluate = build_landing_evaluation(
        feed_name, job_name, files_waiting, backoff_first_s, backoff_max_s, clock
    )

    return single_target_sensor(
        f"{feed_name}_landing_sensor",
        f"Launches {job_name} (ingest feed {feed_name!r}, then post it on its routes) when new files land; "
        "launches it again with backoff after a failed, canceled or dropped run while its files still wait.",
        job_name,
        evaluate,
        minimum_interval_seconds,
        default_status,
    )


def _problem(record: dg.RunRecord | None, now: float, same_backlog: bool) -> str | None:
    """Why the requested run did not take its files, or None if it did or may still.

    ``record`` is None when the run was never created or was deleted. A run that ended well with
    the same files still waiting did not take them (they count as a failure, so the sensor backs off
    instead of asking every tick).
    """
    if record is None:
        return "was dropped (never created, or deleted)"
    status = record.dagster_run.status
    if (
        status == dg.DagsterRunStatus.NOT_STARTED
        and now - record.create_timestamp.timestamp() > NOT_STARTED_TIMEOUT_S
    ):
        return f"was dropped (not started {NOT_STARTED_TIMEOUT_S:.0f}s after it was created)"
    if status in (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED):
        return status.value.lower()
    if status == dg.DagsterRunStatus.SUCCESS and same_backlog:
        return "ended without taking them"
    return None
