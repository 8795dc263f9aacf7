"""Routes: one feed delivered to one sink, the unit of delivery.

A route has its own progress and fence (keyed by its name and the feed's table), dead letters,
asset, job, check and failure history, so one route failing never holds back another. Its name
defaults to the sink's: a feed routed once to each sink keeps the asset keys, job names and progress
records of the releases before routes (``sinks/events_in_elasticsearch``, ``post_events_to_elasticsearch``).
"""

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from pipelines.feeds import FeedSpec


@dataclass(frozen=True)
class RouteSpec:
    """``feed`` posted to the sink whose resource key is ``sink``, under the name ``name``.

    ``destination`` overrides the sink's destination settings for this route (index, pipeline,
    sourcetype, path...; which keys a sink takes is its resource's ``DESTINATION_FIELDS``); ``where``
    is a Spark SQL predicate on the enriched records; ``enrich`` replaces the feed's expressions.
    """

    feed: FeedSpec
    sink: str
    name: str = ""
    sink_kind: str = "rest"  # the kind the UI shows on the route's asset
    where: str | None = None
    enrich: tuple[str, ...] | None = None
    destination: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", self.sink)

    @property
    def asset_key(self) -> dg.AssetKey:
        """``sinks/<feed>_in_<route>``: the feed's documents at this route's destination."""
        return dg.AssetKey(["sinks", f"{self.feed.name}_in_{self.name}"])

    @property
    def job_name(self) -> str:
        return f"post_{self.feed.name}_to_{self.name}"

    @property
    def pool(self) -> str:
        """The Dagster concurrency pool of the route: the instance allows one slot per pool."""
        return f"lakerelay_post_{self.feed.name}_to_{self.name}"

    def posted_feed(self) -> FeedSpec:
        """The feed as this route posts it: the route's ``enrich`` wins over the feed's."""
        if self.enrich is None:
            return self.feed
        return dataclasses.replace(self.feed, enrich=self.enrich)


def every_sink(feeds: list[FeedSpec], sinks: Mapping[str, str]) -> list[RouteSpec]:
    """One route from each feed to each sink (``sinks``: resource key → kind): the shape of a
    deployment declared with ``LAKERELAY_FEEDS_FILE`` instead of components."""
    return [RouteSpec(feed=feed, sink=key, sink_kind=kind) for feed in feeds for key, kind in sinks.items()]
