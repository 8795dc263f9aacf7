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
from dataclasses import dataclass

from pipelines.continuous.posting import SinkOutcome
from pipelines.continuous.report import CoalescedReport
from pipelines.continuous.watchers import Watcher
from pipelines.ingest.context import IngestReport

# How long one wait on the watcher lasts at most: the loop sees a stop request and a due report
# within it, and sleeps otherwise (an idle run wakes about once a second).
WAKE_EVERY_S = 1.0
RETRY_FIRST_S = 1.0


@dataclass
class LoopSteps:
    ingest: Callable[[], IngestReport]
    post: Callable[[], dict[str, SinkOutcome]]
    max_batches: int  # per ingest call: more committed means a backlog is left
    settle_s: float = 0.0  # the feed's settle_time: when to look again at files held back by it


def backoff_s(failures: int, first_s: float, max_s: float) -> float:
    return min(max_s, first_s * 2 ** max(0, failures - 1))


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
    """Loop until ``stop`` is set, finishing the micro-batch in flight; the micro-batches done."""
    due = True  # a first pass at the start
    retry_at: float | None = None
    failures = 0
    done = 0
    while not stop.is_set():
        if not due:
            timeout = WAKE_EVERY_S if retry_at is None else max(0.0, min(WAKE_EVERY_S, retry_at - clock()))
            due = watcher.wait(timeout) or (retry_at is not None and clock() >= retry_at)
            if not due:
                _report_if_due(report, emit)
                continue
        due, retry_at = False, None
        discovered_at, started = wall(), clock()
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
        behind = [key for key, tally in report.sinks.items() if tally.lag_records or tally.last_error]
        if ingested.batches or ingested.replayed_batches or behind or done == 0:
            outcomes = steps.post()
            failed = _settle(report, outcomes, log)
            if ingested.rows:
                post_s = {k: o.seconds for k, o in outcomes.items()}
                report.timed(ingest_s, clock() - started, post_s)
                woken_at = getattr(watcher, "woken_at", None)
                log.info(
                    f"micro-batch {done}: "
                    + (f"woken {discovered_at - woken_at:.3f}s before it started, " if woken_at else "")
                    + f"ingest {ingest_s:.3f}s ({ingested.rows} rows, {ingested.files} files), post "
                    + ", ".join(f"{k} {s:.3f}s" for k, s in post_s.items())
                    + f", whole {clock() - started:.3f}s"
                )
            if failed:
                failures += 1
                retry_at = clock() + backoff_s(failures, RETRY_FIRST_S, retry_max_s)
            else:
                failures = 0
        done += 1
        due = len(ingested.batches) >= steps.max_batches  # a backlog is left: go on at once
        if ingested.unsettled_files and retry_at is None:
            # Files still inside the feed's settle_time: no event will come for them, look again then.
            retry_at = clock() + steps.settle_s
        _report_if_due(report, emit)
    emit(report.events())  # the last window, whatever its length
    return done


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
