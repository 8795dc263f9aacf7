"""The dead-letter replay job: typed run config, one op per sink (no Spark), its log and metadata."""

import time
from datetime import UTC, datetime
from typing import Any

import dagster as dg
import pyarrow as pa
from pydantic import Field

from pipelines.post.letters import (
    REJECTED,
    REPLAY_TABLE,
    LetterFilter,
    Selection,
    parse_instant,
    select_dead_letters,
)
from pipelines.post.replay import ReplayOutcome, new_replay_id, post_letters, record_replay, replay_rows
from pipelines.run_defaults import INFO_LOGS
from resources.arrow import pc
from resources.lake import LakeResource
from resources.run_tags import REPLAY_TAG, SINK_TAG
from resources.sinks.resource import RestSinkResource

PREVIEW_ROWS = 50  # letters listed in logs and in the job's output; the tables hold all of them


class ReplayConfig(dg.Config):
    source_table: str | None = Field(
        default=None,
        description="Only letters of this source table (a feed's table name, e.g. 'events'). Default: all.",
    )
    batch_to: int | None = Field(
        default=None, description="Only letters of the post run that settled through this ingest batch."
    )
    error_type: str | None = Field(
        default=None,
        description="Only letters with exactly this error type (e.g. document_parsing_exception, http_400).",
    )
    reason_contains: str | None = Field(
        default=None, description="Only letters whose reason contains this text (case-insensitive)."
    )
    since: str | None = Field(
        default=None,
        description="Only letters dead-lettered at or after this ISO 8601 instant (naive = UTC).",
    )
    until: str | None = Field(
        default=None, description="Only letters dead-lettered before this ISO 8601 instant (naive = UTC)."
    )
    limit: int | None = Field(
        default=None, gt=0, description="Replay at most this many letters, oldest first. Default: all."
    )
    include_replayed: bool = Field(
        default=False,
        description="Also replay letters an earlier replay already got accepted (ids make it an overwrite "
        "in Elasticsearch; HEC would index them again).",
    )
    dry_run: bool = Field(
        default=False, description="Select and report the letters, post nothing and record nothing."
    )


def replay_op_name(sink_key: str) -> str:
    return f"replay_{sink_key}_dead_letters"


def replay_job_name(sink_key: str) -> str:
    return f"replay_dead_letters_to_{sink_key}"


def letter_filter(sink_name: str, config: ReplayConfig) -> LetterFilter:
    """The filter a run config asks for; bad values raise ValueError with a message naming the field."""
    return LetterFilter(
        sink=sink_name,
        source_table=config.source_table or None,
        batch_to=config.batch_to,
        error_type=config.error_type or None,
        reason_contains=config.reason_contains or None,
        since=parse_instant(config.since, "since"),
        until=parse_instant(config.until, "until"),
        limit=config.limit,
        include_replayed=config.include_replayed,
    )


def _preview(letters: pa.Table) -> list[dict[str, Any]]:
    columns = ["source_table", "batch_to", "record_id", "status", "error_type", "reason", "dead_lettered_at"]
    rows = letters.select(columns).slice(0, PREVIEW_ROWS).to_pylist()
    for row in rows:
        row["reason"] = (row["reason"] or "")[:200]
        row["dead_lettered_at"] = row["dead_lettered_at"].isoformat() if row["dead_lettered_at"] else None
    return rows


def run_replay(
    context: dg.OpExecutionContext, lake: LakeResource, sink: RestSinkResource, config: ReplayConfig
) -> dict[str, Any]:
    """Select, post and record one replay; returns the summary the job outputs (and the CLI prints)."""
    started = time.perf_counter()
    try:
        selection_filter = letter_filter(sink.sink_name, config)
    except ValueError as exc:
        raise dg.Failure(description=f"bad replay config: {exc}") from None
    selection = select_dead_letters(lake, selection_filter)
    letters = selection.letters
    summary = _selection_summary(sink.sink_name, selection_filter.describe(), config.dry_run, selection)
    context.log.info(
        f"dead letters of sink {sink.sink_name} matching {selection_filter.describe()}: {selection.matched}; "
        f"{selection.skipped_replayed} already replayed and skipped; {letters.num_rows} selected"
    )
    if config.dry_run or not letters.num_rows:
        _log_not_posted(context, config.dry_run, summary["letters"])
        return summary

    sink.check_connection()
    replay_id = new_replay_id(context.run_id)
    outcome = post_letters(sink, letters)
    rows = replay_rows(replay_id, letters, outcome, datetime.now(UTC))
    if rows.num_rows:
        record_replay(lake, rows, replay_id)
    rejected = rows.filter(pc.equal(rows["outcome"], REJECTED))
    summary.update(
        replay_id=replay_id if rows.num_rows else "",
        replayed=letters.num_rows - len(outcome.without_id),
        skipped_without_id=len(outcome.without_id),
        accepted=len(outcome.accepted),
        rejected_again=len(outcome.rejected),
        rejections=rejected.select(["record_id", "status", "error_type", "reason"])
        .slice(0, PREVIEW_ROWS)
        .to_pylist(),
    )
    if outcome.without_id:
        context.log.warning(
            f"{len(outcome.without_id)} letters have no record id and were not posted: an Elasticsearch "
            f"document needs its original id, or a replay would add a second copy"
        )
    if outcome.pending or outcome.unaccounted:
        raise _incomplete_failure(sink.sink_name, outcome, summary)
    elapsed = time.perf_counter() - started
    context.log.info(
        f"replay {replay_id} to sink {sink.sink_name}: {len(outcome.accepted)} accepted, "
        f"{len(outcome.rejected)} rejected again of {letters.num_rows} letters ({outcome.posted} documents) "
        f"in {elapsed:.1f}s; recorded in table {REPLAY_TABLE}"
    )
    if outcome.rejected:
        first = summary["rejections"][0]
        context.log.warning(
            f"{len(outcome.rejected)} letters were rejected again (first: record {first['record_id']!r}, "
            f"{first['status']} {first['error_type']}: {(first['reason'] or '')[:300]}); they stay eligible "
            f"for a later replay once the cause is fixed"
        )
    return summary


def _selection_summary(sink_name: str, described: str, dry_run: bool, selection: Selection) -> dict[str, Any]:
    """The replay's summary before anything is posted: what the filter matched and selected."""
    return {
        "sink": sink_name,
        "filter": described,
        "dry_run": dry_run,
        "matched": selection.matched,
        "skipped_already_replayed": selection.skipped_replayed,
        "selected": selection.letters.num_rows,
        "replayed": 0,
        "skipped_without_id": 0,
        "accepted": 0,
        "rejected_again": 0,
        "replay_id": "",
        "letters": _preview(selection.letters),
        "rejections": [],
    }


def _log_not_posted(context: dg.OpExecutionContext, dry_run: bool, preview: list[dict[str, Any]]) -> None:
    """Say why nothing was posted; a dry run lists the letters it would replay."""
    if dry_run:
        for row in preview:
            context.log.info(
                f"would replay {row['source_table']} batch {row['batch_to']} record {row['record_id']!r}: "
                f"{row['error_type']} {row['reason']}"
            )
    context.log.info("dry run: nothing posted, nothing recorded" if dry_run else "nothing to replay")


def _incomplete_failure(sink_name: str, outcome: ReplayOutcome, summary: dict[str, Any]) -> dg.Failure:
    """Records pending at the deadline, or unexplained: which of the others were accepted is unknown, so
    none is recorded as replayed; they stay eligible and the next replay posts them again under the same ids."""
    why = (
        f"{outcome.pending} documents were still pending when the delivery deadline passed"
        f"{': ' + outcome.pending_reason if outcome.pending_reason else ''}"
        if outcome.pending
        else f"the writer's totals leave {outcome.unaccounted} documents unexplained"
    )
    return dg.Failure(
        description=(
            f"replay to sink {sink_name} incomplete: {why}. Recorded only the {len(outcome.rejected)} "
            f"letters rejected again; no letter was recorded as accepted, so all stay eligible. "
            f"Re-run the replay once the sink is healthy (same ids: no duplicates in Elasticsearch)."
        ),
        metadata={k: summary[k] for k in ("selected", "replayed", "rejected_again", "replay_id")},
    )


def build_replay_job(sink_key: str) -> dg.JobDefinition:
    """A job with one op that replays dead letters of the sink resource ``sink_key`` (no Spark)."""

    @dg.op(
        name=replay_op_name(sink_key),
        required_resource_keys={sink_key, "lake"},
        out=dg.Out(dict, description="Summary: counts, the replay id, the first letters selected."),
        description=f"Re-post chosen dead letters to {sink_key} with their ids and record the replay in "
        f"table {REPLAY_TABLE}.",
    )
    def replay_op(context: dg.OpExecutionContext, config: ReplayConfig) -> dg.Output:
        summary = run_replay(context, context.resources.lake, getattr(context.resources, sink_key), config)
        metadata = {
            name: int(summary[name])
            for name in (
                "matched",
                "skipped_already_replayed",
                "selected",
                "replayed",
                "skipped_without_id",
                "accepted",
            )
        }
        metadata["rejected_again"] = int(summary["rejected_again"])
        metadata["replay_id"] = summary["replay_id"]
        metadata["dry_run"] = bool(summary["dry_run"])
        metadata["filter"] = summary["filter"]
        return dg.Output(summary, metadata=metadata)

    @dg.job(
        name=replay_job_name(sink_key),
        config=INFO_LOGS,
        tags={SINK_TAG: sink_key, REPLAY_TAG: "dead_letters"},
        description=f"Replay dead letters to sink {sink_key}: same ids, recorded in {REPLAY_TABLE}.",
    )
    def replay_job() -> None:
        replay_op()

    return replay_job
