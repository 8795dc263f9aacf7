"""lakerelay's tools, apart from the Dagster code (pipelines, resources, sensors): the `lakerelay`
command (`lakerelay.cli`), the development tools behind it (`lakerelay.devtools`) and the local sink
server that speaks the Elasticsearch and Splunk HEC protocols (`lakerelay.localsink`)."""
