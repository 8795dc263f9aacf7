"""``lakerelay.Route``: one feed delivered to one sink, with its own destination, filter and enrichment."""

from typing import Any, ClassVar

from pydantic import Field

from pipelines.components.declaration import Declaration


class Route(Declaration):
    """A feed posted to a sink. Each route has its own progress, fence, dead letters, asset, job,
    check and failure history: one route failing never holds back another."""

    EXAMPLE: ClassVar[str] = """\
# Route @name@: one feed posted to one sink, with its own progress, dead letters, asset
# (sinks/<feed>_in_<name>), job (post_<feed>_to_<name>) and failure history. Replace the feed and
# sink names with yours (`dg list defs` shows them).
type: @type@

attributes:
  feed: events
  sink: elasticsearch
  name: @name@
  # destination:            # over the sink's own values; templates: {feed}, {column}, {column|default}, {ts:%Y.%m.%d}
  #   index: "logs-{feed}-{ts:%Y.%m.%d}"
  # where: "severity IN ('error', 'critical')"   # Spark SQL: only these records are posted
  # enrich: ["upper(host) AS host_upper"]         # instead of the feed's expressions
"""

    feed: str = Field(description="Name of the feed whose records this route posts.")
    sink: str = Field(description="Name of the sink it posts to.")
    name: str | None = Field(
        default=None,
        description="The route's name, unique per feed (default: the sink's name). Its asset is "
        "sinks/<feed>_in_<name> and its job post_<feed>_to_<name>.",
    )
    destination: dict[str, Any] = Field(
        default={},
        description="Where and how records go, over the sink's defaults. Elasticsearch: index, op_type, "
        "pipeline, id_field, id_fields; Splunk HEC: index, source, sourcetype, host, fields, time_field; "
        "REST: path, method, body_format. index, pipeline, source, sourcetype and host are templates: "
        "static text, {feed}, {column}, {column|default}, {ts:%Y.%m.%d}.",
    )
    where: str | None = Field(
        default=None, description="Spark SQL predicate on the enriched records: only those are posted."
    )
    enrich: list[str] | None = Field(
        default=None, description="Spark SQL select expressions for this route, instead of the feed's."
    )
    description: str | None = None
