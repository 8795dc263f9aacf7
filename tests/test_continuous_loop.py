"""The continuous loop ingests the next micro-batch while the current one is posted (folder watcher),
and never leaves an ingested micro-batch unposted: not after a post, not at a stop.

Real folder watcher (inotify) on a temporary folder; the steps are small functions over that folder,
so the test controls when a post ends.
"""

import threading
import time
from collections.abc import Callable
from pathlib import Path

import dagster as dg

from pipelines.continuous.loop import LoopSteps, run_loop
from pipelines.continuous.posting import SinkOutcome
from pipelines.continuous.report import CoalescedReport
from pipelines.continuous.watchers import FolderWatcher
from pipelines.ingest.context import IngestReport


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


class FolderFeed:
    """Ingest: the folder's new files, one batch each. Post: covers every file ingested before it
    started, and holds until the test lets it end."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.ingested: list[str] = []
        self.ingests_during_post: list[str] = []
        self.posts: list[list[str]] = []  # per post: the files ingested when it started
        self.posting = threading.Event()
        self.release = threading.Semaphore(0)

    def ingest(self) -> IngestReport:
        new = sorted(p.name for p in self.folder.iterdir() if p.name not in self.ingested)
        self.ingested.extend(new)
        if self.posting.is_set():
            self.ingests_during_post.extend(new)
        return IngestReport(batches=list(range(len(new))), files=len(new), rows=len(new))

    def post(self) -> dict[str, SinkOutcome]:
        self.posts.append(list(self.ingested))
        self.posting.set()
        self.release.acquire()
        self.posting.clear()
        return {"sink": SinkOutcome(posted=[{"records": len(self.ingested)}])}


def land(folder: Path, name: str) -> None:
    staged = folder.parent / f".{name}"
    staged.write_text("{}\n")
    staged.rename(folder / name)  # a rename into the folder, as landing tools do


def test_the_next_micro_batch_is_ingested_during_a_post_and_everything_ingested_is_posted_before_a_stop(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "landing"
    folder.mkdir()
    feed = FolderFeed(folder)
    watcher = FolderWatcher(str(folder), backfill_s=3600)
    report = CoalescedReport(dg.AssetKey("events"), {"sink": dg.AssetKey("sink")}, interval_s=3600)
    stop = threading.Event()
    steps = LoopSteps(ingest=feed.ingest, post=feed.post, max_batches=10)
    result: list[int] = []
    loop = threading.Thread(
        target=lambda: result.append(run_loop(steps, watcher, report, stop, lambda events: None, _Log())),
        daemon=True,
    )
    loop.start()
    try:
        wait_for(lambda: feed.posting.is_set(), 30, "the first pass's post")  # nothing landed yet
        feed.release.release()
        wait_for(lambda: not feed.posting.is_set(), 30, "the first post to end")

        land(folder, "a.json")
        wait_for(lambda: feed.posting.is_set(), 30, "the post of a.json")
        land(folder, "b.json")  # lands while a.json is posted: ingested now, not after that post
        wait_for(lambda: "b.json" in feed.ingests_during_post, 30, "b.json ingested during the post")
        assert feed.posts[-1] == ["a.json"]

        feed.release.release()  # a.json's post ends: b.json's starts at once, without a new landing
        wait_for(lambda: len(feed.posts) == 3 and feed.posting.is_set(), 30, "the post of b.json")
        assert feed.posts[-1] == ["a.json", "b.json"]

        land(folder, "c.json")  # lands while b.json is posted; then a stop is requested
        wait_for(lambda: "c.json" in feed.ingests_during_post, 30, "c.json ingested during the post")
        stop.set()
        feed.release.release()  # b.json's post ends; c.json was ingested, so it is posted before the stop
        wait_for(lambda: len(feed.posts) == 4 and feed.posting.is_set(), 30, "the post of c.json")
        assert feed.posts[-1] == ["a.json", "b.json", "c.json"]
        feed.release.release()
        loop.join(30)
        assert not loop.is_alive() and result  # stopped, with nothing ingested left unposted
        assert len(feed.posts) == 4
    finally:
        stop.set()
        for _ in range(4):
            feed.release.release()
        loop.join(30)
        watcher.close()


class _Log:
    def info(self, msg: object) -> None:
        pass

    def warning(self, msg: object) -> None:
        raise AssertionError(f"unexpected warning: {msg}")

    def error(self, msg: object) -> None:
        raise AssertionError(f"unexpected error: {msg}")
