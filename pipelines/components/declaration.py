"""What every lakerelay component shares: it declares, it remembers its file, the topology builds."""

import importlib
from pathlib import Path
from typing import Any, ClassVar

import dagster as dg
from pydantic import ValidationError


class DeclarationScaffolder(dg.Scaffolder):
    """``dg scaffold defs <type> <folder>``: the type's commented example, named after the folder."""

    def scaffold(self, request: dg.ScaffoldRequest) -> None:
        component = _declaration_type(request.type_name)
        name = request.target_path.name
        text = component.EXAMPLE.replace("@name@", name).replace("@type@", request.type_name)
        request.target_path.mkdir(parents=True, exist_ok=True)
        (request.target_path / "defs.yaml").write_text(text)


def _declaration_type(type_name: str) -> "type[Declaration]":
    module, _, name = type_name.rpartition(".")
    found = getattr(importlib.import_module(module), name)
    if not (isinstance(found, type) and issubclass(found, Declaration)):
        raise ValueError(f"{type_name} is not a lakerelay component type")
    return found


@dg.scaffold_with(DeclarationScaffolder)
class Declaration(dg.Component, dg.Resolvable, dg.Model):
    """A component whose definitions the topology builds (``pipelines/topology.py``).

    ``build_defs`` returns nothing of its own: a route joins a feed and a sink declared in other
    files, and the sensors serve every feed and route at once. The file it was declared in is kept
    so that an error found while joining names that file.
    """

    # What `dg scaffold defs` writes: a commented defs.yaml that loads as it is ("@name@" is the
    # folder's name, "@type@" the type's).
    EXAMPLE: ClassVar[str] = ""

    @classmethod
    def load(cls, attributes: Any, context: dg.ComponentLoadContext) -> "Declaration":
        try:
            component = super().load(attributes, context)
        except ValidationError as exc:
            raise ValueError(located_errors(context.path / "defs.yaml", cls.__name__, exc)) from None
        component._declared_in = context.path  # type: ignore[attr-defined]
        return component

    @property
    def declared_in(self) -> str:
        path = getattr(self, "_declared_in", None)
        return str(Path(path) / "defs.yaml") if path is not None else f"<{type(self).__name__}>"

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        return dg.Definitions()


def located_errors(file: Path, type_name: str, error: ValidationError) -> str:
    """One line per wrong value: the file (and line, when the loader knows it), the key, what it must
    be and what it was."""
    type_name = type_name.removesuffix("Model")
    lines = []
    for problem in error.errors():
        parts = [str(part) for part in problem["loc"]]
        where = str(file)
        if parts and " at " in parts[-1]:  # Dagster's loader adds "key at /path/defs.yaml:LINE"
            parts[-1], where = parts[-1].split(" at ", 1)
        key = ".".join(p for p in ".".join(parts).split(".") if p != "attributes") or "attributes"
        if problem["type"] == "extra_forbidden":
            known = ", ".join(_fields_of(type_name))
            lines.append(f"{where}: {type_name}: unknown key {key!r}; the keys it takes: {known}")
        else:
            lines.append(
                f"{where}: {type_name}: {key}: {problem['msg']} (got {problem.get('input')!r}); fix it there"
            )
    return "\n".join(lines)


def _fields_of(type_name: str) -> list[str]:
    pending = list(Declaration.__subclasses__())
    while pending:
        cls = pending.pop()
        if cls.__name__ == type_name:
            return list(cls.model_fields)
        pending.extend(cls.__subclasses__())
    return []


def only_set(model: dg.Model, *exclude: str) -> dict[str, Any]:
    """The fields the YAML set, so that defaults keep their one home (the spec or resource built)."""
    return {key: value for key, value in model.model_dump(exclude_unset=True).items() if key not in exclude}
