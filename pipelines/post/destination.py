"""A run's destination: the sink's templated settings resolved against the feed and its table.

``plan_destination`` reads every template of the sink's protocol settings (Elasticsearch ``index``,
``pipeline``; HEC ``index``, ``source``, ``sourcetype``, ``host``; see ``resources/sinks/template.py``):
a static one (``{feed}`` included) is rendered once into the settings, as before; one that reads
columns becomes a Spark SQL expression for a per-record column (``_index``, ``_sourcetype``, ...) that
``enrich.to_sink_records`` adds next to ``_id``/``_doc``/``_time``, and the executors write per record.
HEC ``fields`` become one ``_fields`` column, a JSON object. Templates are checked against the
enriched table's columns and types here, before anything is posted.
"""

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import pyarrow as pa

from resources.sinks.records import FIELDS_COLUMN
from resources.sinks.settings import SinkSettings, per_record_columns
from resources.sinks.template import (
    DATE_CODES,
    Column,
    Template,
    TemplateError,
    as_text,
    date_codes,
    is_template,
    parse_template,
)

_TIMESTAMP = "timestamp"  # Spark's simpleString of TIMESTAMP (with a zone: an instant)
_WALL_CLOCK = ("timestamp_ntz", "date")  # no zone: formatted as they are


@dataclass(frozen=True)
class Destination:
    """The settings executors get (static values rendered) and the per-record columns to add in Spark."""

    settings: SinkSettings
    columns: tuple[tuple[str, str], ...]  # (column name, Spark SQL expression)

    @property
    def is_static(self) -> bool:
        return not self.columns


def with_overrides(settings: SinkSettings, overrides: Mapping[str, Any] | None) -> SinkSettings:
    """``settings`` with a route's values for some protocol settings (same names as the sink's fields)."""
    if not overrides:
        return settings
    known = {f.name for f in dataclasses.fields(settings.protocol)}  # type: ignore[arg-type]
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TemplateError(
            f"sink {settings.sink_name!r}: a route sets {', '.join(unknown)}, which a {settings.kind} sink does "
            f"not have; it takes {', '.join(sorted(known))}"
        )
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    return dataclasses.replace(settings, protocol=dataclasses.replace(settings.protocol, **values))


def plan_destination(
    settings: SinkSettings,
    feed: str,
    dtypes: Sequence[tuple[str, str]],
    overrides: Mapping[str, Any] | None = None,
) -> Destination:
    """Resolve the templates of ``settings`` (after ``overrides``) for ``feed`` and a table of ``dtypes``.

    ``dtypes``: the enriched frame's ``(column, Spark type)`` pairs (``DataFrame.dtypes``). Raises
    TemplateError, one line naming the template, the column and the table's columns, when a template
    cannot be read or names a column the table does not have (or a date format on a non-time column).
    """
    settings = with_overrides(settings, overrides)
    types = {name.lower(): (name, kind) for name, kind in dtypes}
    protocol_values: dict[str, Any] = {}
    columns: list[tuple[str, str]] = []
    described: list[tuple[str, str]] = []
    for name, column in per_record_columns(settings.protocol).items():
        value = getattr(settings.protocol, name)
        if not isinstance(value, str) or ("{" not in value and "}" not in value):
            continue
        template = parse_template(value, feed)
        if settings.kind == "elasticsearch" and name == "index":
            _check_index_text(template, f"{settings.sink_name}.{name}")
        if template.is_static:
            protocol_values[name] = template.static_value()
            continue
        protocol_values[name] = None
        columns.append((column, template_sql(template, types, f"{settings.sink_name}.{name}")))
        described.append((column, f"{name} template {value!r}"))
    fields = getattr(settings.protocol, "fields", ())
    if fields:
        columns.append((FIELDS_COLUMN, fields_sql(fields, types, settings.sink_name)))
        described.append((FIELDS_COLUMN, f"fields {list(fields)!r}"))
    if not protocol_values and not columns:
        return Destination(settings, ())
    protocol = dataclasses.replace(settings.protocol, **protocol_values)
    return Destination(
        dataclasses.replace(settings, protocol=protocol, per_record=tuple(described)), tuple(columns)
    )


def template_sql(template: Template, types: Mapping[str, tuple[str, str]], where: str) -> str:
    """A Spark SQL expression giving the template's value per record, NULL where a column without default is."""
    pieces = []
    for part in template.parts:
        if not isinstance(part, Column):
            pieces.append(_literal(part.text))
            continue
        name, kind = _resolve(template, part, types, where)
        value = (
            _date_sql(template, part, name, kind) if part.date_format else f"cast({_quote(name)} as string)"
        )
        pieces.append(value if part.default is None else f"coalesce({value}, {_literal(part.default)})")
    # concat is NULL when any piece is: the record then has no destination (dead-lettered).
    return pieces[0] if len(pieces) == 1 else f"concat({', '.join(pieces)})"


def fields_sql(fields: Sequence[str], types: Mapping[str, tuple[str, str]], sink_name: str) -> str:
    """A JSON object of the columns' values as text (nulls left out), for HEC's indexed ``fields``."""
    pairs = []
    for field in fields:
        found = types.get(field.lower())
        if found is None:
            raise TemplateError(
                f"sink {sink_name!r}: fields names column {field!r}, which the table does not have; its columns: "
                f"{_columns(types)}"
            )
        pairs.append(f"{_literal(field)}, cast({_quote(found[0])} as string)")
    return f"to_json(named_struct({', '.join(pairs)}))"


def _resolve(
    template: Template, part: Column, types: Mapping[str, tuple[str, str]], where: str
) -> tuple[str, str]:
    found = types.get(part.name.lower())
    if found is None:
        raise TemplateError(
            f"{where}: template {template.source!r} reads column {part.name!r}, which the table does not have; "
            f"its columns: {_columns(types)}"
        )
    name, kind = found
    if part.date_format and kind != _TIMESTAMP and kind not in _WALL_CLOCK:
        raise TemplateError(
            f"{where}: template {template.source!r} formats column {part.name!r} as a date, but it is {kind}; "
            f"use a timestamp or date column (or enrich one, e.g. to_timestamp({part.name}))"
        )
    return name, kind


def _date_sql(template: Template, part: Column, name: str, kind: str) -> str:
    """The column formatted in UTC, whatever the Spark session's time zone."""
    if kind == _TIMESTAMP:
        # The instant's UTC wall clock: the epoch (a zone-less timestamp) plus its microseconds.
        value = f"timestampadd(MICROSECOND, unix_micros({_quote(name)}), TIMESTAMP_NTZ'1970-01-01 00:00:00')"
    else:
        value = _quote(name)
    pieces: list[str] = []
    pattern: list[str] = []  # Spark pattern letters and quoted text, flushed as one date_format
    text: list[str] = []  # literal text, quoted as one run (two quoted runs side by side read as a quote)

    def quote_text() -> None:
        if text:
            pattern.append("'" + "".join(text).replace("'", "''") + "'")
            text.clear()

    def flush() -> None:
        quote_text()
        if pattern:
            pieces.append(f"date_format({value}, {_literal(''.join(pattern))})")
            pattern.clear()

    for token in date_codes(template.source, part.date_format or ""):
        if token == "%G":
            flush()
            pieces.append(f"cast(extract(YEAROFWEEK FROM {value}) as string)")
        elif token == "%V":
            flush()
            pieces.append(f"lpad(cast(weekofyear({value}) as string), 2, '0')")
        elif token == "%%" or not token.startswith("%"):
            text.append(token[-1])
        else:
            quote_text()
            pattern.append(DATE_CODES[token[1]] or "")
    flush()
    return pieces[0] if len(pieces) == 1 else f"concat({', '.join(pieces)})"


# What Elasticsearch refuses in an index name besides capitals (its invalid_index_name_exception).
_BAD_INDEX_CHARACTERS = frozenset('\\/*?"<>|,#: ')


def _check_index_text(template: Template, where: str) -> None:
    """An index template's fixed text (the feed's name included) must be a valid index name's."""
    text = "".join(p.text for p in template.parts if not isinstance(p, Column))
    bad = sorted({c for c in text if c in _BAD_INDEX_CHARACTERS or c != c.lower()})
    if bad:
        raise TemplateError(
            f"{where}: template {template.source!r} gives index names with {' '.join(repr(c) for c in bad)}, which "
            f'Elasticsearch refuses (index names are lowercase, without \\ / * ? " < > | , # : or a space); '
            f"change the text (or the feed's name)"
        )


def _literal(text: str) -> str:
    """A Spark SQL string literal (backslash escapes are on by default)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _columns(types: Mapping[str, tuple[str, str]]) -> str:
    return ", ".join(name for name, _ in types.values()) or "(none)"


def replay_destination(
    settings: SinkSettings, feeds: Sequence[str], docs: Sequence[bytes]
) -> tuple[SinkSettings, dict[str, pa.Array]]:
    """``plan_destination``'s twin for a few records (dead-letter replay): templates evaluated on each document.

    ``feeds[i]`` names the feed of ``docs[i]`` (a JSON document as the post job encoded it, nulls left
    out). Returns the settings to post with and the per-record columns for ``SinkWriter.add_arrow``.
    """
    protocol_values: dict[str, Any] = {}
    columns: dict[str, pa.Array] = {}
    described: list[tuple[str, str]] = []
    records = [_as_object(doc) for doc in docs]
    for name, column in per_record_columns(settings.protocol).items():
        source = getattr(settings.protocol, name)
        if not is_template(source):
            continue
        templates = {feed: parse_template(source, feed) for feed in set(feeds)}
        protocol_values[name] = None
        columns[column] = pa.array(
            [templates[feed].render(record) for feed, record in zip(feeds, records, strict=True)], pa.string()
        )
        described.append((column, f"{name} template {source!r}"))
    fields = getattr(settings.protocol, "fields", ())
    if fields:
        objects = [
            {f: text for f in fields if (text := as_text(record.get(f))) is not None} for record in records
        ]
        columns[FIELDS_COLUMN] = pa.array([orjson.dumps(o).decode() for o in objects], pa.string())
        described.append((FIELDS_COLUMN, f"fields {list(fields)!r}"))
    if not columns:
        return settings, {}
    protocol = dataclasses.replace(settings.protocol, **protocol_values)
    return dataclasses.replace(settings, protocol=protocol, per_record=tuple(described)), columns


def _as_object(doc: bytes) -> Mapping[str, Any]:
    try:
        value = orjson.loads(doc)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}
