"""Dagster resources of lakerelay: storage (local/S3), REST sinks and export targets.

Resources know nothing about assets; assets, ops and sensors get them by injection.
"""
