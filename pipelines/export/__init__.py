"""Bulk exports of Delta tables: parts plus a ``manifest.json`` written last, to a folder or S3.

One job per module: ``spec`` (what to export), ``cursor`` (the ``since`` token), ``read`` (Delta ->
record batches), ``encode`` and ``compress`` (batches -> part bytes), ``stages`` (threads and bounded
queues), ``parts`` (the pipeline's stages and the part uploads), ``manifest`` (layout, manifest,
verification), ``exporter`` (``export_table``), ``check`` (part bytes vs manifest), ``retention``,
``metadata`` (kinds and metadata shown in Dagster), ``assets`` (the Dagster definitions), ``cli``
and ``client`` (``lakerelay-export``).
"""

# First, before any module of this package can import deltalake or polars: ``alloc`` sets the
# allocator options their jemalloc reads once, when the library loads. Python runs this file before
# any ``pipelines.export.<module>``, so every way into the export path passes here first. It cannot
# help if something outside the package loaded deltalake earlier in the process (see alloc.py).
from pipelines.export import alloc  # noqa: F401
