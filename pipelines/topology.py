"""The deployment's topology: the feeds, sinks, routes and exports declared as components, joined.

A route names a feed and a sink by their names; this is where those names are checked, against
every declaration of the defs folder, with the file of the declaration in the error.
"""

import importlib
import inspect
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import dagster as dg
from pydantic import ValidationError

from pipelines.components import Export, Feed, Route
from pipelines.components.declaration import Declaration, located_errors
from pipelines.components.sinks import Sink
from pipelines.export.spec import ExportSpec
from pipelines.feeds import FeedSpec
from pipelines.routes import RouteSpec
from resources.sinks.resource import RestSinkResource
from resources.sinks.template import TemplateError, parse_template

# Destination settings read as templates (resources/sinks/template.py); columns are checked at planning.
TEMPLATED = ("index", "pipeline", "source", "sourcetype", "host")


@dataclass(frozen=True)
class Topology:
    feeds: list[FeedSpec]
    sinks: dict[str, RestSinkResource]  # sink name (= resource key) → its resource
    routes: list[RouteSpec]
    exports: list[ExportSpec] | None  # the declared ones; None (no components): one export per feed


def load_topology(
    project_root: Path | None = None, sink_defaults: Mapping[str, Any] = MappingProxyType({})
) -> Topology:
    """The declarations of a dg project's defs folder (``[tool.dg.project]`` in its pyproject.toml),
    or of lakerelay's own ``pipelines/defs`` when ``project_root`` is None (also where lakerelay is
    installed without its checkout), joined; ``sink_defaults`` are the deployment's sink settings,
    under what each sink's YAML sets."""
    if project_root is None:
        shipped = importlib.import_module("pipelines.defs")
        tree = dg.ComponentTree.from_module(
            shipped, Path(inspect.getfile(shipped)).resolve().parent.parent.parent
        )
    else:
        if str(project_root) not in sys.path:
            sys.path.append(str(project_root))  # a declarations-only project is not installed
        tree = dg.ComponentTree.for_project(project_root)
    try:
        declared = tree.get_all_components(of_type=Declaration)  # one walk of the defs folder
        sinks: list[Sink] = [d for d in declared if isinstance(d, Sink)]
        feeds = [d for d in declared if isinstance(d, Feed)]
        routes = [d for d in declared if isinstance(d, Route)]
        exports = [d for d in declared if isinstance(d, Export)]
    # Only a declaration's own error or the loader's schema check is reworded (what and where);
    # anything else, a bug included, is re-raised as it is, with its frames.
    except Exception as exc:
        located = _located(exc, tree.defs_module_path)
        if located is None:
            raise
        raise ValueError(located) from None  # what is wrong and where, without the loader's frames
    return join(feeds, sinks, routes, exports, sink_defaults)


def join(
    feeds: list[Feed],
    sinks: list[Sink],
    routes: list[Route],
    exports: list[Export],
    sink_defaults: Mapping[str, Any] = MappingProxyType({}),
) -> Topology:
    """Feeds, sinks, routes and exports checked against each other; errors name the declaring file."""
    _unique("feed", [(f.name, f.declared_in) for f in feeds])
    _unique("sink", [(s.name, s.declared_in) for s in sinks])
    feed_specs = {f.name: f.spec() for f in feeds}
    sink_by_name = {s.name: s for s in sinks}
    route_specs = [_route(r, feed_specs, sink_by_name) for r in routes]
    _unique(
        "route",
        [(f"{r.feed.name}/{r.name}", d.declared_in) for r, d in zip(route_specs, routes, strict=True)],
    )
    tables = {name: spec.table_name for name, spec in feed_specs.items()}
    export_specs = [e.spec(tables) for e in exports]
    _unique(
        "export dataset", [(e.dataset, d.declared_in) for e, d in zip(export_specs, exports, strict=True)]
    )
    return Topology(
        feeds=list(feed_specs.values()),
        sinks={s.name: s.resource(sink_defaults) for s in sinks},
        routes=route_specs,
        exports=export_specs,
    )


def _route(route: Route, feeds: dict[str, FeedSpec], sinks: dict[str, Sink]) -> RouteSpec:
    where = f"{route.declared_in}: route of feed {route.feed!r} to sink {route.sink!r}"
    if route.feed not in feeds:
        raise ValueError(
            f"{where}: no feed is named {route.feed!r}; feeds: {', '.join(sorted(feeds)) or 'none'}"
        )
    sink = sinks.get(route.sink)
    if sink is None:
        raise ValueError(
            f"{where}: no sink is named {route.sink!r}; sinks: {', '.join(sorted(sinks)) or 'none'}"
        )
    unknown = sorted(set(route.destination) - set(sink.destination_fields))
    if unknown:
        raise ValueError(
            f"{where}: destination key(s) {', '.join(unknown)} do not apply to a {type(sink).__name__}; "
            f"it takes {', '.join(sink.destination_fields)}"
        )
    for key, value in route.destination.items():
        if key in TEMPLATED and isinstance(value, str):
            try:
                parse_template(value, route.feed)  # a template that cannot be read stops the load here
            except TemplateError as exc:
                raise ValueError(f"{where}: destination {key}: {exc}") from None
    return RouteSpec(
        feed=feeds[route.feed],
        sink=route.sink,
        name=route.name or "",
        sink_kind=sink.kind,
        where=route.where,
        enrich=tuple(route.enrich) if route.enrich is not None else None,
        destination=dict(route.destination),
        description=route.description or "",
    )


def _located(error: BaseException, defs_root: Path) -> str | None:
    """What is wrong in which defs.yaml, from inside the loader's error: a declaration's own error
    names its file; the loader's schema check (unknown keys) is located by the component it names."""
    component = re.search(r"loading component (\S+?)(\[\d+\])?:", str(error))
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ValueError) and "defs.yaml: " in str(seen):
            return str(seen)
        if isinstance(seen, ValidationError) and component is not None:
            return located_errors(defs_root / component.group(1) / "defs.yaml", seen.title, seen)
        seen = seen.__cause__ or seen.__context__
    return None


def _unique(what: str, named: list[tuple[str, str]]) -> None:
    seen: dict[str, str] = {}
    for name, declared_in in named:
        if name in seen:
            raise ValueError(
                f"{declared_in}: {what} {name!r} is also declared in {seen[name]}; names must be unique"
            )
        seen[name] = declared_in
