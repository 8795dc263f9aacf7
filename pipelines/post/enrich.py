"""Enrichment in Spark SQL, and the shape every sink receives: an id, the JSON document, a time."""

from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa
from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame


@dataclass(frozen=True)
class Enrichment:
    """A Spark SQL select expression and the columns (with the kind of type) it reads."""

    sql: str
    requires: tuple[tuple[str, str], ...]  # (column, "string" | "number" | "time")


# Default enrichment. Each expression is added only when the feed has the columns it reads, with a
# fitting type, so any feed posts with default configuration (Spark's ANSI mode would fail a
# comparison of a text column with a number at run time instead of at planning).
DEFAULT_ENRICHMENT = (
    Enrichment(
        "CASE lower(severity) WHEN 'critical' THEN 5 WHEN 'error' THEN 4 WHEN 'warning' THEN 3 "
        "WHEN 'notice' THEN 2 WHEN 'info' THEN 1 ELSE 0 END AS severity_level",
        (("severity", "string"),),
    ),
    Enrichment(
        "coalesce(bytes_in, 0) + coalesce(bytes_out, 0) AS bytes_total",
        (("bytes_in", "number"), ("bytes_out", "number")),
    ),
    Enrichment("status_code >= 400 AS is_failure", (("status_code", "number"),)),
    Enrichment(
        "NOT (dest_ip LIKE '10.%' OR dest_ip LIKE '172.%' OR dest_ip LIKE '192.168.%') AS external_destination",
        (("dest_ip", "string"),),
    ),
    Enrichment("date_format(ts, 'yyyy-MM-dd') AS event_date", (("ts", "time"),)),
)
# The events feed's enrichment as plain expressions (the demo's columns are all there).
EVENTS_ENRICHMENT = [e.sql for e in DEFAULT_ENRICHMENT]

_KINDS = {
    "string": pa.types.is_string,
    "number": lambda t: pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t),
    "time": lambda t: pa.types.is_timestamp(t) or pa.types.is_date(t),
}


def default_enrichment_for(schema: pa.Schema) -> list[str]:
    """The default expressions whose columns ``schema`` has (Spark resolves names case-insensitively)."""
    types = {f.name.lower(): f.type for f in schema}
    return [
        e.sql
        for e in DEFAULT_ENRICHMENT
        if all(column.lower() in types and _KINDS[kind](types[column.lower()]) for column, kind in e.requires)
    ]


class EnrichmentError(ValueError):
    """A configured enrichment expression does not fit the feed's table."""


def enrich(frame: DataFrame, expressions: list[str], feed_name: str = "", resolve: bool = True) -> DataFrame:
    """``frame`` with ``expressions`` added; ``resolve=False`` skips the check (a round trip on Spark
    Connect) for a shape already resolved on an earlier frame of the same schema."""
    if not expressions:
        return frame
    if not resolve:
        return frame.selectExpr("*", *expressions)
    try:
        enriched = frame.selectExpr("*", *expressions)
        _ = enriched.columns  # Spark Connect analyses lazily: resolve the expressions here, before posting
    # Spark's verdict on the expression (classic or Connect: an unresolved column, a type mismatch, a
    # syntax error, which ParseException is): a person fixes it. A server that went away is not a verdict:
    # it goes up as a Spark failure, which is retried.
    except AnalysisException as exc:
        first_line = str(exc).strip().splitlines()[0][:500] if str(exc).strip() else type(exc).__name__
        raise EnrichmentError(
            f"feed {feed_name!r}: an enrichment expression does not fit its table ({first_line}). The "
            f"table's columns: {', '.join(c for c in frame.columns if not c.startswith('_'))}. Fix the "
            f"feed's `enrich` list in the feeds file (or the run's enrich_expressions); `enrich: []` posts "
            f"records as they are."
        ) from None
    return enriched


def select_where(frame: DataFrame, predicate: str | None, resolve: bool = True) -> DataFrame:
    """The records a route posts: those of ``frame`` for which ``predicate`` (Spark SQL) is true.

    Records it leaves out are settled with the rest: a route's filter is a decision, not a backlog.
    ``resolve=False``: as ``enrich``'s.
    """
    if not predicate:
        return frame
    if not resolve:
        return frame.where(predicate)
    try:
        selected = frame.where(predicate)
        _ = selected.columns  # Spark Connect analyses lazily: resolve the predicate before posting
    # Spark's verdict on the expression (classic or Connect: an unresolved column, a type mismatch, a
    # syntax error, which ParseException is): a person fixes it. A server that went away is not a verdict:
    # it goes up as a Spark failure, which is retried.
    except AnalysisException as exc:
        first_line = str(exc).strip().splitlines()[0][:500] if str(exc).strip() else type(exc).__name__
        raise EnrichmentError(
            f"the route's where {predicate!r} does not fit its records ({first_line}). Their columns: "
            f"{', '.join(c for c in frame.columns if not c.startswith('_'))}. Fix `where` in the route's "
            f"defs.yaml."
        ) from None
    return selected


def to_sink_records(
    frame: DataFrame,
    id_expression: str | None,
    time_field: str | None,
    destination: Sequence[tuple[str, str]] = (),
    columns: Sequence[str] | None = None,
) -> DataFrame:
    """Columns ``_id`` (string), ``_doc`` (JSON bytes, made by Spark's compiled encoder), ``_time`` (epoch s).

    ``destination``: per-record destination columns ``(name, SQL)`` of a templated destination
    (``pipelines/post/destination.py``), e.g. ``_index``; none when every destination is static.

    Columns starting with ``_`` are lakerelay's bookkeeping and stay out of the document. Timestamps
    are written in one canonical form, RFC 3339 in UTC with microseconds (``2026-01-01T00:00:10.850000Z``),
    whatever form the landing file used: Delta stores the instant, not its text.

    ``columns``: ``frame``'s columns when known already (each lookup is a round trip on Spark Connect).
    """
    columns = frame.columns if columns is None else list(columns)
    document_columns = ", ".join(f"`{c}`" for c in columns if not c.startswith("_"))
    # Microseconds and an explicit zone: Spark's default JSON timestamp format drops digits.
    options = "map('timestampFormat', 'yyyy-MM-dd''T''HH:mm:ss.SSSSSSXXX')"
    with_doc = frame.selectExpr(
        "*", f"cast(to_json(struct({document_columns}), {options}) as binary) AS _doc"
    )
    time_sql = (
        f"cast(unix_micros(`{time_field}`) as double) / 1e6"
        if time_field and time_field in columns
        else "cast(NULL as double)"
    )
    return with_doc.selectExpr(
        f"{id_expression or 'cast(NULL as string)'} AS _id",
        "_doc",
        f"{time_sql} AS _time",
        *(f"{sql} AS `{name}`" for name, sql in destination),
    )
