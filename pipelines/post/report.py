"""What a post run reports: totals over its Spark tasks, the failures they imply, the asset's metadata.

Metadata keys are grouped by prefix, so the asset's plots (sorted by name) keep related numbers
together, and units are in the names (``_s``, ``_ms``, ``_bytes``, ``_per_s``): the record accounting
(``records``, ``accepted``, ``dead_lettered``, ``pending``, as users and the dead-letter check read
them), then ``dead_letter_rate``, ``http_*`` (calls, retries, latency, concurrency), ``run_*``,
``source_*`` (what was read) and ``capacity_*`` (the plan), plus Dagster's ``dagster/uri`` (where the
documents went) and ``dagster/row_count`` (records the sink accepted in this run, as Dagster's dlt and
Sling integrations count rows loaded). Only facts of the run are plotted: settings such as the
dead-letter threshold are in the check's metadata, and HEC's acknowledgement counts only on HEC.
"""

from dataclasses import dataclass, replace

import dagster as dg
import pyarrow as pa

from pipelines.post.capacity import plan_capacity
from pipelines.post.config import PostConfig
from pipelines.post.plan import PostPlan
from pipelines.post.post_stage import DEAD_LETTER, STATS
from resources.arrow import pc

_SUMMED = (
    "records_in",
    "accepted",
    "retried",
    "pending",
    "requests",
    "attempts",
    "records_sent",
    "bytes",
    "ack_timeouts",
    "concurrency_decreases",
)


@dataclass(frozen=True)
class PostTotals:
    """The post stage's result rows, added up over tasks (``rejected``: the dead-letter rows)."""

    records_in: int
    accepted: int
    retried: int
    pending: int
    requests: int
    attempts: int
    records_sent: int
    bytes: int
    ack_timeouts: int
    concurrency_decreases: int
    concurrency_peak: int
    tasks: int
    task_seconds: float
    startup_seconds: float
    reasons: list[str]
    latencies_ms: pa.Array
    rejected: pa.Table

    @property
    def dead(self) -> int:
        return self.rejected.num_rows

    def plus(self, other: "PostTotals") -> "PostTotals":
        """Both runs' totals: a run that resumed another's plan before posting its own posts two."""
        return replace(
            self,
            **{name: getattr(self, name) + getattr(other, name) for name in _SUMMED},
            concurrency_peak=max(self.concurrency_peak, other.concurrency_peak),
            tasks=self.tasks + other.tasks,
            task_seconds=self.task_seconds + other.task_seconds,
            startup_seconds=self.startup_seconds + other.startup_seconds,
            reasons=self.reasons + other.reasons,
            latencies_ms=pa.concat_arrays([self.latencies_ms, other.latencies_ms]),
            rejected=pa.concat_tables([self.rejected, other.rejected]),
        )

    @classmethod
    def of(cls, results: pa.Table) -> "PostTotals":
        stats = results.filter(pc.equal(results["kind"], STATS))

        def total(name: str) -> float:
            return pc.sum(stats[name]).as_py() or 0

        latencies = [v for row in stats["latencies_ms"].to_pylist() for v in (row or [])]
        return cls(
            **{name: int(total(name)) for name in _SUMMED},
            concurrency_peak=int(pc.max(stats["concurrency_peak"]).as_py() or 0),
            tasks=stats.num_rows,
            task_seconds=float(total("elapsed_s")),
            startup_seconds=float(total("startup_s")),
            reasons=[r for r in stats["reason"].to_pylist() if r],
            latencies_ms=pa.array(latencies, pa.float64()),
            rejected=results.filter(pc.equal(results["kind"], DEAD_LETTER)),
        )


def pending_failure(sink_name: str, totals: PostTotals, plan: PostPlan) -> dg.Failure:
    """Records still pending at the delivery deadline: fail without settling; the next run resumes."""
    t = totals
    return dg.Failure(
        description=(
            f"sink {sink_name}: {t.pending} of {t.records_in} records are still pending: "
            f"{t.reasons[0] if t.reasons else 'transient failures'}. {t.accepted} were accepted and "
            f"{t.dead} rejected; nothing is dead-lettered for a transient failure and progress moved "
            f"only over the groups that settled whole, so the next run resumes with the others (ids "
            f"make resends overwrite in Elasticsearch; Splunk HEC may receive their accepted records "
            f"again). If the sink stays down, check it; raise delivery_timeout_s to wait longer."
        ),
        # The run already waited delivery_timeout_s: the table sensor's backoff asks again later.
        allow_retries=False,
        metadata={
            "records": t.records_in,
            "accepted": t.accepted,
            "rejected": t.dead,
            "pending": t.pending,
            "http_retried_records": t.retried,
            "http_attempts": t.attempts,
            "source_batch_from_exclusive": plan.batch_from,
            "source_batch_to": plan.batch_to,
        },
    )


def unaccounted_failure(sink_name: str, totals: PostTotals) -> dg.Failure | None:
    """None when every record read was accepted or dead-lettered, else the failure that says not."""
    t = totals
    if t.accepted + t.dead == t.records_in:
        return None
    return dg.Failure(
        description=(
            f"sink {sink_name}: {t.records_in} records read but {t.accepted} accepted and {t.dead} "
            f"dead-lettered; progress did not move over the groups short of records, the next run "
            f"re-posts them (ids make it idempotent)."
        )
    )


def _int(value: int) -> dg.MetadataValue:
    return dg.MetadataValue.int(value)


def _float(value: float, digits: int = 3) -> dg.MetadataValue:
    return dg.MetadataValue.float(round(float(value), digits))


@dataclass(frozen=True)
class PostedPlan:
    """One plan a run posted and settled whole: what its materialization reports."""

    totals: PostTotals
    plan: PostPlan
    seconds: float


def post_metadata(
    posted: list[PostedPlan], config: PostConfig, sink_uri: str, sink_kind: str
) -> dict[str, dg.MetadataValue]:
    """The sink asset's materialization metadata for a run that settled every plan it read (usually
    one; two when it first finished a plan an earlier run had settled in part)."""
    t = posted[0].totals
    for more in posted[1:]:
        t = t.plus(more.totals)
    first, last = posted[0].plan, posted[-1].plan
    elapsed_s = sum(p.seconds for p in posted)
    metadata = {
        "dagster/uri": dg.MetadataValue.url(sink_uri),
        "dagster/row_count": _int(t.accepted),
        "records": _int(t.records_in),
        "accepted": _int(t.accepted),
        "dead_lettered": _int(t.dead),
        "pending": _int(t.pending),
        "dead_letter_rate": _float(t.dead / t.records_in if t.records_in else 0.0, 6),
        "http_requests": _int(t.requests),
        "http_attempts": _int(t.attempts),  # requests plus network errors
        "http_retried_records": _int(t.retried),  # records resent after a transient failure
        "http_bytes_sent": _int(t.bytes),
        "http_concurrency_peak": _int(t.concurrency_peak),
        "http_concurrency_decreases": _int(t.concurrency_decreases),
        "run_tasks": _int(t.tasks),
        "run_duration_s": _float(elapsed_s),
        "run_records_per_s": _float(t.records_in / elapsed_s if elapsed_s else 0.0, 1),
        "source_delta_version": _int(last.delta_version),
        "source_batch_from_exclusive": _int(first.batch_from),
        "source_batch_to": _int(last.batch_to),
        "source_files_read": _int(sum(len(p.plan.files) for p in posted)),
    }
    if sink_kind == "splunk":  # indexer acknowledgement is HEC's alone
        metadata["http_ack_timeouts"] = _int(t.ack_timeouts)
    if len(t.latencies_ms):
        for q in (0.5, 0.95, 0.99):
            quantile = pc.quantile(t.latencies_ms, q=q)[0].as_py()
            metadata[f"http_latency_p{int(q * 100)}_ms"] = _float(quantile, 2)
        capacity = plan_capacity(
            config.target_records_per_s,
            t.requests,
            t.records_sent,
            float(pc.mean(t.latencies_ms).as_py()) / 1000,
            t.records_in,
            t.task_seconds,
            config.api_time_fraction,
            tasks=t.tasks,
            startup_seconds=t.startup_seconds,
        )
        if capacity is not None:
            metadata.update(capacity.metadata())
    return metadata
