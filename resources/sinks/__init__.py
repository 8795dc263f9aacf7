"""REST sinks: Elasticsearch `_bulk` and Splunk HEC, configured as Dagster resources.

The layers, as in Vector's sinks: settings (picklable, travel to Spark executors) → protocol
(encoder + per-item response policy) → writer (batching, keep-alive sessions, requests in flight,
retries with backoff) → outcome (accepted, retried, dead-lettered, latencies).
"""
