"""One post at a time per (sink, feed): the fenced lease on a sink's progress, on real parts.

The fence unit tests run on a local lake and on moto's S3 server (which enforces If-None-Match);
the job tests run real post jobs (real Delta, real Spark, the local sink server), two at once, and
one in a subprocess that is SIGKILLed or frozen mid-way.
"""

import json
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from test_post_job import write_feed_batch

from pipelines.deployment import LOCAL_HEC_TOKEN
from pipelines.feeds import EVENTS_FEED
from pipelines.post.progress import (
    SinkProgress,
    acquire_progress,
    progress_log,
    progress_of,
    read_progress,
    write_progress,
)
from resources.lake import LakeResource
from resources.lease import LeaseHeld, LeaseLog, LeaseLost, LeaseRecord, acquire
from resources.lease import log as lease_log_module
from resources.sinks.resource import ElasticsearchSinkResource, SplunkHecSinkResource

from helpers import dagster_cli_env, local_lake, post_job, records, s3_lake, wait_for

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(params=["local", "s3"])
def lake(request: pytest.FixtureRequest, tmp_path: Path) -> LakeResource:
    if request.param == "local":
        return local_lake(tmp_path)
    return s3_lake(request.getfixturevalue("s3_settings"))


@pytest.fixture
def keep_every_record(monkeypatch: pytest.MonkeyPatch) -> None:
    """No pruning in this process, so a test can read the whole record sequence afterwards."""
    monkeypatch.setattr(lease_log_module, "KEEP_RECORDS", 1_000_000)


# -- the fence itself: local folder and S3 -----------------------------------------------------------


def race_to_acquire(log: LeaseLog, owners: list[str]) -> list[object]:
    """Every owner tries to take the lease at the same instant; a Lease or a LeaseHeld each."""
    barrier = threading.Barrier(len(owners))
    outcomes: list[object] = []

    def attempt(owner: str) -> None:
        barrier.wait()
        try:
            outcomes.append(acquire(log, owner, ttl_s=30))
        except LeaseHeld as held:
            outcomes.append(held)

    threads = [threading.Thread(target=attempt, args=(owner,)) for owner in owners]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return outcomes


def test_concurrent_acquires_exactly_one_wins(lake: LakeResource) -> None:
    log = progress_log(lake, "es", "events")
    for round_ in range(3):  # a fresh sequence, then after releases: the CAS holds at any seq
        outcomes = race_to_acquire(log, [f"run-{round_}-{i}" for i in range(6)])
        winners = [o for o in outcomes if not isinstance(o, LeaseHeld)]
        assert len(outcomes) == 6 and len(winners) == 1
        [winner] = winners
        latest = log.latest()
        assert (latest.owner, latest.token, latest.action) == (winner.owner, winner.token, "acquire")
        assert {o.owner for o in outcomes if isinstance(o, LeaseHeld)} == {winner.owner}
        winner.release()
    assert [r.action for r in records(log)] == ["acquire", "release"] * 3


def test_a_stale_owner_cannot_settle_after_a_takeover(lake: LakeResource) -> None:
    # The case: a slow run plans batch 2, stalls past its lease, a faster run settles batch 3.
    slow = acquire_progress(lake, "es", "events", "run-slow", ttl_s=1, wait_s=0)
    time.sleep(1.1)  # the slow run's driver stalls: no renewal
    fast = acquire_progress(lake, "es", "events", "run-fast", ttl_s=30, wait_s=0)
    write_progress(lake, "es", "events", 3, 3, lease=fast)

    with pytest.raises(LeaseLost, match=r"run-slow \(token 1\) was fenced out.*run-fast"):
        write_progress(lake, "es", "events", 2, 2, lease=slow)
    with pytest.raises(LeaseLost):
        slow.renew()
    slow.release()  # fenced out: nothing to release, and no record written
    assert read_progress(lake, "es", "events").batch_id == 3
    assert slow.guard().lost_reason(force=True) is not None

    fast.release()
    log = progress_log(lake, "es", "events")
    batches = [progress_of(r.state).batch_id for r in records(log)]
    assert batches == sorted(batches) and batches[-1] == 3
    assert {r.owner for r in records(log)} == {"run-slow", "run-fast", ""}


def test_a_fenced_out_write_into_a_pruned_seq_is_refused(lake: LakeResource) -> None:
    # Pruning frees old seqs; a stale owner "winning" one below the real latest must still lose.
    uri = progress_log(lake, "es", "events").uri
    log = LeaseLog(uri, lake.filesystem_settings(), keep=2)
    stale = acquire(log, "run-stale", ttl_s=0.5)
    time.sleep(0.6)
    holder = acquire(log, "run-holder", ttl_s=30)
    for _ in range(4):
        holder.renew()
    assert log.seqs() == [5, 6]  # seq 2, the stale owner's next one, is free again

    with pytest.raises(LeaseLost):
        stale.settle({"delta_version": 9, "batch_id": 9})
    assert log.seqs() == [5, 6]  # the ghost it created was removed
    assert log.latest().owner == "run-holder"
    holder.settle({"delta_version": 1, "batch_id": 1})  # the holder is unaffected


def test_an_append_already_superseded_by_its_successor_still_counts(lake: LakeResource) -> None:
    # A release followed at once by another run's acquire: the releaser's check sees a higher seq,
    # but that record was written on top of the release, so the release stands (no ghost).
    log = progress_log(lake, "es", "events")
    release = LeaseRecord(seq=1, action="release", state={"batch_id": 3})
    log.create(LeaseRecord(seq=2, token=2, owner="run-next", expires_at=time.time() + 30, prev=release.nonce))
    assert log.append(release) is True and log.seqs() == [1, 2]
    # The same situation with a successor built on another record: ours is a ghost and goes.
    ghost = LeaseRecord(seq=3, action="settle")
    log.create(LeaseRecord(seq=4, token=2, owner="run-next", expires_at=time.time() + 30, prev="other"))
    assert log.append(ghost) is False and log.seqs() == [1, 2, 4]


def test_an_expired_lease_is_taken_over_and_a_live_one_is_not(lake: LakeResource) -> None:
    first = acquire_progress(lake, "es", "events", "run-first", ttl_s=2, wait_s=0)
    with pytest.raises(LeaseHeld) as held:
        acquire_progress(lake, "es", "events", "run-second", ttl_s=30, wait_s=0)
    assert held.value.owner == "run-first" and "held by run-first until" in str(held.value)

    started = time.monotonic()
    second = acquire_progress(lake, "es", "events", "run-second", ttl_s=30, wait_s=10)
    assert time.monotonic() - started < 4
    assert second.acquired.written_at >= first.record.expires_at  # only once it expired
    assert second.token == second.acquired.seq == 2
    with pytest.raises(LeaseLost):
        first.settle({"delta_version": 0, "batch_id": 1})


def test_release_lets_the_next_run_in_at_once_and_operator_writes_wait_for_it(lake: LakeResource) -> None:
    first = acquire_progress(lake, "es", "events", "run-first", ttl_s=60, wait_s=0)
    write_progress(lake, "es", "events", 5, 2, lease=first)
    with pytest.raises(ValueError, match="backwards"):
        write_progress(lake, "es", "events", 4, 1, lease=first)
    first.release()

    started = time.monotonic()
    second = acquire_progress(lake, "es", "events", "run-second", ttl_s=60, wait_s=0)
    assert time.monotonic() - started < 1
    assert progress_of(second.state).batch_id == 2  # the progress is carried over
    # An operator's reset (no lease) is refused while a run holds the lease, allowed after.
    with pytest.raises(LeaseHeld):
        write_progress(lake, "es", "events", -1, 0)
    second.release()
    write_progress(lake, "es", "events", -1, 0)
    assert read_progress(lake, "es", "events") == SinkProgress(
        -1, 0, read_progress(lake, "es", "events").updated_at
    )


def test_the_task_guard_sees_renewal_release_takeover_and_expiry(lake: LakeResource) -> None:
    log = progress_log(lake, "es", "events")
    first = acquire(log, "run-first", ttl_s=5)
    guard = pickle.loads(pickle.dumps(first.guard(check_s=0.1)))  # as a Spark task receives it
    assert guard.lost_reason(force=True) is None
    first.renew()
    time.sleep(0.15)
    assert guard.lost_reason() is None  # a renewal by the holder is no loss
    lost: list[str] = []
    with guard.watching(lost.append):
        first.release()
        wait_for(lambda: bool(lost), 5, "the watch to report the release")
    assert "nobody (released)" in lost[0]

    second = acquire(log, "run-second", ttl_s=1)
    slow_guard = pickle.loads(pickle.dumps(second.guard(check_s=60)))  # no storage call within a minute
    taken_guard = pickle.loads(pickle.dumps(second.guard(check_s=0.1)))
    time.sleep(1.1)
    assert "expired" in slow_guard.lost_reason()  # from memory: a dead driver cannot renew
    acquire(log, "run-third", ttl_s=30)
    assert "now belongs to run run-third" in taken_guard.lost_reason(force=True)


def test_a_guard_older_than_the_kept_records_still_sees_its_lease(lake: LakeResource) -> None:
    # A Spark task may start long after its guard was made: its record is pruned by then.
    log = LeaseLog(progress_log(lake, "es", "events").uri, lake.filesystem_settings(), keep=2)
    lease = acquire(log, "run-1", ttl_s=30)
    guard = pickle.loads(pickle.dumps(lease.guard(check_s=0.1)))
    for _ in range(4):
        lease.renew()
    assert lease.acquired.seq not in log.seqs()
    assert guard.lost_reason(force=True) is None
    lease.release()
    assert "released" in guard.lost_reason(force=True)


# -- real post jobs ------------------------------------------------------------------------------------


def test_two_runs_launched_together_post_each_record_once(
    tmp_path: Path, sink_server, spark_resource, keep_every_record
) -> None:
    lake = local_lake(tmp_path)
    for batch in (1, 2, 3):
        write_feed_batch(lake, batch, 3_000, start=(batch - 1) * 3_000)
    sink_server.set_faults({"latency_ms": 40})  # a post that lasts a few seconds
    sink = SplunkHecSinkResource(
        sink_name="splunk", url=sink_server.url, token=LOCAL_HEC_TOKEN, max_records_per_call=200
    )
    job = post_job("splunk", EVENTS_FEED)
    barrier = threading.Barrier(2)
    results: list = []

    def launch() -> None:
        barrier.wait()
        results.append(
            job.execute_in_process(
                resources={"lake": lake, "pyspark": spark_resource, "splunk": sink},
                run_config={"ops": {"sinks__events_in_splunk": {"config": {"max_tasks": 2}}}},
            )
        )

    started = time.monotonic()
    threads = [threading.Thread(target=launch) for _ in range(2)]
    for t in threads:
        t.start()
    # A new batch lands while the first holder posts: it is the second run's to post, after its wait.
    wait_for(lambda: sink_server.hec_count("main") > 0, 120, "the first run to post")
    write_feed_batch(lake, 4, 3_000, start=9_000)
    for t in threads:
        t.join(300)
    elapsed = time.monotonic() - started

    assert len(results) == 2 and all(r.success for r in results)
    events = sink_server.hec_events("main")
    ids = [e["event"]["event_id"] for e in events]
    assert len(ids) == 12_000 and len(set(ids)) == 12_000  # HEC has no ids: only the fence keeps it once
    posted = sorted(
        m.metadata["records"].value
        for r in results
        for m in r.asset_materializations_for_node("sinks__events_in_splunk")
    )
    assert posted == [3_000, 9_000]
    log = progress_log(lake, "splunk", "events")
    sequence = records(log)
    batches = [progress_of(r.state).batch_id for r in sequence]
    assert batches == sorted(batches) and batches[-1] == 4  # never backwards, ends at the last batch
    owners = [r.owner for r in sequence if r.action == "acquire"]
    assert sorted(owners) == sorted(r.run_id for r in results)
    # Tenures never overlap: each acquire follows the previous holder's release.
    actions = [r.action for r in sequence if r.action in ("acquire", "release")]
    assert actions == ["acquire", "release", "acquire", "release"]
    print(f"two runs together: {elapsed:.1f}s, {len(sequence)} lease records")


POST_SCRIPT = """
import json
import sys

from pipelines.deployment import spark_resource
from helpers import post_job  # tests/ is on the PYTHONPATH
from pipelines.feeds import EVENTS_FEED
from resources.lake import LakeResource
from resources.sinks.resource import ElasticsearchSinkResource

args = json.loads(sys.argv[1])
lake = LakeResource(lake_uri=args["lake_uri"], landing_uri=args["landing_uri"])
sink = ElasticsearchSinkResource(sink_name="es", url=args["url"], index="fence", **args["sink"])
result = post_job("elasticsearch", EVENTS_FEED).execute_in_process(
    resources={"lake": lake, "pyspark": spark_resource(), "elasticsearch": sink},
    run_config={"ops": {"sinks__events_in_elasticsearch": {"config": args["config"]}}},
    raise_on_error=False,
)
print(json.dumps({"success": result.success, "run_id": result.run_id}), flush=True)
"""
TOTAL = 20_000
TTL_S = 5.0
# Small calls to a slow sink: 2 tasks x 2 in flight x 100 records per 300 ms, about 15 s for everything.
SLOW_SINK = {"max_records_per_call": 100, "max_in_flight": 2}


def items_received(sink_server) -> int:
    """Documents the sink was sent and took, resends included (its count only counts distinct ids)."""
    return sum(sink_server.stats()["es"]["items_by_status"].values())


def start_slow_post(tmp_path: Path, lake: LakeResource, sink_server) -> subprocess.Popen:
    for batch in (1, 2, 3, 4):
        write_feed_batch(lake, batch, TOTAL // 4, start=(batch - 1) * (TOTAL // 4))
    sink_server.set_faults({"latency_ms": 300})
    script = tmp_path / "post_run.py"
    script.write_text(POST_SCRIPT)
    args = {
        "lake_uri": lake.lake_uri,
        "landing_uri": lake.landing_uri,
        "url": sink_server.url,
        "sink": SLOW_SINK,
        "config": {"lease_ttl_s": TTL_S, "max_tasks": 2},
    }
    env = dagster_cli_env(
        tmp_path, sink_server.url, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")])
    )
    proc = subprocess.Popen(
        [sys.executable, str(script), json.dumps(args)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )

    def posting() -> bool:
        assert proc.poll() is None, proc.stderr.read().decode(errors="replace")[-3000:]
        return items_received(sink_server) >= 2_000

    wait_for(posting, 240, "the post subprocess to be mid-way")
    return proc


def next_run(lake: LakeResource, sink_server, spark_resource) -> object:
    sink = ElasticsearchSinkResource(sink_name="es", url=sink_server.url, index="fence", **SLOW_SINK)
    return post_job("elasticsearch", EVENTS_FEED).execute_in_process(
        resources={"lake": lake, "pyspark": spark_resource, "elasticsearch": sink},
        run_config={
            "ops": {
                "sinks__events_in_elasticsearch": {
                    "config": {"lease_ttl_s": TTL_S, "lease_wait_s": 30, "max_tasks": 2}
                }
            }
        },
    )


def test_a_sigkilled_run_is_taken_over_only_after_its_lease_expires(
    tmp_path: Path, sink_server, spark_resource, keep_every_record
) -> None:
    lake = local_lake(tmp_path)
    proc = start_slow_post(tmp_path, lake, sink_server)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    killed_at = time.monotonic()
    at_kill = items_received(sink_server)
    log = progress_log(lake, "es", "events")
    dead = log.latest()
    assert dead.owner and dead.live()  # the dead driver's lease is still live: nobody may take it yet

    samples: list[tuple[float, int]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append((time.time(), items_received(sink_server)))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    time.sleep(1.0)  # requests that were in flight at the kill land
    settled_at, after_in_flight = time.time(), items_received(sink_server)
    sink_server.set_faults({})  # the next run need not be slow
    result = next_run(lake, sink_server, spark_resource)  # launched at once: it must wait for the expiry
    stop.set()
    sampler.join(5)

    assert result.success
    [took] = [r for r in records(log) if r.action == "acquire" and r.owner == result.run_id]
    assert took.written_at >= dead.expires_at  # only once the dead run's lease had expired
    before_takeover = {n for t, n in samples if settled_at <= t < took.written_at}
    assert before_takeover == {after_in_flight}  # nothing posted between the kill and the takeover
    at_expiry = max(n for t, n in samples if t <= dead.expires_at)
    ids = sink_server.es_ids("fence")
    assert len(ids) == len(set(ids)) == TOTAL  # every record once (by id), the killed run's included
    assert read_progress(lake, "es", "events").batch_id == 4
    print(
        f"SIGKILL: {at_kill} items at the kill, {after_in_flight} 1 s later, {at_expiry} at the lease's "
        f"expiry, unchanged until the takeover {took.written_at - dead.expires_at:+.2f}s after it; "
        f"{items_received(sink_server)} after the next run, {TOTAL} distinct ids "
        f"({time.monotonic() - killed_at:.1f}s from the kill to the end of the next run)"
    )


def test_a_frozen_drivers_tasks_stop_posting_when_its_lease_expires(
    tmp_path: Path, sink_server, spark_resource, keep_every_record
) -> None:
    # SIGSTOP freezes the driver process alone (a hung or partitioned driver): its Spark JVM and the
    # tasks keep going, as executors of a dead driver do on a cluster, but nothing renews the lease.
    lake = local_lake(tmp_path)
    proc = start_slow_post(tmp_path, lake, sink_server)
    try:
        os.kill(proc.pid, signal.SIGSTOP)
        at_freeze = items_received(sink_server)
        log = progress_log(lake, "es", "events")
        frozen = log.latest()
        # The tasks stop at the expiry; what was in flight then lands within one request's latency.
        time.sleep(max(0.0, frozen.expires_at - time.time()) + 1.0)
        after_expiry = items_received(sink_server)
        time.sleep(2.0)
        still = items_received(sink_server)
        assert after_expiry > at_freeze  # the orphaned tasks really were posting on their own ...
        assert still == after_expiry < TOTAL  # ... and stopped once the lease expired

        sink_server.set_faults({})
        result = next_run(lake, sink_server, spark_resource)
        assert result.success
        ids = sink_server.es_ids("fence")
        assert len(ids) == len(set(ids)) == TOTAL
        assert read_progress(lake, "es", "events").batch_id == 4
        [took] = [r for r in records(log) if r.action == "acquire" and r.owner == result.run_id]
        assert took.written_at >= frozen.expires_at
        print(
            f"frozen driver: {at_freeze} items at the freeze, {after_expiry} at the expiry, "
            f"{still} 2 s later; next run posted {items_received(sink_server) - still}"
        )
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
