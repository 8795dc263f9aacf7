"""Destination templates: where a record goes, as text with placeholders, like Vector's or es-hadoop's.

``logs-{feed}-{ts:%Y.%m.%d}`` names an index per feed and per day of each record's ``ts``. A template is

- static text, copied as is;
- ``{feed}``: the feed's name, known when the run is planned (static);
- ``{column}``: that column's value in each record, as text;
- ``{column:%Y.%m.%d}``: a timestamp or date column's value in UTC, formatted with the strftime
  codes of ``DATE_CODES`` (others are refused, so what the template says is what Spark writes);
- ``{column|default}``, ``{column:%Y|default}``: ``default`` when the column is null.

A template without a column placeholder is static: it is rendered once and costs nothing per record.
A per-record value that is null, with no default, leaves the record without a destination: it is
dead-lettered (``destination_unresolved``), never sent elsewhere and never dropped.

This module is pure Python (executors and the replay CLI use it); the Spark SQL that evaluates a
template per record is ``pipelines/post/destination.py``'s.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

FEED = "feed"  # the placeholder that names the feed, not a column

# strftime code -> Spark datetime pattern letters (None: no pattern letter, a SQL function instead).
# Spark 3+ refuses its week-based pattern letters, so ISO weeks are computed by functions.
DATE_CODES: dict[str, str | None] = {
    "Y": "yyyy",  # year, 4 digits
    "y": "yy",  # year, 2 digits
    "m": "MM",  # month 01-12
    "d": "dd",  # day of the month 01-31
    "j": "DDD",  # day of the year 001-366
    "H": "HH",  # hour 00-23
    "M": "mm",  # minute 00-59
    "S": "ss",  # second 00-59
    "G": None,  # ISO 8601 week-based year
    "V": None,  # ISO 8601 week 01-53
    "%": "%",  # a literal percent sign
}


class TemplateError(ValueError):
    """A destination template that cannot be read, or does not fit the table it is used with."""


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class Column:
    """A per-record placeholder: a column, an optional strftime format, an optional default."""

    name: str
    date_format: str | None = None
    default: str | None = None


@dataclass(frozen=True)
class Template:
    source: str  # as the user wrote it, for messages
    parts: tuple[Text | Column, ...]

    @property
    def columns(self) -> tuple[Column, ...]:
        return tuple(p for p in self.parts if isinstance(p, Column))

    @property
    def is_static(self) -> bool:
        """True when no part depends on a record: the template is one value for the whole run."""
        return not self.columns

    def static_value(self) -> str:
        if not self.is_static:
            raise TemplateError(f"template {self.source!r} reads columns: it has no single value")
        return "".join(p.text for p in self.parts if isinstance(p, Text))

    def render(self, record: Mapping[str, Any]) -> str | None:
        """The value for one record (a JSON document as a dict), or None when a column without default is null.

        The replay of dead letters uses this; a post run evaluates the same template in Spark.
        """
        out = []
        for part in self.parts:
            if isinstance(part, Text):
                out.append(part.text)
                continue
            value = record.get(part.name)
            text = None if value is None else as_text(value, part.date_format)
            if text is None:
                if part.default is None:
                    return None
                text = part.default
            out.append(text)
        return "".join(out)


def is_template(value: object) -> bool:
    """True when ``value`` is text holding a placeholder (so it must be resolved before posting)."""
    return isinstance(value, str) and "{" in value


def parse_template(source: str, feed: str) -> Template:
    """Read ``source``; ``{feed}`` becomes ``feed`` (static). Raises TemplateError with a one-line reason."""
    parts: list[Text | Column] = []
    text: list[str] = []
    i = 0
    while i < len(source):
        ch = source[i]
        if ch == "}":
            raise TemplateError(f"template {source!r}: '}}' at position {i} closes no placeholder")
        if ch != "{":
            text.append(ch)
            i += 1
            continue
        end = source.find("}", i + 1)
        if end < 0:
            raise TemplateError(f"template {source!r}: '{{' at position {i} is never closed by '}}'")
        body = source[i + 1 : end]
        if "{" in body:
            raise TemplateError(f"template {source!r}: placeholders do not nest (position {i})")
        placeholder = _placeholder(source, body)
        if placeholder is None:  # {feed}
            text.append(feed)
        else:
            if text:
                parts.append(Text("".join(text)))
                text = []
            parts.append(placeholder)
        i = end + 1
    if text:
        parts.append(Text("".join(text)))
    return Template(source, tuple(_merge_text(parts)))


def _placeholder(source: str, body: str) -> Column | None:
    name_format, bar, default = body.partition("|")
    name, colon, date_format = name_format.partition(":")
    if not name.strip() or name != name.strip():
        raise TemplateError(
            f"template {source!r}: placeholder {{{body}}} needs a column name without surrounding spaces"
        )
    if name == FEED:
        if colon or bar:
            raise TemplateError(f"template {source!r}: {{feed}} takes no format or default")
        return None
    if colon:
        date_codes(source, date_format)
    return Column(name, date_format if colon else None, default if bar else None)


def date_codes(source: str, date_format: str) -> list[str]:
    """The format as a list of literal text and ``%X`` codes; refuses a code outside DATE_CODES."""
    if not date_format:
        raise TemplateError(f"template {source!r}: an empty date format after ':'")
    tokens: list[str] = []
    i = 0
    while i < len(date_format):
        if date_format[i] != "%":
            tokens.append(date_format[i])
            i += 1
            continue
        code = date_format[i + 1 : i + 2]
        if code not in DATE_CODES:
            shown = f"%{code}" if code else "a lone '%' at the end"
            raise TemplateError(
                f"template {source!r}: the date code {shown} is not supported; use "
                f"{' '.join('%' + c for c in DATE_CODES)}"
            )
        tokens.append("%" + code)
        i += 2
    return tokens


def _merge_text(parts: list[Text | Column]) -> list[Text | Column]:
    merged: list[Text | Column] = []
    for part in parts:
        if isinstance(part, Text) and merged and isinstance(merged[-1], Text):
            merged[-1] = Text(merged[-1].text + part.text)
        else:
            merged.append(part)
    return merged


def as_text(value: Any, date_format: str | None = None) -> str | None:
    """A JSON value as Spark's ``cast(... as string)`` writes it (a date formatted in UTC), or None."""
    if date_format is not None:
        when = _as_datetime(value)
        return None if when is None else when.strftime(date_format)
    if isinstance(value, bool):
        return "true" if value else "false"  # as Spark casts a boolean to text
    if isinstance(value, str | int | float):
        return str(value)
    return None  # objects and arrays name no destination


def _as_datetime(value: Any) -> datetime | date | None:
    if isinstance(value, datetime):
        return value.astimezone(UTC) if value.tzinfo else value
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return None
        return parsed.astimezone(UTC) if parsed.tzinfo else parsed
    return None
