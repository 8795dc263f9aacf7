"""lakerelay's assets, ops, jobs and the one Definitions object (pipelines.definitions.defs)."""

# Before any lakerelay module can load deltalake or polars (the continuous run's modules sort before
# the export package's, and load the ingest path): their jemalloc reads its options once, at load.
from pipelines.export import alloc  # noqa: F401
