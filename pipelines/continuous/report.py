"""Coalesced visibility: the continuous run's micro-batches, summed into one materialization per asset
per ``interval_s`` (a minute by default), so the event log grows with minutes, not with micro-batches.

The table asset gets cumulative counts since the run started; each sink asset its cumulative counts
and its lag: the records this run ingested that the sink has not settled, and for how long the oldest
of them has waited. A sink that is behind and posted nothing in a window gets no materialization, so
its FreshnessPolicy (``FRESHNESS``) turns the route late in the UI.
"""

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

import dagster as dg

# A sink asset is materialized at least every report interval while its route keeps up.
REPORT_INTERVAL_S = 60.0
FRESHNESS = dg.FreshnessPolicy.time_window(fail_window=timedelta(minutes=5), warn_window=timedelta(minutes=2))


@dataclass
class SinkTally:
    records: int = 0  # read from the table and settled (accepted or dead-lettered)
    accepted: int = 0
    dead_lettered: int = 0
    posts: int = 0  # micro-batches that posted records to this sink
    failures: int = 0
    window_records: int = 0
    window_posts: int = 0
    lag_records: int = 0  # ingested by this run, not settled in this sink yet
    behind_since: float | None = None  # wall time the oldest of those was discovered
    last_error: str = ""
    window_post_s: list[float] = field(default_factory=list)


@dataclass
class CoalescedReport:
    """What the continuous run has done, and when each asset was last reported."""

    table_key: dg.AssetKey
    sink_keys: dict[str, dg.AssetKey]
    interval_s: float = REPORT_INTERVAL_S
    clock: Callable[[], float] = time.time
    rows: int = 0
    files: int = 0
    micro_batches: int = 0
    window_rows: int = 0
    window_micro_batches: int = 0
    delta_version: int = -1
    sinks: dict[str, SinkTally] = field(default_factory=dict)
    last_report: float = 0.0
    window_ingest_s: list[float] = field(default_factory=list)
    window_micro_batch_s: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sinks = {key: SinkTally() for key in self.sink_keys}
        self.last_report = self.clock()

    def ingested(self, rows: int, files: int, delta_version: int | None, discovered_at: float) -> None:
        """A micro-batch committed ``rows`` from ``files`` (found at ``discovered_at``, wall time)."""
        if not rows and not files:
            return
        self.rows += rows
        self.files += files
        self.micro_batches += 1
        self.window_rows += rows
        self.window_micro_batches += 1
        if delta_version is not None:
            self.delta_version = delta_version
        for tally in self.sinks.values():
            tally.lag_records += rows
            if tally.behind_since is None and rows:
                tally.behind_since = discovered_at

    def posted(self, sink_key: str, metadata: dict) -> None:
        """One post of ``sink_key`` settled, with the metadata its run reported (``post/report.py``)."""
        tally = self.sinks[sink_key]
        records = _number(metadata.get("records"))
        tally.records += records
        tally.accepted += _number(metadata.get("accepted"))
        tally.dead_lettered += _number(metadata.get("dead_lettered"))
        tally.posts += 1
        tally.window_records += records
        tally.window_posts += 1

    def timed(self, ingest_s: float, micro_batch_s: float, post_s: dict[str, float]) -> None:
        """How long a micro-batch with records took: its ingest, each sink's post, all of it."""
        self.window_ingest_s.append(ingest_s)
        self.window_micro_batch_s.append(micro_batch_s)
        for key, seconds in post_s.items():
            self.sinks[key].window_post_s.append(seconds)

    def caught_up(self, sink_key: str) -> None:
        """``sink_key`` settled everything in the table as of this micro-batch."""
        tally = self.sinks[sink_key]
        tally.lag_records, tally.behind_since, tally.last_error = 0, None, ""

    def failed(self, sink_key: str, error: str) -> None:
        tally = self.sinks[sink_key]
        tally.failures += 1
        tally.last_error = error[:300]

    def due(self) -> bool:
        return self.clock() - self.last_report >= self.interval_s

    def events(self) -> list[dg.AssetMaterialization]:
        """The materializations of this window (the table's; each sink's that keeps up or moved), and
        a new window."""
        now = self.clock()
        events = [
            dg.AssetMaterialization(
                asset_key=self.table_key,
                description="Continuous relay: micro-batches ingested since the last report.",
                metadata={
                    "continuous_rows_total": self.rows,
                    "continuous_files_total": self.files,
                    "continuous_micro_batches_total": self.micro_batches,
                    "continuous_window_rows": self.window_rows,
                    "continuous_window_micro_batches": self.window_micro_batches,
                    "continuous_window_s": round(now - self.last_report, 1),
                    "delta_version": self.delta_version,
                    "continuous_window_ingest_s_median": _median(self.window_ingest_s),
                    "continuous_window_micro_batch_s_median": _median(self.window_micro_batch_s),
                    "continuous_window_micro_batch_s_max": round(
                        max(self.window_micro_batch_s, default=0.0), 3
                    ),
                },
            )
        ]
        for key, tally in self.sinks.items():
            if tally.lag_records and not tally.window_posts:
                continue  # behind and stuck: no materialization, so its freshness policy fails
            events.append(
                dg.AssetMaterialization(
                    asset_key=self.sink_keys[key],
                    description="Continuous relay: posts settled since the last report.",
                    metadata={
                        "continuous_records_total": tally.records,
                        "continuous_accepted_total": tally.accepted,
                        "continuous_dead_lettered_total": tally.dead_lettered,
                        "continuous_posts_total": tally.posts,
                        "continuous_failures_total": tally.failures,
                        "continuous_window_records": tally.window_records,
                        "continuous_window_posts": tally.window_posts,
                        "lag_records": tally.lag_records,
                        "lag_s": round(now - tally.behind_since, 3) if tally.behind_since else 0.0,
                        "continuous_window_post_s_median": _median(tally.window_post_s),
                    },
                )
            )
        self.window_rows = self.window_micro_batches = 0
        self.window_ingest_s, self.window_micro_batch_s = [], []
        for tally in self.sinks.values():
            tally.window_records = tally.window_posts = 0
            tally.window_post_s = []
        self.last_report = now
        return events


def _number(value: object) -> int:
    """An int from a metadata value as ``post_metadata`` builds it (``MetadataValue.int`` or a plain int)."""
    inner = getattr(value, "value", value)
    return int(inner) if isinstance(inner, int | float) else 0


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 3) if values else 0.0
