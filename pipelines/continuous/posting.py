"""Post one micro-batch on every route of a feed with the triggered runs' own ``run_post``: the same
lease, fence, groups, retries and dead letters, one route per thread (each holds its own lease).

``run_post`` returns what it posted (the coalesced report sums it) and logs through its op context:
in the continuous run that is ``QuietContext``, whose info lines go to the process log (the run's
stderr) and only warnings and errors to Dagster's event log, so it does not grow with micro-batches.
"""

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
from pyspark.sql import SparkSession

from pipelines.post.config import PostConfig
from pipelines.post.job import route_sink
from pipelines.post.report import post_metadata
from pipelines.post.run import PostRun, run_post
from pipelines.routes import RouteSpec
from resources.lake import LakeResource

_process_log = logging.getLogger("lakerelay.continuous")


class QuietLog(logging.LoggerAdapter):
    """Info and debug to the process log; warnings and errors to Dagster's (the event log). A
    ``LoggerAdapter`` so that it goes wherever a logger does."""

    def __init__(self, dagster_log: Any) -> None:
        super().__init__(_process_log)
        self.dagster_log = dagster_log

    def debug(self, msg: object, *args: object, **kwargs: Any) -> None:
        _process_log.debug(msg, *args, **kwargs)

    def info(self, msg: object, *args: object, **kwargs: Any) -> None:
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

    def __init__(self, context: dg.OpExecutionContext) -> None:
        self._context = context
        self.log = QuietLog(context.log)

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

        started = time.perf_counter()
        try:
            sink = route_sink(route, context.resources)
            run = PostRun(
                QuietContext(context),  # type: ignore[arg-type]
                lake,
                sink,
                spark_session,
                route.posted_feed(),
                route.asset_key,
                config,
                where=route.where,
            )
            posted = run_post(run)
            if posted:
                outcome.posted.append(post_metadata(posted, config, sink.destination_uri(), sink.asset_kind))
        except Exception as exc:  # dg.Failure included: reported, retried by the loop
            outcome.error = exc
        outcome.seconds = time.perf_counter() - started
        return outcome

    with ThreadPoolExecutor(max(1, len(routes)), thread_name_prefix="continuous-post") as pool:
        futures = {route.name: pool.submit(post_one, route) for route in routes}
        return {name: future.result() for name, future in futures.items()}
