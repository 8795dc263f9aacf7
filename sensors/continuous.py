"""The keeper sensor: exactly one continuous run per feed, alive, on the current code.

Each tick looks up the feed's continuous runs (tag ``lakerelay/continuous``) in the instance:

- one is queued or running with a fresh heartbeat: nothing to do (its pool keeps a second one queued,
  and the lease keeps two from posting the same batches in any case);
- it runs an older code version: it is terminated (it finishes its micro-batch), then replaced;
- it is STARTED but its heartbeat is older than ``stale_after_s`` (the process was killed: nothing
  marks such a run ended, and it would hold its pool forever): it is marked failed, as Dagster's run
  monitoring would, and replaced;
- none: a new one is requested, after a backoff (15 s doubling up to 15 min, the table sensor's) when
  the last one failed or was canceled, at once when it was replaced for a new code version. A run that
  lived longer than the longest backoff starts the count of failures in a row anew.
"""

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import dagster as dg

from resources.lake import LakeResource
from resources.run_tags import CODE_VERSION_TAG, CONTINUOUS_TAG, FEED_TAG, REPLACED_TAG
from sensors.table import (
    BACKOFF_FIRST_S,
    BACKOFF_MAX_S,
    REQUEST_GRACE_S,
    UNFINISHED,
    backoff_s,
    cursor_fields,
    cursor_text,
)

HEARTBEAT_EVERY_S = 10.0
STALE_AFTER_S = 90.0


def write_heartbeat(lake: LakeResource, feed_name: str, run_id: str, now: float, ready: bool = False) -> None:
    """The continuous run says it is alive (a small state file, every ``HEARTBEAT_EVERY_S``), and
    whether it is waiting for files yet (``ready``: Spark warmed up, the watcher started)."""
    lake.write_state({"run_id": run_id, "at": now, "ready": ready}, "continuous", f"{feed_name}.json")


def read_heartbeat(lake: LakeResource, feed_name: str) -> dict | None:
    return lake.read_state("continuous", f"{feed_name}.json")


@dataclass
class KeeperCursor:
    requests: int = 0  # how many runs the keeper requested (the run key's number)
    run_key: str = ""
    requested_at: float = 0.0
    failures: int = 0  # unsuccessful runs in a row
    retry_at: float = 0.0
    seen_end: str = ""  # the ended run the backoff was counted for

    @classmethod
    def parse(cls, text: str | None) -> "KeeperCursor":
        return cls(**cursor_fields(text)) if text else cls()

    def dump(self) -> str:
        return cursor_text(asdict(self))


@dataclass(frozen=True)
class _Keeper:
    """What a keeper's tick knows of its feed: the code version to run and the backoff."""

    feed_name: str
    code_version: str
    backoff_first_s: float
    backoff_max_s: float
    stale_after_s: float

    def backoff_s(self, failures: int) -> float:
        return backoff_s(failures, False, self.backoff_first_s, self.backoff_max_s)


def build_keeper_sensor(
    feed_name: str,
    job_name: str,
    code_version: str,
    minimum_interval_seconds: int = 30,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.STOPPED,
    backoff_first_s: float = BACKOFF_FIRST_S,
    backoff_max_s: float = BACKOFF_MAX_S,
    stale_after_s: float = STALE_AFTER_S,
    clock: Callable[[], float] = time.time,
) -> dg.SensorDefinition:
    """Keeps one run of ``job_name`` (the continuous job of ``feed_name``) alive on ``code_version``.
    ``clock`` gives epoch seconds (tests move it instead of sleeping)."""
    keeps = _Keeper(feed_name, code_version, backoff_first_s, backoff_max_s, stale_after_s)

    @dg.sensor(
        name=f"{feed_name}_continuous_keeper",
        job_name=job_name,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        description=(
            f"Keeps one continuous run of feed {feed_name!r} alive: restarts it with backoff after a crash, "
            "a kill or a termination, and on a new code version. Stop this sensor to stop the feed."
        ),
    )
    def keeper(context: dg.SensorEvaluationContext, lake: LakeResource) -> dg.SensorResult | dg.SkipReason:
        now = clock()
        cursor = KeeperCursor.parse(context.cursor)
        records = context.instance.get_run_records(dg.RunsFilter(tags={CONTINUOUS_TAG: feed_name}), limit=20)
        live, marked = _live_runs(context, keeps, lake, records, cursor, now)
        if live:
            return _keep(context.instance, keeps, live[0], records, cursor, now)
        if cursor.run_key and now - cursor.requested_at < REQUEST_GRACE_S:
            requested = context.instance.get_run_records(
                dg.RunsFilter(tags={"dagster/run_key": cursor.run_key}), limit=1
            )
            if not requested:  # the daemon creates the run right after the tick that asked for it
                return dg.SkipReason(f"run {cursor.run_key} was requested")
        if not marked:  # a run marked failed this tick had its backoff counted then
            _count_ended_run(context, keeps, records, cursor, now)
        if now < cursor.retry_at:
            return dg.SensorResult(
                skip_reason=f"restarting the continuous run of feed {feed_name} in {cursor.retry_at - now:.0f}s",
                cursor=cursor.dump(),
            )
        return _request_run(keeps, cursor, now)

    return keeper


def _live_runs(
    context: dg.SensorEvaluationContext,
    keeps: _Keeper,
    lake: LakeResource,
    records: Sequence[dg.RunRecord],
    cursor: KeeperCursor,
    now: float,
) -> tuple[list[dg.DagsterRun], bool]:
    """The feed's unfinished runs that still beat, and whether one that stopped beating was marked
    failed (its failure counted on ``cursor``, its backoff from now)."""
    live, marked = [], False
    for record in records:
        run = record.dagster_run
        if run.status not in UNFINISHED:
            continue
        if run.status == dg.DagsterRunStatus.STARTED and _stale(
            record, lake, keeps.feed_name, now, keeps.stale_after_s
        ):
            context.instance.report_run_failed(
                run,
                f"no heartbeat from the continuous run for {keeps.stale_after_s:.0f}s: its process is gone",
            )
            cursor.failures += 1
            cursor.retry_at = now + keeps.backoff_s(cursor.failures)
            cursor.seen_end, marked = run.run_id, True  # its backoff is counted here, from now
            context.log.warning(
                f"run {run.run_id} of feed {keeps.feed_name} stopped beating: marked failed; a new one in "
                f"{cursor.retry_at - now:.0f}s"
            )
            continue
        live.append(run)
    return live, marked


def _keep(
    instance: dg.DagsterInstance,
    keeps: _Keeper,
    run: dg.DagsterRun,
    records: Sequence[dg.RunRecord],
    cursor: KeeperCursor,
    now: float,
) -> dg.SensorResult | dg.SkipReason:
    """A live run: terminated when it runs older code, else left alone (a long life forgets failures)."""
    if run.tags.get(CODE_VERSION_TAG) != keeps.code_version and run.status != dg.DagsterRunStatus.CANCELING:
        instance.add_run_tags(run.run_id, {REPLACED_TAG: keeps.code_version})
        instance.run_launcher.terminate(run.run_id)
        return dg.SkipReason(
            f"run {run.run_id} runs code version {run.tags.get(CODE_VERSION_TAG)}, not {keeps.code_version}: "
            "terminating it (it finishes its micro-batch); its replacement follows"
        )
    relaying = f"run {run.run_id} relays feed {keeps.feed_name} ({run.status.value})"
    started = next((r.start_time for r in records if r.dagster_run.run_id == run.run_id), None)
    if cursor.failures and started is not None and now - started > keeps.backoff_max_s:
        # It has lived longer than the longest backoff: a later crash starts the count anew.
        cursor.failures, cursor.retry_at = 0, 0.0
        return dg.SensorResult(skip_reason=relaying, cursor=cursor.dump())
    return dg.SkipReason(relaying)


def _count_ended_run(
    context: dg.SensorEvaluationContext,
    keeps: _Keeper,
    records: Sequence[dg.RunRecord],
    cursor: KeeperCursor,
    now: float,
) -> None:
    """The newest ended run, once: a failure or cancel (not a replacement) counts and backs off from its
    end; anything else ends the count of failures in a row."""
    ended = next((r for r in records if r.dagster_run.status not in UNFINISHED), None)
    if ended is None or ended.dagster_run.run_id == cursor.seen_end:
        return
    cursor.seen_end = ended.dagster_run.run_id
    run = ended.dagster_run
    if run.status in (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED) and not run.tags.get(
        REPLACED_TAG
    ):
        cursor.failures += 1
        cursor.retry_at = (ended.end_time or now) + keeps.backoff_s(cursor.failures)
        context.log.warning(
            f"continuous run {run.run_id} of feed {keeps.feed_name} ended {run.status.value.lower()} "
            f"({cursor.failures} in a row): a new one in {max(0.0, cursor.retry_at - now):.0f}s"
        )
    else:
        cursor.failures, cursor.retry_at = 0, 0.0


def _request_run(keeps: _Keeper, cursor: KeeperCursor, now: float) -> dg.SensorResult:
    cursor.requests += 1
    cursor.run_key = f"{keeps.feed_name}:continuous:{cursor.requests}"
    cursor.requested_at = now
    tags = {CONTINUOUS_TAG: keeps.feed_name, CODE_VERSION_TAG: keeps.code_version, FEED_TAG: keeps.feed_name}
    return dg.SensorResult(
        run_requests=[dg.RunRequest(run_key=cursor.run_key, tags=tags)], cursor=cursor.dump()
    )


def _stale(
    record: dg.RunRecord, lake: LakeResource, feed_name: str, now: float, stale_after_s: float
) -> bool:
    """A STARTED run without a heartbeat for ``stale_after_s`` (counted from its start before its first)."""
    beat = read_heartbeat(lake, feed_name) or {}
    started = record.start_time or record.create_timestamp.timestamp()
    last = float(beat["at"]) if beat.get("run_id") == record.dagster_run.run_id else started
    return now - max(last, started) > stale_after_s
