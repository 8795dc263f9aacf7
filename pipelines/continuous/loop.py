"""The continuous run's loop: wait for a landing, ingest a micro-batch, post it to every sink, settle.

Each step is the triggered runs' own: ``ingest`` is ``ingest_feed`` (ledger, application transaction:
exactly once), ``post`` is ``RoutePosting`` (each route under its held lease: fence, groups, dead
letters). The loop adds only when to call them: at the start (whatever landed while no run was up),
when the watcher says files may have landed, while a backlog is left, and after a failure with
backoff (1 s doubling up to ``retry_max_s``), so a sink that is down heals without new data and without
the run failing. ``stop`` is checked between micro-batches: the one in flight always finishes.
"""

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from pipelines.continuous.posting import SinkOutcome
from pipelines.continuous.report import CoalescedReport
from pipelines.continuous.watchers import Watcher
from pipelines.ingest.context import IngestReport

# How long one wait on the watcher lasts at most: the loop sees a stop request and a due report
# within it, and sleeps otherwise (an idle run wakes about once a second).
WAKE_EVERY_S = 1.0
RETRY_FIRST_S = 1.0
# While a post is in flight, how often the loop looks whether it ended (cheap waits only).
IN_FLIGHT_CHECK_S = 0.02


@dataclass
class LoopSteps:
    ingest: Callable[[], IngestReport]
    post: Callable[[], dict[str, SinkOutcome]]
    max_batches: int  # per ingest call: more committed means a backlog is left
    settle_s: float = 0.0  # the feed's settle_time: when to look again at files held back by it


def backoff_s(failures: int, first_s: float, max_s: float) -> float:
    return min(max_s, first_s * 2 ** max(0, failures - 1))


@dataclass
class _Pending:
    """Ingested records not yet covered by a post started after them: what the next post settles."""

    number: int  # the first micro-batch of them
    discovered_at: float  # wall time its ingest started
    started: float  # monotonic time its ingest started
    ingest_s: float = 0.0
    rows: int = 0
    files: int = 0
    woken_s: float | None = None  # how long before the ingest the watcher saw the first landing


def run_loop(
    steps: LoopSteps,
    watcher: Watcher,
    report: CoalescedReport,
    stop: threading.Event,
    emit: Callable[[list], None],
    log: logging.Logger | logging.LoggerAdapter,
    retry_max_s: float = 60.0,
    clock: Callable[[], float] = time.monotonic,
    wall: Callable[[], float] = time.time,
) -> int:
    """Loop until ``stop`` is set, finishing the micro-batch in flight; the micro-batches done.

    With a watcher whose wait is cheap (``cheap_wait``: the folder watcher's is an in-process event),
    the next micro-batch is ingested while the current one is posted: one post in flight at a time,
    started as soon as the one before it ends, so a file that lands during a post waits for that post
    only, not for its own ingest after it too. Other watchers (an SQS long poll, a listing) would be
    asked many times a second while a post runs, so they ingest and post in turn. Ingest runs beside a
    post safely: a post plans from one Delta version and the fenced progress, an ingest commits the
    next version.
    """
    overlap = bool(getattr(watcher, "cheap_wait", False))
    due = True  # a first pass at the start
    retry_at: float | None = None
    failures = 0
    done = 0
    pending: _Pending | None = None  # ingested, to be posted
    in_flight: Future | None = None
    posting: _Pending | None = None  # what the post in flight covers
    with ThreadPoolExecutor(1, thread_name_prefix="continuous-post-all") as poster:
        while True:
            if in_flight is not None and (in_flight.done() or not overlap or stop.is_set()):
                failed = _finish(report, in_flight.result(), posting, clock, log)
                in_flight, posting = None, None
                if failed:
                    failures += 1
                    retry_at = clock() + backoff_s(failures, RETRY_FIRST_S, retry_max_s)
                else:
                    failures = 0
            if in_flight is None and pending is not None:
                in_flight, posting, pending = poster.submit(steps.post), pending, None
                continue
            if stop.is_set():
                if in_flight is None:
                    break
                continue  # the post in flight is waited for above
            if not due:
                timeout = (
                    WAKE_EVERY_S if retry_at is None else max(0.0, min(WAKE_EVERY_S, retry_at - clock()))
                )
                if in_flight is not None:
                    timeout = min(timeout, IN_FLIGHT_CHECK_S)  # notice its end within this
                due = watcher.wait(timeout) or (retry_at is not None and clock() >= retry_at)
                if not due:
                    _report_if_due(report, emit)
                    continue
            due, retry_at = False, None
            discovered_at, started = wall(), clock()
            woken_at = getattr(watcher, "woken_at", None)
            try:
                ingested = steps.ingest()
            except Exception as exc:
                failures += 1
                retry_at = clock() + backoff_s(failures, RETRY_FIRST_S, retry_max_s)
                log.error(
                    f"continuous ingest failed ({type(exc).__name__}: {exc}); retrying in "
                    f"{retry_at - clock():.0f}s"
                )
                continue
            ingest_s = clock() - started
            report.ingested(ingested.rows, ingested.files, ingested.delta_version, discovered_at)
            # While a post is in flight its sinks show the records it is posting as lag: only new
            # batches call for another post then; otherwise a sink behind (or failed) does too.
            behind = in_flight is None and any(
                tally.lag_records or tally.last_error for tally in report.sinks.values()
            )
            if ingested.batches or ingested.replayed_batches or behind or done == 0:
                if pending is None:
                    woken_s = discovered_at - woken_at if woken_at else None
                    pending = _Pending(done, discovered_at, started, woken_s=woken_s)
                pending.ingest_s += ingest_s
                pending.rows += ingested.rows
                pending.files += ingested.files
            done += 1
            due = len(ingested.batches) >= steps.max_batches  # a backlog is left: go on at once
            if ingested.unsettled_files and retry_at is None:
                # Files still inside the feed's settle_time: no event will come for them, look again then.
                retry_at = clock() + steps.settle_s
            _report_if_due(report, emit)
    emit(report.events())  # the last window, whatever its length
    return done


def _finish(
    report: CoalescedReport,
    outcomes: dict[str, SinkOutcome],
    covered: _Pending | None,
    clock: Callable[[], float],
    log: logging.Logger | logging.LoggerAdapter,
) -> list[str]:
    """Settle a post's outcomes into the report and time the micro-batch it covered; the failed sinks."""
    failed = _settle(report, outcomes, log)
    if covered is not None and covered.rows:
        post_s = {k: o.seconds for k, o in outcomes.items()}
        whole_s = clock() - covered.started
        report.timed(covered.ingest_s, whole_s, post_s)
        log.info(
            f"micro-batch {covered.number}: "
            + (f"woken {covered.woken_s:.3f}s before it started, " if covered.woken_s is not None else "")
            + f"ingest {covered.ingest_s:.3f}s ({covered.rows} rows, {covered.files} files), post "
            + ", ".join(f"{k} {s:.3f}s" for k, s in post_s.items())
            + f", whole {whole_s:.3f}s"
        )
    return failed


def _settle(report: CoalescedReport, outcomes: dict[str, SinkOutcome], log) -> list[str]:
    failed = []
    for key, outcome in outcomes.items():
        for metadata in outcome.posted:
            report.posted(key, metadata)
        if outcome.error is None:
            report.caught_up(key)
        else:
            failed.append(key)
            report.failed(key, f"{type(outcome.error).__name__}: {outcome.error}")
            log.warning(
                f"continuous post to {key} failed, retried with backoff: {report.sinks[key].last_error}"
            )
    return failed


def _report_if_due(report: CoalescedReport, emit: Callable[[list], None]) -> None:
    if report.due():
        emit(report.events())
