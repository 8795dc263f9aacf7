"""Which dead letters to replay: reading them, naming each one, filtering, and what was replayed before.

A dead letter is a record the sink rejected (a mapping or parse 4xx). A letter has no id column of its
own (HEC letters carry no record id at all), so its identity is a hash of its stored content plus an
occurrence number among identical rows: identical rows pass every filter together, so the numbering is
the same whatever a replay selects. Every replayed letter gets a row in the Delta table
``dead_letter_replays``: letters accepted there are skipped by later replays, letters rejected again
stay eligible.
"""

import hashlib
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import pyarrow as pa
from deltalake.exceptions import TableNotFoundError

from pipelines.post.dead_letters import DEAD_LETTER_SCHEMA, DEAD_LETTER_TABLE
from resources.arrow import pc
from resources.delta_arrow import read_delta
from resources.lake import LakeResource

REPLAY_TABLE = "dead_letter_replays"
REPLAY_SCHEMA = pa.schema(
    [
        ("replay_id", pa.string()),
        ("sink", pa.string()),
        ("source_table", pa.string()),
        ("record_id", pa.string()),
        ("batch_to", pa.int64()),
        ("dead_lettered_at", pa.timestamp("us", tz="UTC")),
        ("replayed_at", pa.timestamp("us", tz="UTC")),
        ("outcome", pa.string()),  # "accepted" | "rejected"
        ("status", pa.int32()),
        ("error_type", pa.string()),
        ("reason", pa.string()),
        ("letter_id", pa.string()),  # which dead letter this row is about (see the module docstring)
    ]
)
ACCEPTED, REJECTED = "accepted", "rejected"


# -- selecting --------------------------------------------------------------------------------------
def parse_instant(text: str | None, name: str) -> datetime | None:
    """An ISO 8601 instant (a date alone means its midnight; naive means UTC), or None when unset."""
    if text is None or not text.strip():
        return None
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{name}={text!r} is not an ISO 8601 date or time; use e.g. 2026-01-31 or 2026-01-31T12:00:00Z"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class LetterFilter:
    """Which dead letters of one sink to replay. Unset fields match everything."""

    sink: str
    source_table: str | None = None
    batch_to: int | None = None
    error_type: str | None = None  # exact
    reason_contains: str | None = None  # substring, case-insensitive
    since: datetime | None = None  # dead_lettered_at >= since
    until: datetime | None = None  # dead_lettered_at < until
    limit: int | None = None
    include_replayed: bool = False

    def __post_init__(self) -> None:
        if self.since and self.until and self.since >= self.until:
            raise ValueError(
                f"since ({self.since.isoformat()}) must be before until ({self.until.isoformat()})"
            )
        if self.limit is not None and self.limit <= 0:
            raise ValueError(f"limit must be a positive number, got {self.limit}")

    def describe(self) -> str:
        parts = [f"sink={self.sink}"]
        for name in ("source_table", "batch_to", "error_type", "reason_contains", "limit"):
            value = getattr(self, name)
            if value is not None:
                parts.append(f"{name}={value!r}")
        if self.since:
            parts.append(f"since={self.since.isoformat()}")
        if self.until:
            parts.append(f"until={self.until.isoformat()}")
        if self.include_replayed:
            parts.append("include_replayed")
        return ", ".join(parts)


@dataclass
class Selection:
    letters: pa.Table  # dead-letter columns plus letter_id, oldest first
    matched: int  # letters matching the filters, before skipping replayed ones and the limit
    skipped_replayed: int  # matching letters skipped because a replay already got them accepted


def _read_table(lake: LakeResource, name: str, filters: Any) -> pa.Table | None:
    try:
        table = lake.table(name)
    except TableNotFoundError:
        return None
    return read_delta(table, lake.filesystem_settings(), filter=filters)


def _equals(column: str, value: Any, kind: pa.DataType) -> Any:
    import pyarrow.dataset as ds  # the expression type delta-rs filters take

    return ds.field(column) == pa.scalar(value, kind)


def read_dead_letters(lake: LakeResource, sink: str | None, source_table: str | None = None) -> pa.Table:
    """The dead letters of ``sink`` (all sinks when None), with ``letter_id``; empty when there are none."""
    condition = None
    for column, value in (("sink", sink), ("source_table", source_table)):
        if value is not None:
            term = _equals(column, value, pa.string())
            condition = term if condition is None else condition & term
    letters = _read_table(lake, DEAD_LETTER_TABLE, condition)
    if letters is None:
        letters = DEAD_LETTER_SCHEMA.empty_table()
    letters = letters.select(DEAD_LETTER_SCHEMA.names).cast(DEAD_LETTER_SCHEMA)
    return letters.append_column("letter_id", pa.array(letter_ids(letters), pa.string()))


def letter_ids(letters: pa.Table) -> list[str]:
    """A stable id per dead-letter row: a hash of everything stored about it, numbered among identical rows."""
    seen: Counter[str] = Counter()
    ids = []
    for row in letters.to_pylist():
        when = row["dead_lettered_at"]
        key = [row[name] for name in DEAD_LETTER_SCHEMA.names if name != "dead_lettered_at"]
        key.append(when.isoformat() if when else None)
        digest = hashlib.sha1(orjson.dumps(key)).hexdigest()
        n = seen[digest]
        seen[digest] += 1
        ids.append(digest if n == 0 else f"{digest}-{n}")
    return ids


def replayed_letter_ids(lake: LakeResource, sink: str | None) -> set[str]:
    """Letters a replay got accepted by ``sink`` (by any sink when None)."""
    condition = _equals("outcome", ACCEPTED, pa.string())
    if sink is not None:
        condition = condition & _equals("sink", sink, pa.string())
    rows = _read_table(lake, REPLAY_TABLE, condition)
    return set() if rows is None else set(rows["letter_id"].to_pylist())


def select_dead_letters(lake: LakeResource, selection: LetterFilter) -> Selection:
    letters = read_dead_letters(lake, selection.sink, selection.source_table)
    mask = pa.array([True] * letters.num_rows, pa.bool_())
    if selection.batch_to is not None:
        mask = pc.and_(mask, pc.equal(letters["batch_to"], selection.batch_to))
    if selection.error_type is not None:
        mask = pc.and_(mask, pc.equal(letters["error_type"], selection.error_type))
    if selection.reason_contains:
        found = pc.match_substring(letters["reason"], selection.reason_contains, ignore_case=True)
        mask = pc.and_(mask, pc.fill_null(found, False))
    when = pa.timestamp("us", tz="UTC")
    if selection.since is not None:
        mask = pc.and_(mask, pc.greater_equal(letters["dead_lettered_at"], pa.scalar(selection.since, when)))
    if selection.until is not None:
        mask = pc.and_(mask, pc.less(letters["dead_lettered_at"], pa.scalar(selection.until, when)))
    letters = letters.filter(pc.fill_null(mask, False))
    matched = letters.num_rows
    skipped = 0
    if not selection.include_replayed and matched:
        done = replayed_letter_ids(lake, selection.sink)
        fresh = pc.invert(pc.is_in(letters["letter_id"], value_set=pa.array(sorted(done), pa.string())))
        letters = letters.filter(fresh)
        skipped = matched - letters.num_rows
    # Oldest first, so a limited replay works through the backlog in the order it arrived.
    letters = letters.sort_by([("dead_lettered_at", "ascending"), ("batch_to", "ascending")])
    if selection.limit is not None:
        letters = letters.slice(0, selection.limit)
    return Selection(letters, matched, skipped)


def summarize_dead_letters(
    lake: LakeResource, sink: str | None = None, source_table: str | None = None
) -> list[dict[str, Any]]:
    """Counts per (sink, source table, error type, batch): letters, replayed (accepted), still waiting."""
    letters = read_dead_letters(lake, sink, source_table)
    done = replayed_letter_ids(lake, None)
    groups: dict[tuple, dict[str, Any]] = {}
    for row in letters.select(["sink", "source_table", "error_type", "batch_to", "letter_id"]).to_pylist():
        key = (row["sink"], row["source_table"], row["error_type"] or "", row["batch_to"])
        group = groups.setdefault(
            key,
            {
                "sink": key[0],
                "source_table": key[1],
                "error_type": key[2],
                "batch_to": key[3],
                "letters": 0,
                "replayed": 0,
            },
        )
        group["letters"] += 1
        group["replayed"] += row["letter_id"] in done
    rows = [groups[k] for k in sorted(groups, key=lambda k: (k[0], k[1], k[3], k[2]))]
    for row in rows:
        row["waiting"] = row["letters"] - row["replayed"]
    return rows
