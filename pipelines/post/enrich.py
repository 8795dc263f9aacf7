"""Enrichment in Spark SQL, and the shape every sink receives: an id, the JSON document, a time."""

from pyspark.sql import DataFrame

# Default enrichment of the events feed; each entry is a Spark SQL select expression.
EVENTS_ENRICHMENT = [
    "CASE lower(severity) WHEN 'critical' THEN 5 WHEN 'error' THEN 4 WHEN 'warning' THEN 3 "
    "WHEN 'notice' THEN 2 WHEN 'info' THEN 1 ELSE 0 END AS severity_level",
    "coalesce(bytes_in, 0) + coalesce(bytes_out, 0) AS bytes_total",
    "status_code >= 400 AS is_failure",
    "NOT (dest_ip LIKE '10.%' OR dest_ip LIKE '172.%' OR dest_ip LIKE '192.168.%') AS external_destination",
    "date_format(ts, 'yyyy-MM-dd') AS event_date",
]


def enrich(frame: DataFrame, expressions: list[str]) -> DataFrame:
    return frame.selectExpr("*", *expressions) if expressions else frame


def to_sink_records(frame: DataFrame, id_expression: str | None, time_field: str | None) -> DataFrame:
    """Columns ``_id`` (string), ``_doc`` (JSON bytes, made by Spark's compiled encoder), ``_time`` (epoch s).

    Columns starting with ``_`` are lakerelay's bookkeeping and stay out of the document.
    """
    document_columns = ", ".join(f"`{c}`" for c in frame.columns if not c.startswith("_"))
    # Microseconds and an explicit zone: Spark's default JSON timestamp format drops digits.
    options = "map('timestampFormat', 'yyyy-MM-dd''T''HH:mm:ss.SSSSSSXXX')"
    with_doc = frame.selectExpr(
        "*", f"cast(to_json(struct({document_columns}), {options}) as binary) AS _doc"
    )
    time_sql = (
        f"cast(unix_micros(`{time_field}`) as double) / 1e6"
        if time_field and time_field in frame.columns
        else "cast(NULL as double)"
    )
    return with_doc.selectExpr(
        f"{id_expression or 'cast(NULL as string)'} AS _id",
        "_doc",
        f"{time_sql} AS _time",
    )
