"""Post one micro-batch on every route of a feed with the triggered runs' own ``run_post``: the same
lease, fence, groups, retries and dead letters, one route per thread (each holds its own lease).

``run_post`` reports through its op context (a materialization and a check evaluation per post,
several info lines). In the continuous run those go to ``QuietContext`` instead: materializations
are handed to the coalesced report, info lines go to the process log (the run's stderr), and only
warnings and errors reach Dagster's event log, so it does not grow with micro-batches.
"""

import logging
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
from pyspark.sql import SparkSession

from pipelines.post.config import PostConfig
from pipelines.post.job import route_sink
from pipelines.post.run import PostRun, run_post
from pipelines.routes import RouteSpec
from resources.lake import LakeResource

_process_log = logging.getLogger("lakerelay.continuous")


def log_to_stderr() -> None:
    """Send the process log's info lines, timestamped, to stderr: the run's compute log (once per process)."""
    if not _process_log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
        _process_log.addHandler(handler)
        _process_log.setLevel(logging.INFO)
        _process_log.propagate = False  # not twice, should the root logger have a handler


class QuietLog:
    """Info and debug to the process log; warnings and errors to Dagster's (the event log).

    With ``marks``, each info line is also kept with the time it was logged: ``run_post`` logs one at
    each step (lease taken, plan, groups submitted, accepted), which times its steps from outside.
    """

    def __init__(self, dagster_log: Any, marks: list[tuple[float, str]] | None = None) -> None:
        self.dagster_log = dagster_log
        self.marks = marks

    def debug(self, msg: object, *args: object, **kwargs: Any) -> None:
        _process_log.debug(msg, *args, **kwargs)

    def info(self, msg: object, *args: object, **kwargs: Any) -> None:
        if self.marks is not None:
            self.marks.append((time.perf_counter(), str(msg)))
        _process_log.info(msg, *args, **kwargs)

    def warning(self, msg: object, *args: object, **kwargs: Any) -> None:
        self.dagster_log.warning(msg, *args, **kwargs)

    def error(self, msg: object, *args: object, **kwargs: Any) -> None:
        self.dagster_log.error(msg, *args, **kwargs)

    def exception(self, msg: object, *args: object, **kwargs: Any) -> None:
        self.dagster_log.exception(msg, *args, **kwargs)

    def critical(self, msg: object, *args: object, **kwargs: Any) -> None:
        self.dagster_log.critical(msg, *args, **kwargs)


class QuietContext:
    """The op context as one sink's ``run_post`` sees it in the continuous run (see the module doc)."""

    def __init__(
        self,
        context: dg.OpExecutionContext,
        on_event: Callable[[object], None],
        marks: list[tuple[float, str]] | None = None,
    ) -> None:
        self._context = context
        self._on_event = on_event
        self.log = QuietLog(context.log, marks)

    def log_event(self, event: object) -> None:
        self._on_event(event)

    def __getattr__(self, name: str) -> Any:  # run_id, instance, resources: the op's own
        return getattr(self._context, name)


@dataclass
class SinkOutcome:
    posted: list[dict] = field(default_factory=list)  # the metadata of each settled post
    error: BaseException | None = None
    seconds: float = 0.0  # wall time of this sink's post


def post_on_routes(
    context: dg.OpExecutionContext,
    lake: LakeResource,
    routes: list[RouteSpec],
    spark_session: Callable[[], SparkSession],
    config: PostConfig,
) -> dict[str, SinkOutcome]:
    """Post what each route has not settled of its feed's table; one outcome per route (by name),
    never raising.

    A route that fails (its sink down, refusing, fenced out) keeps its progress where it was: the next
    call posts its backlog again, and the other routes are not held up.
    """

    def post_one(route: RouteSpec) -> SinkOutcome:
        outcome = SinkOutcome()

        def collect(event: object) -> None:
            if isinstance(event, dg.AssetMaterialization):
                outcome.posted.append(dict(event.metadata))
            # The dead-letter check's evaluation is left out: its counts are in the metadata.

        started = time.perf_counter()
        marks: list[tuple[float, str]] = []
        try:
            run = PostRun(
                QuietContext(context, collect, marks),  # type: ignore[arg-type]
                lake,
                route_sink(route, context.resources),
                spark_session,
                route.posted_feed(),
                route.asset_key,
                config,
                where=route.where,
            )
            run_post(run)
        except Exception as exc:  # dg.Failure included: reported, retried by the loop
            outcome.error = exc
        outcome.seconds = time.perf_counter() - started
        _process_log.info(
            "route %s: %.3fs; %s",
            route.name,
            outcome.seconds,
            _steps(started, marks, started + outcome.seconds),
        )
        return outcome

    with ThreadPoolExecutor(max(1, len(routes)), thread_name_prefix="continuous-post") as pool:
        futures = {route.name: pool.submit(post_one, route) for route in routes}
        return {name: future.result() for name, future in futures.items()}


def _steps(started: float, marks: list[tuple[float, str]], ended: float) -> str:
    """``run_post``'s info lines as the seconds each step took before it was logged (see ``QuietLog``)."""
    parts, last = [], started
    for at, msg in marks:
        parts.append(f"{at - last:.3f}s→{msg[:40]!r}")
        last = at
    parts.append(f"{ended - last:.3f}s→end")
    return ", ".join(parts)
