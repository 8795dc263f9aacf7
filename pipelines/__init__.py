"""lakerelay's assets, ops, jobs and the one Definitions object (pipelines.definitions.defs)."""
