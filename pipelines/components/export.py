"""``lakerelay.Export``: a bulk export of a Delta table to cloud storage (parts, then a manifest)."""

from typing import ClassVar

from pydantic import Field

from pipelines.components.declaration import Declaration, only_set
from pipelines.export.spec import Compression, ExportSpec, Format, spec_from_mapping


class Export(Declaration):
    """One export dataset; unset options take ``pipelines.export.spec.ExportSpec``'s defaults. Only
    declared exports exist (the shipped defs declare one of the events feed)."""

    EXAMPLE: ClassVar[str] = """\
# Export @name@: bulk exports of a feed's Delta table, parts first and manifest.json last, under
# <export root>/@name@/<export_id>/ (LAKERELAY_EXPORT_BUCKET for S3, else .lakerelay/exports).
type: @type@

attributes:
  dataset: @name@
  feed: events              # or table: <a table under the lake, or a table URI>
  format: ndjson            # ndjson | csv | parquet
  compression: gzip         # gzip | zstd | none
  # columns: [ts, host, status_code]
  # where: "status_code >= 500"   # SQL over the table's columns
  # order_by: _batch_id           # a growing column: enables incremental exports (since)
  # keep_last: 7                  # retention
"""

    dataset: str = Field(description="Name of the export: its folder, asset and job.")
    feed: str | None = Field(
        default=None, description="The feed whose table is exported (sets table and its asset)."
    )
    table: str | None = Field(
        default=None, description="A table name under the lake or a table URI, instead of feed."
    )
    columns: list[str] | None = None
    where: str | None = Field(
        default=None, description="SQL predicate (DataFusion dialect) over the table's columns."
    )
    order_by: str | None = None
    format: Format | None = None
    compression: Compression | None = None
    level: int | None = None
    part_max_bytes: int | None = Field(default=None, gt=0)
    part_max_rows: int | None = Field(default=None, gt=0)
    batch_rows: int | None = Field(default=None, gt=0)
    keep_last: int | None = Field(default=None, ge=0)
    ttl_days: float | None = Field(default=None, ge=0)
    description: str | None = None

    def spec(self, table_of_feed: dict[str, str]) -> ExportSpec:
        """The export as the pipeline knows it (``table_of_feed``: feed name → its table name)."""
        values = only_set(self, "feed")
        if self.feed is not None:
            if self.feed not in table_of_feed:
                raise ValueError(
                    f"{self.declared_in}: export {self.dataset!r} names feed {self.feed!r}, which is not "
                    f"declared; feeds: {', '.join(sorted(table_of_feed)) or 'none'}"
                )
            values.setdefault("table", table_of_feed[self.feed])
            values["source_asset"] = self.feed
        try:
            return spec_from_mapping(values)
        except ValueError as exc:
            raise ValueError(f"{self.declared_in}: {exc}") from None
