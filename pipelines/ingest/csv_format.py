"""CSV files into a raw Arrow table: ragged rows recorded as bad records, values that do not convert
read as text (conforming rescues them), long integers never rounded into doubles."""

import csv

import pyarrow as pa
import pyarrow.csv as pacsv

from pipelines.feeds import FeedSpec
from pipelines.ingest.parsing import BadRecord, ParsedFile, UnreadableFile, scan_integers
from pipelines.ingest.schema import has_floating
from pipelines.ingest.values import INTEGER_TEXT, fit_values


def parse_csv(feed: FeedSpec, text: bytes, target: pa.Schema | None) -> ParsedFile:
    options = feed.csv
    bad: list[BadRecord] = []

    def on_invalid_row(row: pacsv.InvalidRow) -> str:
        bad.append(
            BadRecord(
                row.number,
                f"expected {row.expected_columns} columns, got {row.actual_columns}",
                row.text.encode(),
            )
        )
        return "skip"

    first_line = text.split(b"\n", 1)[0].decode()
    header = next(csv.reader([first_line], delimiter=options.delimiter, quotechar=options.quote), [])
    names = header if options.header else [f"_c{i}" for i in range(len(header))]
    known_types = {n: target.field(n).type for n in names if target is not None and n in target.names}
    read_options = pacsv.ReadOptions(
        use_threads=False,
        column_names=names,
        skip_rows=1 if options.header else 0,
        block_size=max(1 << 20, len(text) + 1),
    )
    parse_options = pacsv.ParseOptions(
        delimiter=options.delimiter,
        quote_char=options.quote or False,
        escape_char=options.escape or False,
        invalid_row_handler=on_invalid_row,
    )

    def read(column_types: dict[str, pa.DataType]) -> pa.Table:
        bad.clear()
        return pacsv.read_csv(
            pa.BufferReader(text),
            read_options=read_options,
            parse_options=parse_options,
            convert_options=pacsv.ConvertOptions(column_types=column_types, strings_can_be_null=True),
        )

    try:
        table = read(known_types)
    except pa.ArrowInvalid:
        # A value does not convert to its column's type: read text, so conforming rescues just that value.
        try:
            table = read({n: pa.string() for n in names})
        except pa.ArrowInvalid as exc:
            raise UnreadableFile(f"not readable as CSV: {exc}") from exc
    if not has_floating(table.schema) or not scan_integers(text).inexact:
        return ParsedFile(table, bad_records=bad)
    # Arrow read a long integer into a double column (rounded): convert those columns from their text.
    return _exact_integers(table, read({n: pa.string() for n in names}), known_types, bad)


def _exact_integers(
    table: pa.Table, texts: pa.Table, known_types: dict[str, pa.DataType], bad: list[BadRecord]
) -> ParsedFile:
    """``table`` with its floating-point columns converted again from their text (``texts``, the same
    rows read as strings), so that no integer literal is rounded: a value a column cannot hold is rescued."""
    rescued: list[dict | None] = [None] * table.num_rows
    columns = []
    for index, column_field in enumerate(table.schema):
        if not pa.types.is_floating(column_field.type):
            columns.append(table.column(index))
            continue
        values = texts.column(index).to_pylist()
        column_type = column_field.type
        if column_field.name not in known_types and all(
            v is None or INTEGER_TEXT.fullmatch(v.strip()) for v in values
        ):
            # Arrow infers double for integers when one does not fit int64; the column stays int64
            # and that one is rescued as its text.
            column_type = pa.int64()
        columns.append(fit_values(values, column_type, rescued, column_field.name, from_text=True))
    return ParsedFile(pa.Table.from_arrays(columns, names=table.column_names), rescued, bad)
