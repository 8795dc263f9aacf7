"""Post one micro-batch on every route of a feed: each route a ``HeldRoute`` (its lease held for the
run's life, Spark made ready once), all routes at once, one thread each, threads kept for the run.

The steps are the triggered runs' own (``post_held``: plan from the fenced progress, groups, retries,
dead letters); each post's metadata goes to the coalesced report, its log lines through
``QuietContext`` (``quiet.py``) to the process log.
"""

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import dagster as dg
from pyspark.sql import SparkSession

from pipelines.continuous.held import HeldRoute
from pipelines.continuous.quiet import process_log
from pipelines.post.config import PostConfig
from pipelines.routes import RouteSpec
from resources.lake import LakeResource


@dataclass
class SinkOutcome:
    posted: list[dict] = field(default_factory=list)  # the metadata of each settled post
    error: BaseException | None = None
    seconds: float = 0.0  # wall time of this sink's post


class RoutePosting:
    """The feed's routes for one continuous run: call it to post a micro-batch, ``close`` at the end.

    A route that fails (its sink down, refusing, fenced out) keeps its progress where it was: the next
    call posts its backlog again, and the other routes are not held up.
    """

    def __init__(
        self,
        context: dg.OpExecutionContext,
        lake: LakeResource,
        routes: list[RouteSpec],
        spark_session: Callable[[], SparkSession],
        config: PostConfig,
    ) -> None:
        self.routes = {route.name: HeldRoute(route, context, lake, spark_session, config) for route in routes}
        self._pool = ThreadPoolExecutor(max(1, len(routes)), thread_name_prefix="continuous-post")

    def __call__(self) -> dict[str, SinkOutcome]:
        """Post what each route has not settled of its feed's table; one outcome per route, never raising."""
        futures = {name: self._pool.submit(_post_one, held) for name, held in self.routes.items()}
        return {name: future.result() for name, future in futures.items()}

    def close(self) -> None:
        """Release every route's lease (a clean stop: the next run need not wait for them to lapse)."""
        self._pool.shutdown(wait=True)
        for held in self.routes.values():
            held.close()


def _post_one(held: HeldRoute) -> SinkOutcome:
    outcome = SinkOutcome()
    started = time.perf_counter()
    try:
        held.post()
    except Exception as exc:  # dg.Failure and LeaseLost included: reported, retried by the loop
        outcome.error = exc
    outcome.seconds = time.perf_counter() - started
    outcome.posted = list(held.posted)
    process_log.info(
        "route %s: %.3fs; %s%s",
        held.route.name,
        outcome.seconds,
        _steps(started, held.marks, started + outcome.seconds),
        _inside_spark(outcome.posted),
    )
    return outcome


def _steps(started: float, marks: list[tuple[float, str]], ended: float) -> str:
    """The post's info lines as the seconds each step took before it was logged (see ``QuietLog``)."""
    parts, last = [], started
    for at, msg in marks:
        parts.append(f"{at - last:.3f}s→{msg[:40]!r}")
        last = at
    parts.append(f"{ended - last:.3f}s→end")
    return ", ".join(parts)


def _inside_spark(posted: list[dict]) -> str:
    """Where a post's Spark job spent its time, from its metadata: a poster task's wait for its first
    records (reading and enriching them) and the sink's answer time."""
    if not posted:
        return ""
    metadata = posted[-1]

    def value(key: str) -> object:
        item = metadata.get(key)
        return getattr(item, "value", item)

    return (
        f"; in Spark: {value('run_tasks')} task(s), first records after "
        f"{value('capacity_startup_s_per_task')}s, http p50 {value('http_latency_p50_ms')}ms"
    )
