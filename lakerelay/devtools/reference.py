"""docs/reference.md, generated from the component types: every key, its type, default and meaning.

    python -m lakerelay.devtools.reference          # rewrites docs/reference.md
    python -m lakerelay.devtools.reference --check  # exit 1 when docs/reference.md is stale (a test runs this)

A key left unset takes the default of what the component builds (``FeedSpec``, the sink's resource,
``ExportSpec``), so the defaults shown are read from there: the one home of each default.
"""

import argparse
import dataclasses
import sys
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from pipelines.components import ElasticsearchSink, Export, Feed, RestSink, Route, SplunkHecSink
from pipelines.components.declaration import Declaration
from pipelines.components.sinks import Sink
from pipelines.export.spec import ExportSpec
from pipelines.feeds import FeedSpec

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "docs" / "reference.md"
TYPES: list[type[Declaration]] = [Feed, ElasticsearchSink, SplunkHecSink, RestSink, Route, Export]
HEADER = """\
# Configuration reference

Generated from the component types by `python -m lakerelay.devtools.reference`; do not edit (a test fails
when this file and the code disagree). How the pieces fit: [routes.md](routes.md).

Each YAML file under `pipelines/defs/<kind>/<name>/defs.yaml` declares one component (several,
separated by `---`): `type:` one of the types below, `attributes:` its keys. A key not set takes the
default shown. Values that differ per deployment come from `{{ env.X }}` or `{{ env('X', 'default') }}`;
secrets are never written in YAML: a `*_env` key names the environment variable that holds one.
"""


def built_default(component: type[Declaration], name: str, info: FieldInfo) -> Any:
    """The value an unset key gets: from what the component builds, else the model's own default."""
    if info.default is not None and info.default is not PydanticUndefined:
        return info.default
    target: Any = {Feed: FeedSpec, Export: ExportSpec}.get(component)
    if target is not None:
        for field in dataclasses.fields(target):
            if field.name == name:
                if field.default is not dataclasses.MISSING:
                    return field.default
                if field.default_factory is not dataclasses.MISSING:
                    return field.default_factory()
    if issubclass(component, Sink):
        resource_field = component.resource_type.model_fields.get(name)
        if resource_field is not None and resource_field.default is not PydanticUndefined:
            return resource_field.default
    return PydanticUndefined if info.is_required() else None


def type_text(annotation: Any) -> str:
    """``str``, ``'json' | 'csv'``, ``list[str]``, ``mapping``: how a YAML writer reads a type."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(type_text(a) for a in args if a is not type(None))
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin is list:
        return f"list[{type_text(args[0])}]"
    if origin is dict or annotation is dict:
        return "mapping"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "mapping: " + ", ".join(annotation.model_fields)
    return getattr(annotation, "__name__", str(annotation))


def default_text(value: Any) -> str:
    if value is PydanticUndefined:
        return "**required**"
    if value is None:
        return "unset"
    if isinstance(value, tuple | list) and not value:
        return "`[]`"
    if dataclasses.is_dataclass(value):
        return ", ".join(f"{f.name}={getattr(value, f.name)!r}" for f in dataclasses.fields(value))
    return f"`{value!r}`"


def description_of(component: type[Declaration], name: str, info: FieldInfo) -> str:
    text = info.description
    if not text and issubclass(component, Sink):
        resource_field = component.resource_type.model_fields.get(name)
        text = resource_field.description if resource_field is not None else None
    return " ".join((text or "").split()).replace("|", "\\|")


def render() -> str:
    sections = [HEADER]
    for component in TYPES:
        doc = " ".join((component.__doc__ or "").split())
        rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
        for name, info in component.model_fields.items():
            rows.append(
                f"| `{name}` | {type_text(info.annotation)} | "
                f"{default_text(built_default(component, name, info))} | {description_of(component, name, info)} |"
            )
        sections.append(
            f"## `pipelines.components.{component.__name__}`\n\n{doc}\n\n"
            f"Start one: `dg scaffold defs pipelines.components.{component.__name__} <folder>`.\n\n"
            + "\n".join(rows)
            + "\n"
        )
    return "\n".join(sections)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/reference.md is stale")
    args = parser.parse_args()
    text = render()
    if args.check:
        current = REFERENCE.read_text() if REFERENCE.exists() else ""
        if current != text:
            print(
                f"{REFERENCE.relative_to(ROOT)} is stale: run python -m lakerelay.devtools.reference",
                file=sys.stderr,
            )
            sys.exit(1)
        return
    REFERENCE.parent.mkdir(exist_ok=True)
    REFERENCE.write_text(text)
    print(f"wrote {REFERENCE.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
