"""``lakerelay.Export``: a bulk export of a Delta table to cloud storage (parts, then a manifest)."""

from pydantic import Field

from pipelines.components.declaration import Declaration, only_set
from pipelines.export.spec import Compression, ExportSpec, Format, spec_from_mapping


class Export(Declaration):
    """One export dataset; unset options take ``pipelines.export.spec.ExportSpec``'s defaults. Without
    any Export declared, each feed gets a gzip NDJSON full export named after it."""

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
    url_expiry_s: int | None = Field(default=None, gt=0)
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
