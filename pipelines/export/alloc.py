"""Allocator settings for exports; imported before deltalake and polars, whose jemalloc reads them once.

deltalake (DataFusion) and polars each link their own jemalloc, configured from ``_RJEM_MALLOC_CONF``
when the library loads. Left alone, freed pages stay resident for a while (10 s in deltalake's
jemalloc unless polars set the variable first, 0.5 s plus 1 s of MADV_FREE'd pages, still counted in
RSS, in polars'). An export frees memory as fast as it allocates it (every batch is read, encoded and
dropped), so retained pages grew with the run: peak RSS 346 MB at 1M rows and 391 MB at 12M.
Measured (bench.export profile, 8k-row batches): returning freed pages at once (decay 0) made it flat
(324 / 329 MB) but cost ~10% of gzip CSV speed in madvise calls, enough to lose to polars' sink_csv;
0.5 s of dirty decay and no MADV_FREE stage kept the speed (bench.export at 12M rows: gzip NDJSON
2.20x the deltalake stream, gzip CSV 1.05x polars) for part of the gain (322 / 341 MB).

This only works if it runs before either library is first imported, hence its import at the top of
``pipelines/__init__.py`` and ``pipelines/export/__init__.py``, which Python runs before any module of
those packages; a value already
in the environment is left as it is. Modules imported earlier (``pipelines.deployment``,
``resources.lake``) must not import deltalake or polars at their top for the same reason.
"""

import os

JEMALLOC_CONF = "dirty_decay_ms:500,muzzy_decay_ms:0"

os.environ.setdefault("_RJEM_MALLOC_CONF", JEMALLOC_CONF)
