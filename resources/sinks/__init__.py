"""REST sinks: Elasticsearch `_bulk`, Splunk HEC and generic REST APIs, configured as Dagster resources.

The layers, as in Vector's sinks, one module each:
- ``resource.py`` (driver only, Dagster): configuration → ``settings.py``, plain picklable settings that
  travel to Spark executors;
- ``protocols.py``: the interface of a wire protocol; ``elasticsearch.py``, ``hec.py``, ``generic.py``
  each own their settings, encoding, success test, per-item settlement, retry classification and
  acknowledgement hook (records come as ``records.py``'s Arrow slices);
- ``writer.py``: transport and flow control (calls cut by bytes and count, keep-alive sessions,
  requests in flight gated by ``flow.py``, retries timed by ``retry.py``, the delivery deadline);
- ``outcome.py``: what a writer reports; ``errors.py``: what a retry cannot cure;
- ``es_auth.py`` (driver): the Elasticsearch sink's one authentication and its endpoint (``url`` or an
  Elastic Cloud ID, ``cloud_id.py``); ``sigv4.py``: the AWS SigV4 signer every request goes through.
Everything but ``resource.py`` is imported on executors: no dagster or pydantic there.
"""
