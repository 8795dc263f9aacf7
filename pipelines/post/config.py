"""The post job's run configuration (Dagster config: no ``from __future__ import annotations`` here)."""

import dagster as dg
from pydantic import Field


class PostConfig(dg.Config):
    max_tasks: int | None = Field(
        default=None,
        gt=0,
        description=(
            "Spark tasks posting in parallel; data files are split into row ranges to feed them. "
            "Default: Spark's default parallelism (local[N]: N; a cluster: its executor cores). Each "
            "task already keeps max_in_flight requests open, so more tasks than cores only add contention."
        ),
    )
    group_records: int = Field(
        default=50_000,
        gt=0,
        description=(
            "Records per settled group: progress moves as each group of at most this many records is "
            "fully accepted or dead-lettered, one Spark task per group. A crash, a kill or a lease "
            "takeover re-sends at most the groups in flight: group_records x max_tasks records. Smaller "
            "groups lower that bound and cost a Spark job each (~0.4 s of 2 busy cores here)."
        ),
    )
    target_records_per_s: float = Field(
        default=50_000, gt=0, description="Throughput the capacity planner sizes tasks and cores for."
    )
    api_time_fraction: float = Field(
        default=0.75,
        gt=0,
        le=1,
        description="Capacity planner's line G: share of a core's time spent calling the API.",
    )
    dead_letter_max_rate: float = Field(
        default=0.01,
        ge=0,
        le=1,
        description="The dead_letter_rate asset check fails when dead-lettered / records exceeds this.",
    )
    enrich_expressions: list[str] | None = Field(
        default=None,
        description="Spark SQL select expressions added to every record before posting, for this run. "
        "Default: the feed's `enrich` list from the feeds file, else the default enrichment (each of its "
        "expressions only where the table has the columns it reads). [] posts records as they are.",
    )
    check_executors: bool = Field(
        default=True,
        description="Before posting, run one small Spark job whose tasks look up the packages the post "
        "stage needs, so an executor Python that lacks one fails the run with its name before a record is "
        "sent. Once per Spark application (per session on Spark Connect) and code version. Off: the code "
        "is shipped without looking whether the executors already have it.",
    )
    lease_ttl_s: float = Field(
        default=60.0,
        ge=2,
        description="Life of this run's lease on the sink's progress; the driver renews it every quarter "
        "of it. When the driver dies, its Spark tasks stop posting and another run may take over once "
        "this has passed since the last renewal.",
    )
    lease_wait_s: float = Field(
        default=120.0,
        ge=0,
        description="How long a run waits for another run's lease on the same sink and table to end "
        "before it fails without posting. Twice the default TTL: outlives a dead driver's lease.",
    )
