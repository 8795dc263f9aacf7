"""Re-admit landing files that were quarantined whole (``unreadable_file``), e.g. by a network cut
before transport errors were retried: they are ingested again as one new batch, exactly once.

    python -m pipelines.ingest.readmit --feed events PATH [PATH ...]
    python -m pipelines.ingest.readmit --feed events --all

A PATH is the file's ``source_file`` in the quarantine table (a local path, or ``bucket/key`` on S3).
Only a file whose latest plan ended in its quarantine and that has no row in the feed's table is
taken, so running the command twice, or naming a file that landed, appends nothing. A file whose
bytes really are broken is simply quarantined again. The lake and feeds are the deployment's
(``LAKERELAY_*``, ``AWS_*``, ``LAKERELAY_FEEDS_FILE``). Exit codes: 0 every file landed, 1 some were
quarantined again or refused, 2 bad input.
"""

import argparse
import sys
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from pipelines import deployment
from pipelines.feeds import EVENTS_FEED, FeedSpec
from pipelines.ingest.context import IngestReport
from pipelines.ingest.discovery import LandingFile
from pipelines.ingest.ledger import FileLedger
from pipelines.ingest.runner import ingest_files
from resources.arrow import pc
from resources.delta_arrow import read_delta
from resources.lake import LakeResource


@dataclass(frozen=True)
class Refusal:
    path: str
    reason: str


def readmission_candidates(feed: FeedSpec, lake: LakeResource) -> list[str]:
    """Paths quarantined whole whose latest plan ended in that quarantine, oldest batch first."""
    latest = _latest_unreadable(feed, lake)
    planned = FileLedger.for_feed(feed, lake).lookup_batches(list(latest))
    landed = _paths_with_rows(feed, lake, list(latest))
    return [
        path
        for path, batch in sorted(latest.items(), key=lambda item: (item[1], item[0]))
        if planned.get(path) == batch and path not in landed
    ]


def readmit(
    feed: FeedSpec, lake: LakeResource, paths: list[str]
) -> tuple[IngestReport | None, list[Refusal]]:
    """Ingest the admissible ``paths`` as one batch; the report (None when none was admissible) and the
    paths refused with their reason."""
    candidates = set(readmission_candidates(feed, lake))
    quarantined = _latest_unreadable(feed, lake)
    refused, files = [], []
    fs = lake.resolve(feed.landing_uri(lake.landing_uri))[0]
    for path in dict.fromkeys(paths):
        if path not in quarantined:
            refused.append(Refusal(path, "not quarantined as an unreadable file of this feed"))
        elif path not in candidates:
            refused.append(Refusal(path, "re-admitted or ingested already (its rows are in the table)"))
        else:
            info = fs.get_file_info(path)
            if info.type != pafs.FileType.File:
                refused.append(Refusal(path, "no longer in the landing zone"))
            else:
                files.append(LandingFile(path, info.size or 0, info.mtime_ns or 0))
    return (ingest_files(feed, lake, files) if files else None), refused


def _latest_unreadable(feed: FeedSpec, lake: LakeResource) -> dict[str, int]:
    """source_file -> the latest batch that quarantined it whole."""
    try:
        table = DeltaTable(lake.state_uri("quarantine", feed.name), storage_options=lake.storage_options())
    except TableNotFoundError:
        return {}
    rows = read_delta(
        table,
        lake.filesystem_settings(),
        columns=["source_file", "batch_id"],
        filter=ds.field("kind") == "unreadable_file",
    )
    latest: dict[str, int] = {}
    for path, batch in zip(rows["source_file"].to_pylist(), rows["batch_id"].to_pylist(), strict=True):
        latest[path] = max(batch, latest.get(path, 0))
    return latest


def _paths_with_rows(feed: FeedSpec, lake: LakeResource, paths: list[str]) -> set[str]:
    if not paths:
        return set()
    try:
        table = lake.table(lake.table_uri(feed.table_name))
    except TableNotFoundError:
        return set()
    rows = read_delta(
        table,
        lake.filesystem_settings(),
        columns=["_source_file"],
        filter=ds.field("_source_file").isin(pa.array(paths, pa.string())),
    )
    return set(pc.unique(rows["_source_file"]).to_pylist())


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.ingest.readmit",
        description="Ingest again landing files that were quarantined whole (kind unreadable_file).",
        epilog="Exit codes: 0 every file landed, 1 some were quarantined again or refused, 2 bad input.",
    )
    parser.add_argument("--feed", required=True, help="feed name, e.g. events")
    parser.add_argument("paths", nargs="*", metavar="PATH", help="source_file values of the quarantine table")
    parser.add_argument(
        "--all", action="store_true", help="every file quarantined whole and not landed since"
    )
    parser.add_argument("--list", action="store_true", help="only print the files --all would take")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    feeds = {feed.name: feed for feed in deployment.feeds(default=[EVENTS_FEED])}
    feed = feeds.get(args.feed)
    if feed is None:
        print(f"no feed {args.feed!r}; the feeds are: {', '.join(sorted(feeds))}", file=sys.stderr)
        return 2
    if bool(args.paths) == (args.all or args.list):
        print("name the files to re-admit (PATH ...) or pass --all / --list, not both", file=sys.stderr)
        return 2
    lake = deployment.resolved(deployment.lake_resource())
    if args.list:
        for path in readmission_candidates(feed, lake):
            print(path)
        return 0
    paths = readmission_candidates(feed, lake) if args.all else args.paths
    report, refused = readmit(feed, lake, paths)
    for refusal in refused:
        print(f"refused {refusal.path}: {refusal.reason}")
    if report is not None:
        again = {q.path: q.error for q in report.quarantined}
        for path in paths:
            if path in again:
                print(f"quarantined again {path}: {again[path]}")
        print(
            f"re-admitted {report.files} file(s) of feed {feed.name}: {report.rows} rows in batch "
            f"{report.batches[0] if report.batches else '-'}"
        )
    elif not refused:
        print("nothing to re-admit")
    return 1 if refused or (report is not None and report.quarantined) else 0


if __name__ == "__main__":
    sys.exit(main())
