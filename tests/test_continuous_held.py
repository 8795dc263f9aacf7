"""A continuous run's route holds its lease across micro-batches (``HeldRoute``), on a real local lake.

Posts here find no table yet (nothing to post), so no Spark starts: what is tested is the lease. It
stays held and renewed between posts, a second run cannot post the route meanwhile, a lease lost to
another holder is given up and taken anew once free, and a clean stop releases it at once.
"""

import time

import dagster as dg
import pytest

from pipelines.continuous.held import HeldRoute
from pipelines.feeds import EVENTS_FEED
from pipelines.post.config import PostConfig
from pipelines.post.progress import progress_log
from pipelines.post.run import PostRun, run_post
from pipelines.routes import RouteSpec
from resources.lease.record import successor
from resources.sinks.resource import ElasticsearchSinkResource

from helpers import local_lake, records, wait_for

ROUTE = RouteSpec(EVENTS_FEED, "elasticsearch")


def no_spark():
    raise AssertionError("nothing to post: Spark must not start")


@pytest.fixture
def context() -> dg.OpExecutionContext:
    sink = ElasticsearchSinkResource(sink_name="elasticsearch", url="http://127.0.0.1:9", index="events")
    return dg.build_op_context(resources={"elasticsearch": sink})


def second_run_posts(context, lake) -> None:
    """What a post job started by hand does: ``run_post``, not waiting for a held lease."""
    config = PostConfig(lease_wait_s=0)
    sink = context.resources.elasticsearch
    run_post(PostRun(context, lake, sink, no_spark, ROUTE.posted_feed(), ROUTE.asset_key, config))


def test_a_lease_held_across_posts_keeps_other_runs_out_and_is_released_on_a_clean_stop(tmp_path, context):
    lake = local_lake(tmp_path)
    log = progress_log(lake, "elasticsearch", EVENTS_FEED.table_name)
    held = HeldRoute(ROUTE, context, lake, no_spark, PostConfig(lease_ttl_s=2, lease_wait_s=0))
    held.post()
    lease = held.lease
    assert lease is not None and held.leases_taken == 1
    # Between micro-batches the lease stays held, renewed by its own thread (TTL 2 s: renewed every 0.5 s).
    wait_for(lambda: sum(r.action == "renew" for r in records(log)) >= 2, 30, "two renewals")
    held.post()
    assert held.lease is lease and held.leases_taken == 1 and lease.lost is None

    with pytest.raises(dg.Failure, match="is being posted by run"):
        second_run_posts(context, lake)

    held.close()
    assert log.latest().owner == "" and log.latest().action == "release"
    second_run_posts(context, lake)  # free at once: no wait for the TTL


def test_a_lost_lease_is_given_up_and_taken_anew_once_free(tmp_path, context):
    lake = local_lake(tmp_path)
    log = progress_log(lake, "elasticsearch", EVENTS_FEED.table_name)
    held = HeldRoute(ROUTE, context, lake, no_spark, PostConfig(lease_ttl_s=2, lease_wait_s=0))
    held.post()
    first = held.lease
    assert first is not None

    # Another run appends a record taking the lease (as after this run could not renew in time); a
    # renewal appended at the same moment wins that seq, so take the next.
    while True:
        latest, now = log.latest(), time.time()
        taken = successor(
            latest, now, token=latest.seq + 1, owner="other-run", expires_at=now + 600, state=latest.state
        )
        if log.append(taken):
            break
    wait_for(lambda: first.lost is not None, 30, "the renewal to find the lease lost")

    with pytest.raises(dg.Failure, match="is being posted by run other-run"):
        held.post()  # lost: given up; the other holder's lease is live, so nothing is posted
    assert held.lease is None

    now = time.time()
    assert log.append(successor(log.latest(), now, token=0, owner="", expires_at=0.0, state=latest.state))
    held.post()
    assert held.lease is not None and held.lease is not first and held.leases_taken == 2
    held.close()
    assert log.latest().owner == ""
