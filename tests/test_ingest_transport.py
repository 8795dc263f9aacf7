"""Transport is not content: a network cut while landing files are read is ridden out (or fails the run
with the batch still planned), never quarantined; files quarantined wrongly before can be re-admitted.

The faults come from a real TCP proxy on 127.0.0.1, in a process of its own, in front of the moto S3
server: every client (boto3's listing, pyarrow's GetObject, delta-rs) talks to S3 through it.
"""

import contextlib
import dataclasses
import math
import multiprocessing
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path

import orjson
import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable

from pipelines.feeds import FeedSpec
from pipelines.ingest.ledger import FileLedger
from pipelines.ingest.quarantine import QUARANTINE_SCHEMA
from pipelines.ingest.runner import ingest_feed
from pipelines.ingest.transport import LandingUnreachable, is_transport_error, with_retries
from resources.sinks.retry import Backoff

from helpers import delta_table, local_lake, s3_lake

REPO = Path(__file__).resolve().parents[1]


class CuttingProxy:
    """Forwards TCP bytes between clients and ``upstream``. Once armed, the first request containing
    ``trigger`` gets a few bytes of its response, then every connection is reset, and new ones are
    reset on arrival for ``cut_s`` seconds (``math.inf``: until ``heal``)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.trigger: bytes | None = None
        self.cut_s = 0.0
        self.cut_until = 0.0
        self.cuts = 0  # connections reset by a cut
        self.triggered = threading.Event()
        self._lock = threading.Lock()
        self._live: set[socket.socket] = set()
        self._stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self, trigger: bytes, cut_s: float) -> None:
        self.trigger, self.cut_s = trigger, cut_s

    def heal(self) -> None:
        self.cut_until = 0.0

    def stop(self) -> None:
        self._stopped = True
        self.listener.close()
        with self._lock:
            for sock in list(self._live):
                _reset(sock)

    def _cutting(self) -> bool:
        return time.monotonic() < self.cut_until

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self._cutting():
                self.cuts += 1
                _reset(client)
                continue
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        except OSError:
            _reset(client)
            return
        with self._lock:
            self._live.update((client, upstream))
        cut_this = threading.Event()

        def requests() -> None:
            while chunk := _recv(client):
                if self.trigger is not None and self.trigger in chunk:
                    self.trigger = None
                    cut_this.set()
                try:
                    upstream.sendall(chunk)
                except OSError:
                    break
            _close(upstream)

        def responses() -> None:
            while chunk := _recv(upstream):
                if cut_this.is_set():
                    client.sendall(chunk[:1024])  # a piece of the response, then the cut
                    self._start_cut()
                    break
                try:
                    client.sendall(chunk)
                except OSError:
                    break
            _close(client)

        threading.Thread(target=requests, daemon=True).start()
        responses()

    def _start_cut(self) -> None:
        self.cut_until = time.monotonic() + self.cut_s if math.isfinite(self.cut_s) else math.inf
        with self._lock:
            for sock in list(self._live):
                self.cuts += 1
                _reset(sock)
            self._live.clear()
        self.triggered.set()


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except OSError:
        return b""


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _reset(sock: socket.socket) -> None:
    """End a connection at once, as a dropped network path looks to the client. ``shutdown`` first:
    closing a socket another thread is blocked reading does not end the connection on Linux."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    _close(sock)
    with contextlib.suppress(OSError):
        sock.close()


def _serve_proxy(upstream_port: int, control: Connection) -> None:
    """The proxy's own process: commands come over ``control``, each answered."""
    proxy = CuttingProxy(upstream_port)
    control.send(proxy.url)
    while True:
        command, *args = control.recv()
        if command == "arm":
            proxy.arm(*args)
        elif command == "heal":
            proxy.heal()
        elif command == "status":
            control.send((proxy.triggered.is_set(), proxy.cuts))
            continue
        elif command == "stop":
            proxy.stop()
            control.send("stopped")
            return
        control.send("ok")


class ProxyProcess:
    """A ``CuttingProxy`` in a process of its own (spawned: no fork after deltalake), so that a client
    call that holds the GIL while it waits on the network (deltalake's ``is_deltatable`` does) cannot
    stall the proxy it waits on."""

    def __init__(self, upstream_port: int) -> None:
        context = multiprocessing.get_context("spawn")
        self._control, child = context.Pipe()
        self._process = context.Process(target=_serve_proxy, args=(upstream_port, child), daemon=True)
        self._process.start()
        if not self._control.poll(120):
            self._process.kill()
            raise RuntimeError("the proxy process did not start within 120 s")
        self.url: str = self._control.recv()

    def _ask(self, *command: object) -> object:
        self._control.send(command)
        return self._control.recv()

    def arm(self, trigger: bytes, cut_s: float) -> None:
        self._ask("arm", trigger, cut_s)

    def heal(self) -> None:
        self._ask("heal")

    def status(self) -> tuple[bool, int]:
        """(was the trigger seen and the cut started?, connections reset so far)"""
        return self._ask("status")  # type: ignore[return-value]

    def stop(self) -> None:
        if self._process.is_alive():
            self._ask("stop")
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()


@pytest.fixture
def proxy(moto_server: str):
    cutter = ProxyProcess(int(moto_server.rsplit(":", 1)[1]))
    yield cutter
    cutter.stop()


def _records(first: int, count: int) -> bytes:
    return b"".join(
        orjson.dumps({"id": i, "message": f"record {i} " + "x" * 40}) + b"\n"
        for i in range(first, first + count)
    )


def _land_s3(s3_settings, feed: str, files: int, per_file: int) -> None:
    client = s3_settings.client()
    for n in range(files):
        body = _records(n * per_file, per_file)
        client.put_object(Bucket=s3_settings.bucket, Key=f"landing/{feed}/part-{n:03d}.json", Body=body)


@pytest.mark.integration
def test_a_network_cut_during_get_object_is_ridden_out_and_nothing_is_quarantined(s3_settings, proxy) -> None:
    _land_s3(s3_settings, "events", files=3, per_file=3000)  # ~200 kB each: the cut comes mid-body
    lake = s3_lake(dataclasses.replace(s3_settings, endpoint_url=proxy.url))
    feed = FeedSpec(name="events", source="events")
    proxy.arm(f"GET /{s3_settings.bucket}/landing/events/".encode(), cut_s=3.0)

    report = ingest_feed(feed, lake)

    triggered, cuts = proxy.status()
    assert triggered and cuts >= 1  # the fault really happened mid-GET
    assert report.quarantined == [] and report.bad_records == 0
    assert report.rows == 9000
    table = delta_table(lake)
    assert pc.count_distinct(table["id"]).as_py() == 9000 and table.num_rows == 9000


@pytest.mark.integration
def test_a_cut_longer_than_the_read_deadline_fails_the_run_and_the_next_run_lands_the_batch(
    s3_settings, proxy
) -> None:
    _land_s3(s3_settings, "events", files=12, per_file=500)  # more files than read threads
    lake = s3_lake(dataclasses.replace(s3_settings, endpoint_url=proxy.url))
    feed = FeedSpec(name="events", source="events", read_deadline="1s")
    proxy.arm(f"GET /{s3_settings.bucket}/landing/events/".encode(), cut_s=math.inf)

    with pytest.raises(LandingUnreachable, match=r"reading .*landing/events/part-\d+\.json failed for"):
        ingest_feed(feed, lake)
    proxy.heal()
    ledger = FileLedger.for_feed(feed, lake)
    assert ledger.last_batch() == 1  # the batch stays planned for the next run
    assert len(ledger.files_of_batch(1)) == 12

    again = ingest_feed(feed, lake)

    assert (again.replayed_batches, again.batches, again.quarantined) == (1, [1], [])
    assert delta_table(lake).num_rows == 6000
    assert not DeltaTable.is_deltatable(lake.state_uri("quarantine", feed.name), lake.storage_options())


def test_only_transport_faults_are_retried_and_the_deadline_is_kept() -> None:
    now = [0.0]
    attempts = []

    def flaky() -> bytes:
        attempts.append(now[0])
        if len(attempts) < 4:
            raise OSError("AWS Error NETWORK_CONNECTION during GetObject operation: curlCode: 7")
        return b"ok"

    def sleep(seconds: float) -> None:
        now[0] += seconds

    fast = Backoff(1.0, 1.0)
    assert with_retries(flaky, "reading x", 60, clock=lambda: now[0], sleep=sleep, backoff=fast) == b"ok"
    assert len(attempts) == 4

    def down() -> bytes:
        raise OSError("connection reset by peer")

    with pytest.raises(LandingUnreachable, match=r"^reading y failed for 10 s .*next run retries it"):
        with_retries(down, "reading y", 10, clock=lambda: now[0], sleep=sleep, backoff=fast)
    # Once one read of a batch gave up, the others stop instead of each waiting out its deadline.
    gave_up = threading.Event()
    with pytest.raises(LandingUnreachable):
        with_retries(down, "reading z", 10, clock=lambda: now[0], sleep=sleep, backoff=fast, gave_up=gave_up)
    assert gave_up.is_set()
    calls = []
    with pytest.raises(LandingUnreachable, match="not attempted: another read of the batch gave up"):
        with_retries(lambda: calls.append(1), "reading w", 10, gave_up=gave_up)
    assert calls == []
    assert not is_transport_error(FileNotFoundError("gone"))
    assert not is_transport_error(PermissionError("denied"))
    assert not is_transport_error(OSError("AWS Error ACCESS_DENIED during GetObject operation"))
    assert not is_transport_error(ValueError("not JSON"))


@pytest.mark.parametrize("start", [13.37, 1e6 + 0.1, 7_654_321.123])
def test_the_deadline_ends_the_retries_whatever_the_clock_reads(start: float) -> None:
    # A clock far from zero: steps that shrink towards the deadline stop changing a float, so the
    # loop must end on its last attempt, not on the clock reaching the deadline exactly.
    now = [start]
    attempts = []

    def down() -> bytes:
        attempts.append(now[0])
        raise OSError("connection reset by peer")

    def sleep(seconds: float) -> None:
        now[0] += seconds

    with pytest.raises(LandingUnreachable, match=r"failed for 10 s"):
        with_retries(down, "reading q", 10, clock=lambda: now[0], sleep=sleep, backoff=Backoff(0.7, 3.3))
    assert now[0] - start == pytest.approx(10, abs=1e-6)
    assert len(attempts) < 30


def test_files_quarantined_whole_before_the_fix_are_readmitted_by_the_documented_command(
    tmp_path: Path,
) -> None:
    lake = local_lake(tmp_path)
    root = Path(lake.landing_uri) / "events"
    root.mkdir(parents=True)
    good = root / "a.json"
    good.write_bytes(_records(0, 5))
    (root / "b.json").write_bytes(_records(5, 5))
    feed = FeedSpec(name="events", source="events")
    ingest_feed(feed, lake)
    # What the old reader recorded for a file hit by a network cut: quarantined whole, its rows gone.
    (root / "c.json").write_bytes(_records(10, 5))
    (root / "d.json").write_bytes(_records(15, 5))
    _quarantine_wrongly(lake, feed, [root / "c.json", root / "d.json"])
    env = {
        **os.environ,
        "LAKERELAY_LAKE_URI": lake.lake_uri,
        "LAKERELAY_LANDING_URI": lake.landing_uri,
        "LAKERELAY_FEEDS_FILE": "",
    }

    def readmit(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "pipelines.ingest.readmit", "--feed", "events", *args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    listed = readmit("--list")
    first = readmit(str(root / "c.json"))
    rest = readmit("--all")
    again = readmit(str(root / "c.json"), str(good))

    assert listed.stdout.split() == [str(root / "c.json"), str(root / "d.json")], listed.stderr
    assert first.returncode == 0 and "re-admitted 1 file(s) of feed events: 5 rows" in first.stdout, first
    assert rest.returncode == 0 and "re-admitted 1 file(s) of feed events: 5 rows" in rest.stdout, rest
    assert again.returncode == 1
    assert f"refused {root / 'c.json'}: re-admitted or ingested already" in again.stdout
    assert f"refused {good}: not quarantined" in again.stdout
    assert sorted(delta_table(lake)["id"].to_pylist()) == list(range(20))


def _quarantine_wrongly(lake, feed: FeedSpec, paths: list[Path]) -> None:
    """The ledger and quarantine entries of a batch whose files all failed in transport (old reader)."""
    from datetime import UTC, datetime

    import pyarrow as pa

    from pipelines.delta_once import append_once
    from pipelines.ingest.discovery import LandingFile
    from pipelines.ingest.reader import METADATA_SCHEMA

    ledger = FileLedger.for_feed(feed, lake)
    batch = ledger.last_batch() + 1
    files = [LandingFile(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in paths]
    assert ledger.plan(batch, files)
    rows = [
        {
            "batch_id": batch,
            "source_file": str(p),
            "line": None,
            "kind": "unreadable_file",
            "error": "OSError: AWS Error NETWORK_CONNECTION during GetObject operation: curlCode: 28",
            "raw_text": None,
            "raw_bytes": None,
            "recorded_at": datetime.now(UTC),
        }
        for p in paths
    ]
    options = lake.storage_options()
    quarantine = pa.Table.from_pylist(rows, schema=QUARANTINE_SCHEMA)
    append_once(
        lake.state_uri("quarantine", feed.name),
        options,
        quarantine,
        f"lakerelay-quarantine:{feed.name}",
        batch,
    )
    append_once(
        lake.table_uri(feed.table_name),
        options,
        METADATA_SCHEMA.empty_table(),
        feed.app_id,
        batch,
        schema_mode="merge",
    )


def test_a_read_deadline_that_is_not_a_duration_names_the_feed_and_the_option() -> None:
    with pytest.raises(ValueError, match=r"^feed 'x': read_deadline: cannot read duration 'soon'"):
        FeedSpec(name="x", read_deadline="soon")
    assert FeedSpec(name="x", read_deadline="90s", settle_time="1 minute").settle_time_s() == 60
