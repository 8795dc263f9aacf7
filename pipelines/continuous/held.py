"""One route of a continuous run, posted under a lease held for the run's life.

The triggered runs' ``run_post`` takes the route's lease, makes Spark ready (the sink's connection
check, the session, the executors' check, the liveness beacon), plans, posts, settles and releases the
lease, on every call. A continuous run posts every second or so: ``HeldRoute`` takes the lease at its
first post and keeps it, renewed every quarter of ``lease_ttl_s`` by the lease's own ``keep_alive``
thread, until the run stops (``close``), and keeps the poster, so Spark is made ready once. Each post
plans from the progress the lease carries and settles group by group through the fence, as
``run_post`` does (``post_held``).

The guarantees stay those of the lease: while the run lives nobody else posts the route (a post job
started by hand, or a second continuous run, waits ``lease_wait_s`` and fails without posting); a
lease found lost (another holder took it after this run could not renew) is given up, and the next
post takes it anew and plans from what the other holder settled. A kill leaves the lease to lapse
after ``lease_ttl_s`` (the replacement run waits for it); a clean stop releases it at once.

After any failed post the poster is dropped: the next one checks the sink's connection and the Spark
session again, so a sink that is down fails fast before Spark and a Connect server that restarted
gives a new session.
"""

import contextlib
import time
from collections.abc import Callable

import dagster as dg
from pyspark.sql import SparkSession

from pipelines.continuous.quiet import QuietContext
from pipelines.post.config import PostConfig
from pipelines.post.job import route_sink
from pipelines.post.report import post_metadata
from pipelines.post.run import PostRun, group_poster, post_held, take_post_lease
from pipelines.routes import RouteSpec
from resources.lake import LakeResource
from resources.lease import Lease, LeaseLost


class HeldRoute:
    """Posts one route again and again under one lease; not thread-safe (one caller at a time)."""

    def __init__(
        self,
        route: RouteSpec,
        context: dg.OpExecutionContext,
        lake: LakeResource,
        spark_session: Callable[[], SparkSession],
        config: PostConfig,
    ) -> None:
        self.route = route
        self.posted: list[dict] = []  # the materialization metadata of the last post (none: nothing new)
        self.marks: list[tuple[float, str]] = []  # its info lines, timed
        quiet = QuietContext(context, self.marks)
        self.run = PostRun(
            quiet,  # type: ignore[arg-type]
            lake,
            route_sink(route, context.resources),
            spark_session,
            route.posted_feed(),
            route.asset_key,
            config,
            where=route.where,
        )
        self._lease: Lease | None = None
        self._renewing: contextlib.ExitStack | None = None
        self._poster = None
        self.leases_taken = 0

    @property
    def lease(self) -> Lease | None:
        """The lease held now, if any."""
        return self._lease

    def post(self) -> None:
        """Post what the route has not settled; raises what ``post_held`` raises (the loop retries)."""
        self.posted = []
        self.marks.clear()
        lease = self._held()
        if self._poster is None:
            self._poster = group_poster(self.run, lease)
        try:
            posted = post_held(self.run, lease, self._poster)
        except LeaseLost:
            self._let_go()  # taken anew at the next post, from the progress its holder settled
            raise
        except BaseException:
            self._poster = None  # the next post checks the sink and the session again
            raise
        if posted:
            sink = self.run.sink
            self.posted = [post_metadata(posted, self.run.config, sink.destination_uri(), sink.asset_kind)]

    def close(self) -> None:
        """Stop renewing and release the lease (nothing to release when it was lost)."""
        self._let_go()

    def _held(self) -> Lease:
        lease = self._lease
        if lease is not None and lease.lost is None and not lease.released:
            return lease
        self._let_go()
        started = time.perf_counter()
        lease = take_post_lease(self.run)
        self.marks.append((time.perf_counter(), f"lease taken in {time.perf_counter() - started:.3f}s"))
        renewing = contextlib.ExitStack()
        renewing.enter_context(
            lease.keep_alive(
                on_error=lambda exc: self.run.context.log.warning(
                    f"{lease.label}: renewing the lease failed: {exc}"
                )
            )
        )
        self._lease, self._renewing = lease, renewing
        self.leases_taken += 1
        return lease

    def _let_go(self) -> None:
        lease, renewing = self._lease, self._renewing
        self._lease, self._renewing, self._poster = None, None, None
        if renewing is not None:
            renewing.close()  # the renewal thread ends; the beacon closes, so orphaned tasks stop
        if lease is None:
            return
        try:
            lease.release()
        except Exception as exc:  # the lease lapses by itself
            self.run.context.log.warning(
                f"{lease.label}: could not release the lease ({exc}); it lapses within {lease.ttl_s:g}s"
            )
