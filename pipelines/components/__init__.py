"""lakerelay's component types: what users declare in YAML under ``pipelines/defs``.

Feeds, sinks, routes and exports are declarations. ``pipelines/topology.py`` joins them (a route
names a feed and a sink) and builds the definitions once, so sensors can be shared by every feed
and route instead of multiplying with them.
"""

from pipelines.components.export import Export
from pipelines.components.feed import Feed
from pipelines.components.route import Route
from pipelines.components.sinks import ElasticsearchSink, RestSink, SplunkHecSink

__all__ = ["ElasticsearchSink", "Export", "Feed", "RestSink", "Route", "SplunkHecSink"]
