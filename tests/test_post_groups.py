"""Progress moves with the data: groups settle one by one, so a kill or a takeover re-sends at most the
groups in flight, and workers of a dead driver stop within a second (its liveness beacon).

The progress tests run on a local lake; the beacon's on real sockets and a real process that dies;
the job tests run real post jobs (real Delta, real Spark, the local sink server) in a subprocess
that is SIGKILLed with its whole process group, or frozen past its lease while another run takes over.
"""

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest
from test_post_job import write_feed_batch

from pipelines.deployment import LOCAL_HEC_TOKEN
from pipelines.feeds import EVENTS_FEED
from pipelines.post.dead_letters import DEAD_LETTER_TABLE, append_dead_letters
from pipelines.post.plan import cut_files, cut_groups
from pipelines.post.progress import (
    PartialProgress,
    abandon_partial,
    acquire_progress,
    progress_log,
    progress_of,
    read_progress,
    settle_group,
    write_progress,
)
from resources.lease import LeaseLost, acquire
from resources.lease import log as lease_log_module
from resources.lease.beacon import BeaconWatch, HolderBeacon
from resources.sinks.resource import SplunkHecSinkResource

from helpers import dagster_cli_env, delta_table, local_lake, post_job, records, wait_for

ROOT = Path(__file__).resolve().parent.parent


def position(state: dict) -> tuple[int, int]:
    """How far a progress state is: the settled batch, then the groups settled after it."""
    progress = progress_of(state)
    return progress.batch_id, len(progress.partial.settled_groups()) if progress.partial else 0


# -- progress by group, on a local lake --------------------------------------------------------------


def test_groups_settle_in_any_order_and_the_last_one_moves_the_batch(tmp_path: Path) -> None:
    lake = local_lake(tmp_path)
    lease = acquire_progress(lake, "hec", "events", "run-1", ttl_s=30, wait_s=0)
    plan = PartialProgress(delta_version=3, batch_to=2, group_rows=10_000, groups=4)
    for group in (2, 0, 3):
        settle_group(lease, "hec", "events", plan, group)
    progress = read_progress(lake, "hec", "events")
    assert (progress.batch_id, progress.delta_version) == (0, -1)  # the plan is not whole yet
    assert progress.partial.settled == ((0, 1), (2, 4)) and progress.partial.settled_groups() == {0, 2, 3}
    with pytest.raises(ValueError, match="another plan"):
        settle_group(lease, "hec", "events", PartialProgress(4, 2, 10_000, 4), 1)
    with pytest.raises(ValueError, match="backwards"):  # a whole-batch write may not forget groups
        write_progress(lake, "hec", "events", 3, 0, lease=lease)
    lease.release()

    # The next holder carries the partial plan and finishes it: the batch moves, the plan is closed.
    next_lease = acquire_progress(lake, "hec", "events", "run-2", ttl_s=30, wait_s=0)
    carried = progress_of(next_lease.state).partial
    assert carried == progress.partial
    settle_group(next_lease, "hec", "events", carried, 1)
    done = read_progress(lake, "hec", "events")
    assert (done.batch_id, done.delta_version, done.partial) == (2, 3, None)
    with pytest.raises(ValueError, match="settled already"):
        settle_group(next_lease, "hec", "events", plan, 1)
    next_lease.release()
    positions = [position(r.state) for r in records(progress_log(lake, "hec", "events"))]
    assert positions == sorted(positions)


def test_a_plan_that_cannot_be_resumed_is_dropped_and_posted_again(tmp_path: Path) -> None:
    lake = local_lake(tmp_path)
    write_progress(lake, "hec", "events", 1, 1)
    lease = acquire_progress(lake, "hec", "events", "run-1", ttl_s=30, wait_s=0)
    settle_group(lease, "hec", "events", PartialProgress(5, 3, 10_000, 3), 0)
    abandon_partial(lease, "hec", "events")
    progress = read_progress(lake, "hec", "events")
    assert (progress.batch_id, progress.delta_version, progress.partial) == (1, 1, None)
    lease.release()


def test_groups_are_cut_the_same_way_every_time() -> None:
    units = cut_files((25_000, 4_000, None), 10_000)
    assert [(u.file_index, u.row_start, u.row_stop) for u in units] == [
        (0, 0, 8_334),
        (0, 8_334, 16_668),
        (0, 16_668, None),
        (1, 0, None),
        (2, 0, None),
    ]
    assert cut_files((25_000, 4_000, None), 10_000) == units


def test_small_files_are_packed_into_groups_and_no_group_exceeds_its_rows() -> None:
    # Frequent small ingests: a Spark job per file would cost more than posting them.
    file_rows = (1_000,) * 12 + (25_000, None, 3_000)
    groups = cut_groups(file_rows, 10_000)
    assert [[u.file_index for u in g] for g in groups] == [
        list(range(10)),
        [10, 11],
        [12],
        [12],
        [12],
        [13],
        [14],
    ]
    sizes = [
        sum((u.row_stop or file_rows[u.file_index]) - u.row_start for u in g)
        for g in groups
        if g[0].file_index != 13
    ]
    assert max(sizes) <= 10_000 and sum(sizes) == 12_000 + 25_000 + 3_000
    assert cut_groups(file_rows, 10_000) == groups


def test_a_groups_dead_letters_are_written_once_whichever_run_settles_it(tmp_path: Path) -> None:
    lake = local_lake(tmp_path)
    rejected = pa.table(
        {
            "record_id": pa.array(["e1", "e2"], pa.string()),
            "record": pa.array([b'{"event_id":"e1"}', b'{"event_id":"e2"}'], pa.binary()),
            "status": pa.array([400, 400], pa.int32()),
            "error_type": pa.array(["mapper_parsing_exception"] * 2, pa.string()),
            "reason": pa.array(["bad"] * 2, pa.string()),
        }
    )

    def append(group: int, version: int = 3) -> int:
        uri = lake.table_uri(DEAD_LETTER_TABLE)
        return append_dead_letters(
            uri, lake.storage_options(), "es", "events", version, 4, rejected, group=group
        )

    # Groups settle in any order; a group posted again (after a kill between its dead letters and
    # its progress) adds nothing; the same group number of another plan is another group.
    assert [append(2), append(0), append(2), append(0), append(2, version=5)] == [2, 2, 0, 0, 2]
    assert delta_table(lake, DEAD_LETTER_TABLE).num_rows == 6


# -- the liveness beacon -------------------------------------------------------------------------------


def test_a_worker_sees_the_beacon_close_and_its_holder_process_die() -> None:
    beacon = HolderBeacon("127.0.0.1")
    watch = pickle.loads(pickle.dumps(BeaconWatch(beacon.address, beacon.secret)))  # as a task gets it
    assert watch.gone() is False and watch.gone() is False  # connected, the holder is there
    beacon.close()
    wait_for(watch.gone, 10, "the worker to see the beacon closed")

    # A holder whose process is SIGKILLed: the kernel closes its sockets, no clock involved.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from resources.lease.beacon import HolderBeacon\n"
            "b = HolderBeacon('127.0.0.1')\n"
            "print(b.address[1], b.secret.hex(), flush=True)\n"
            "time.sleep(600)\n",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        port, secret = holder.stdout.readline().split()
        watch = BeaconWatch(("127.0.0.1", int(port)), bytes.fromhex(secret))
        assert watch.gone() is False
        os.kill(holder.pid, signal.SIGKILL)
        wait_for(watch.gone, 10, "the worker to see its holder die")
    finally:
        holder.kill()
        holder.wait(10)
        holder.stdout.close()

    # Some other listener, or nobody: unknown, never "gone" (the lease's expiry still applies).
    stranger = HolderBeacon("127.0.0.1")
    assert BeaconWatch(stranger.address, b"not-the-secret-0").gone() is False
    stranger.close()
    nobody = BeaconWatch(stranger.address, beacon.secret)
    assert nobody.gone() is False and nobody.gone() is False


def test_a_guard_is_lost_once_its_holder_releases_or_is_fenced_out(tmp_path: Path) -> None:
    lake = local_lake(tmp_path)
    log = progress_log(lake, "hec", "events")
    lease = acquire(log, "run-1", ttl_s=300)
    lease.open_beacon("127.0.0.1")
    guard = pickle.loads(pickle.dumps(lease.guard(check_s=60)))  # no storage look within a minute
    assert guard.lost_reason(force=True) is None
    lease.release()
    wait_for(lambda: guard.lost_reason() is not None, 10, "the guard to see the release")
    assert "is gone" in guard.lost_reason()

    fenced = acquire(log, "run-2", ttl_s=1)
    fenced.open_beacon("127.0.0.1")
    guard = pickle.loads(pickle.dumps(fenced.guard(check_s=60)))
    assert guard.lost_reason(force=True) is None
    time.sleep(1.1)  # no renewal: another run takes over, and the holder learns it at its next write
    taker = acquire(log, "run-3", ttl_s=30)
    with pytest.raises(LeaseLost):
        fenced.renew()
    # Without a storage look: the fenced holder closed its beacon when it learned it.
    wait_for(lambda: guard.lost_reason() is not None, 10, "the guard to see the holder fenced out")
    assert "is gone" in guard.lost_reason()
    taker.release()


# -- real post jobs --------------------------------------------------------------------------------------

POST_SCRIPT = """
import json
import sys

import resources.lease.log
from pipelines.deployment import spark_resource
from helpers import post_job  # tests/ is on the PYTHONPATH
from pipelines.feeds import EVENTS_FEED
from resources.lake import LakeResource
from resources.sinks.resource import SplunkHecSinkResource

resources.lease.log.KEEP_RECORDS = 1_000_000  # the test reads every record this run wrote
args = json.loads(sys.argv[1])
lake = LakeResource(lake_uri=args["lake_uri"], landing_uri=args["landing_uri"])
sink = SplunkHecSinkResource(sink_name="hec", url=args["url"], token=args["token"], **args["sink"])
result = post_job("splunk", EVENTS_FEED).execute_in_process(
    resources={"lake": lake, "pyspark": spark_resource(), "splunk": sink},
    run_config={"ops": {"sinks__events_in_splunk": {"config": args["config"]}}},
    raise_on_error=False,
)
print(json.dumps({"success": result.success, "run_id": result.run_id}), flush=True)
"""
TOTAL = 40_000
GROUP = 5_000
TASKS = 2
BOUND = GROUP * TASKS  # what a kill or a takeover may re-send: the groups in flight
TTL_S = 15.0
# Small calls to a slow sink: 2 tasks x 2 in flight x 200 records per 300 ms, ~2,700 records/s.
SLOW_SINK = {"max_records_per_call": 200, "max_in_flight": 2}
IN_FLIGHT = TASKS * SLOW_SINK["max_in_flight"] * SLOW_SINK["max_records_per_call"]


def hec_event_ids(sink_server) -> list[str]:
    return [e["event"]["event_id"] for e in sink_server.hec_events("main")]


def start_slow_post(
    tmp_path: Path, lake, sink_server, posted_before_returning: int, **env: str
) -> subprocess.Popen:
    for batch in (1, 2, 3, 4):
        write_feed_batch(lake, batch, TOTAL // 4, start=(batch - 1) * (TOTAL // 4))
    sink_server.set_faults({"latency_ms": 300})
    script = tmp_path / "post_run.py"
    script.write_text(POST_SCRIPT)
    args = {
        "lake_uri": lake.lake_uri,
        "landing_uri": lake.landing_uri,
        "url": sink_server.url,
        "token": LOCAL_HEC_TOKEN,
        "sink": SLOW_SINK,
        "config": {"lease_ttl_s": TTL_S, "max_tasks": TASKS, "group_records": GROUP},
    }
    proc = subprocess.Popen(
        [sys.executable, str(script), json.dumps(args)],
        cwd=ROOT,
        env=dagster_cli_env(
            tmp_path, sink_server.url, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]), **env
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group, as a run launcher gives it
    )

    def posting() -> bool:
        assert proc.poll() is None, proc.stderr.read().decode(errors="replace")[-3000:]
        return sink_server.hec_count("main") >= posted_before_returning

    wait_for(posting, 240, "the post subprocess to be mid-way")
    return proc


def next_run(lake, sink_server, spark_resource):
    sink = SplunkHecSinkResource(sink_name="hec", url=sink_server.url, token=LOCAL_HEC_TOKEN, **SLOW_SINK)
    return post_job("splunk", EVENTS_FEED).execute_in_process(
        resources={"lake": lake, "pyspark": spark_resource, "splunk": sink},
        run_config={
            "ops": {
                "sinks__events_in_splunk": {
                    "config": {
                        "lease_ttl_s": TTL_S,
                        "lease_wait_s": 60,
                        "max_tasks": TASKS,
                        "group_records": GROUP,
                    }
                }
            }
        },
    )


def count_settles(sink_server, stable_s: float, timeout_s: float) -> tuple[int, float]:
    """The sink's event count once it has not changed for ``stable_s``, and when it last changed."""
    last, changed_at = sink_server.hec_count("main"), time.monotonic()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() - changed_at < stable_s:
        assert time.monotonic() < deadline, f"the sink's count still grows {timeout_s}s after the kill"
        time.sleep(0.05)
        now = sink_server.hec_count("main")
        if now != last:
            last, changed_at = now, time.monotonic()
    return last, changed_at


@pytest.mark.integration
@pytest.mark.parametrize("spark", ["local", "connect"])
def test_a_killed_runs_workers_stop_at_once_and_the_next_run_resends_at_most_the_groups_in_flight(
    tmp_path: Path,
    sink_server,
    spark_resource,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    spark: str,
) -> None:
    # Local Spark: the JVM dies with the group and pyspark.daemon then ends its workers. Spark Connect:
    # the server runs on, and only the beacon tells its workers that the run is gone.
    monkeypatch.setattr(lease_log_module, "KEEP_RECORDS", 1_000_000)
    lake = local_lake(tmp_path)
    env = (
        {"LAKERELAY_SPARK_REMOTE": request.getfixturevalue("spark_connect_url")} if spark == "connect" else {}
    )
    proc = start_slow_post(tmp_path, lake, sink_server, 3 * GROUP, **env)
    log = progress_log(lake, "hec", "events")
    wait_for(lambda: position(log.latest().state) > (0, 0), 60, "a group to settle before the kill")
    os.killpg(proc.pid, signal.SIGKILL)  # the run's process group: its driver (and a local JVM)
    proc.wait(10)
    killed_at = time.monotonic()
    at_kill = sink_server.hec_count("main")
    dead = log.latest()
    assert dead.owner and dead.live()  # nobody may take over yet

    # The workers are out of the group's reach (pyspark.daemon's group, or the Connect server): they
    # stop with the requests they had in flight, long before the lease expires, not with their groups.
    settled, last_change = count_settles(sink_server, stable_s=2.0, timeout_s=TTL_S)
    assert settled - at_kill <= 3 * IN_FLIGHT  # requests in flight, not the rest of their input
    assert time.time() < dead.expires_at  # stopped while the dead driver's lease was still live

    sink_server.set_faults({})
    result = next_run(lake, sink_server, spark_resource)

    assert result.success
    ids = hec_event_ids(sink_server)
    duplicates = len(ids) - len(set(ids))
    assert len(set(ids)) == TOTAL  # nothing lost
    assert duplicates <= BOUND  # HEC has no ids: only the groups in flight at the kill come again
    positions = [position(r.state) for r in records(log)]
    assert positions == sorted(positions) and read_progress(lake, "hec", "events").batch_id == 4
    print(
        f"\nSIGKILL of the process group ({spark} Spark): {at_kill} HEC events at the kill, {settled} once the workers "
        f"stopped ({last_change - killed_at:.1f}s after it); after the next run {len(ids)} events, "
        f"{len(set(ids))} distinct: {duplicates} duplicates (bound {BOUND} = {TASKS} tasks x {GROUP})"
    )


@pytest.mark.integration
def test_a_stalled_driver_taken_over_resends_at_most_the_groups_in_flight(
    tmp_path: Path, sink_server, spark_resource, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lease_log_module, "KEEP_RECORDS", 1_000_000)
    lake = local_lake(tmp_path)
    proc = start_slow_post(tmp_path, lake, sink_server, 3 * GROUP)
    log = progress_log(lake, "hec", "events")
    try:
        wait_for(lambda: position(log.latest().state) > (0, 0), 60, "a group to settle before the stall")
        os.kill(proc.pid, signal.SIGSTOP)  # the driver alone: its JVM and workers go on, unsupervised
        frozen = log.latest()
        sink_server.set_faults({})
        result = next_run(lake, sink_server, spark_resource)  # waits for the frozen run's lease to expire
        assert result.success
        [took] = [r for r in records(log) if r.action == "acquire" and r.owner == result.run_id]
        assert took.written_at >= frozen.expires_at

        # It wakes up fenced out: it must not write progress with its old token (its op's retry may
        # take the lease again afterwards and find nothing left to post).
        os.kill(proc.pid, signal.SIGCONT)
        out, err = proc.communicate(timeout=180)
        assert out.strip(), err.decode(errors="replace")[-3000:]
        stalled = json.loads(out.decode().strip().splitlines()[-1])
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    ids = hec_event_ids(sink_server)
    duplicates = len(ids) - len(set(ids))
    assert len(set(ids)) == TOTAL
    assert duplicates <= BOUND
    sequence = records(log)
    positions = [position(r.state) for r in sequence]
    assert positions == sorted(positions)  # neither run ever moved progress backwards
    assert read_progress(lake, "hec", "events").batch_id == 4
    assert {r.owner for r in sequence if r.action == "settle"} == {stalled["run_id"], result.run_id}
    assert not [r for r in sequence if r.seq > took.seq and r.token == frozen.token]  # fenced out
    print(
        f"\nstalled driver taken over: {len(ids)} HEC events, {len(set(ids))} distinct: {duplicates} "
        f"duplicates (bound {BOUND} = {TASKS} tasks x {GROUP})"
    )


def test_the_beacon_forgets_workers_that_hung_up() -> None:
    beacon = HolderBeacon("127.0.0.1")
    watches = [BeaconWatch(beacon.address, beacon.secret) for _ in range(5)]
    assert not any(w.gone() for w in watches)
    wait_for(lambda: beacon.connected == 5, 10, "the beacon to hold five connections")
    for watch in watches:
        watch.close()  # each task closes its connection when it ends
    wait_for(lambda: beacon.connected == 0, 10, "the beacon to forget them")
    beacon.close()
