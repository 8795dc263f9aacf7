"""Destination templates: the parser, the plan of a run's destination, and the encoders' per-record lines."""

from datetime import UTC, datetime, timedelta

import orjson
import pyarrow as pa
import pytest

from pipelines.post.destination import plan_destination, with_overrides
from resources.sinks.elasticsearch import ElasticsearchBulk
from resources.sinks.errors import SinkConfigError
from resources.sinks.hec import SplunkHec
from resources.sinks.records import ArrowRecords, Record, is_plain
from resources.sinks.resource import ElasticsearchSinkResource, SplunkHecSinkResource
from resources.sinks.template import Column, TemplateError, Text, parse_template

DTYPES = [
    ("event_id", "string"),
    ("service", "string"),
    ("ts", "timestamp"),
    ("day", "date"),
    ("n", "bigint"),
]


# -- the parser -------------------------------------------------------------------------------------
def test_a_template_is_text_feed_and_columns_with_formats_and_defaults() -> None:
    template = parse_template("logs-{feed}-{service|other}-{ts:%Y.%m.%d}", "web")
    assert template.parts == (
        Text("logs-web-"),
        Column("service", default="other"),
        Text("-"),
        Column("ts", date_format="%Y.%m.%d"),
    )
    assert not template.is_static
    assert [c.name for c in template.columns] == ["service", "ts"]


def test_a_template_without_columns_is_static_and_renders_once() -> None:
    template = parse_template("logs-{feed}", "web")
    assert template.is_static and template.static_value() == "logs-web"
    assert parse_template("plain", "web").static_value() == "plain"


@pytest.mark.parametrize(
    ("source", "says"),
    [
        ("logs-{service", "never closed"),
        ("logs}", "closes no placeholder"),
        ("{a{b}}", "do not nest"),
        ("{}", "needs a column name"),
        ("{ service}", "needs a column name"),
        ("{ts:%a}", "the date code %a is not supported; use %Y %y %m %d %j %H %M %S %G %V %%"),
        ("{ts:%Y%}", "a lone '%' at the end"),
        ("{ts:}", "empty date format"),
        ("{feed:%Y}", "{feed} takes no format or default"),
    ],
)
def test_a_template_that_cannot_be_read_is_refused_in_one_line(source: str, says: str) -> None:
    with pytest.raises(TemplateError) as refused:
        parse_template(source, "web")
    message = str(refused.value)
    assert says in message and repr(source) in message and "\n" not in message


def test_render_evaluates_a_json_record_in_utc_and_gives_none_for_a_null_without_default() -> None:
    template = parse_template("{service}-{ts:%Y.%m.%d-%H|nodate}", "web")
    assert template.render({"service": "api", "ts": "2026-01-01T23:30:00-02:00"}) == "api-2026.01.02-01"
    assert template.render({"service": "api"}) == "api-nodate"
    assert template.render({"ts": "2026-01-01T00:00:00Z"}) is None
    assert parse_template("{flag}", "f").render({"flag": True}) == "true"


# -- the plan of a run's destination ------------------------------------------------------------------
def es_settings(**fields):
    return ElasticsearchSinkResource(sink_name="es", url="http://127.0.0.1:1", **fields).settings()


def test_a_static_destination_plans_no_column_and_keeps_the_settings() -> None:
    settings = es_settings(index="events", pipeline="p")
    destination = plan_destination(settings, "web", DTYPES)
    assert destination.is_static and destination.settings is settings


def test_feed_is_rendered_into_the_settings_without_a_per_record_column() -> None:
    destination = plan_destination(es_settings(index="logs-{feed}"), "web", DTYPES)
    assert destination.columns == ()
    assert destination.settings.protocol.index == "logs-web" and destination.settings.per_record == ()


def test_a_column_template_becomes_a_per_record_column_and_leaves_the_static_value_empty() -> None:
    destination = plan_destination(
        es_settings(index="logs-{service}", pipeline="{service}-pipe"), "web", DTYPES
    )
    assert [name for name, _ in destination.columns] == ["_index", "_pipeline"]
    assert destination.settings.protocol.index is None and destination.settings.protocol.pipeline is None
    assert dict(destination.settings.per_record)["_index"] == "index template 'logs-{service}'"


def test_route_overrides_replace_the_sinks_values_by_name() -> None:
    destination = plan_destination(
        es_settings(), "web", DTYPES, {"index": "logs-{feed}", "op_type": "create"}
    )
    assert (
        destination.settings.protocol.index == "logs-web"
        and destination.settings.protocol.op_type == "create"
    )
    with pytest.raises(
        TemplateError, match="a route sets sourcetype, which a elasticsearch sink does not have"
    ):
        with_overrides(es_settings(), {"sourcetype": "x"})


def test_an_unknown_column_names_the_template_the_column_and_the_tables_columns() -> None:
    with pytest.raises(TemplateError) as refused:
        plan_destination(es_settings(index="logs-{servce}"), "web", DTYPES)
    assert str(refused.value) == (
        "es.index: template 'logs-{servce}' reads column 'servce', which the table does not have; "
        "its columns: event_id, service, ts, day, n"
    )


def test_a_date_format_on_a_column_that_is_no_time_is_refused() -> None:
    with pytest.raises(TemplateError, match="formats column 'service' as a date, but it is string"):
        plan_destination(es_settings(index="logs-{service:%Y}"), "web", DTYPES)


def test_hec_fields_become_one_json_column() -> None:
    sink = SplunkHecSinkResource(
        sink_name="hec", url="http://127.0.0.1:1", token="t", fields=["service", "n"]
    )
    destination = plan_destination(sink.settings(), "web", DTYPES)
    assert destination.columns == (
        ("_fields", "to_json(named_struct('service', cast(`service` as string), 'n', cast(`n` as string)))"),
    )
    with pytest.raises(TemplateError, match="fields names column 'nope'"):
        plan_destination(sink.settings(), "web", DTYPES, {"fields": ["nope"]})


# -- encoders -----------------------------------------------------------------------------------------
def arrow_records(ids, docs, destination=None, times=None) -> ArrowRecords:
    return ArrowRecords(
        pa.array(ids, pa.string()),
        pa.array(docs, pa.binary()),
        pa.array(times or [None] * len(ids), pa.float64()),
        {k: pa.array(v, pa.string()) for k, v in (destination or {}).items()},
    )


def bulk_protocol(**fields) -> ElasticsearchBulk:
    destination = plan_destination(es_settings(**fields), "web", DTYPES)
    return destination.settings.protocol.open(destination.settings)


def test_the_static_bulk_body_is_unchanged() -> None:
    protocol = bulk_protocol(index="events")
    records = arrow_records(["a1", "b2"], [b'{"x":1}', b'{"x":2}'])
    expected = b'{"index":{"_index":"events","_id":"a1"}}\n{"x":1}\n{"index":{"_index":"events","_id":"b2"}}\n{"x":2}\n'
    assert protocol.encode(records) == expected
    assert protocol.encode(list(records)) == expected


def test_per_record_index_and_pipeline_go_into_each_action_line_the_same_by_arrow_and_by_record() -> None:
    protocol = bulk_protocol(index="logs-{service}", pipeline="{service}-pipe")
    records = arrow_records(
        ["a1", 'b"2'],
        [b'{"x":1}', b'{"x":2}'],
        {"_index": ["logs-api", "logs-web"], "_pipeline": ["api-pipe", 'we"b-pipe']},
    )
    lines = protocol.encode(records).splitlines()
    assert [orjson.loads(line) for line in lines[::2]] == [
        {"index": {"_index": "logs-api", "_id": "a1", "pipeline": "api-pipe"}},
        {"index": {"_index": "logs-web", "_id": 'b"2', "pipeline": 'we"b-pipe'}},
    ]
    plain = records[:1]  # ids and values that need no escaping: the vectorised path
    assert isinstance(plain, ArrowRecords)
    assert protocol.encode(plain) == protocol.encode(list(plain))
    assert protocol.path == "/_bulk"  # the pipeline is per record, not on the URL


def test_a_protocol_refuses_a_template_nobody_resolved() -> None:
    with pytest.raises(
        SinkConfigError, match=r"the index 'logs-\{service\}' is a template that was not resolved"
    ):
        es_settings(index="logs-{service}").protocol.open(es_settings(index="logs-{service}"))


def test_hec_envelopes_carry_per_record_metadata_and_indexed_fields() -> None:
    sink = SplunkHecSinkResource(
        sink_name="hec", url="http://127.0.0.1:1", token="t", sourcetype="{service}:log", fields=["service"]
    )
    destination = plan_destination(sink.settings(), "web", DTYPES)
    protocol: SplunkHec = destination.settings.protocol.open(destination.settings)
    records = arrow_records(
        ["", ""],
        [b'{"x":1}', b'{"x":2}'],
        {"_sourcetype": ["api:log", "web:log"], "_fields": ['{"service":"api"}', '{"service":"web"}']},
        times=[1.5, None],
    )
    by_arrow = protocol.encode(records)
    assert by_arrow == protocol.encode(list(records))
    assert [orjson.loads(line) for line in by_arrow.splitlines()] == [
        {
            "time": 1.5,
            "source": "lakerelay",
            "sourcetype": "api:log",
            "fields": {"service": "api"},
            "event": {"x": 1},
        },
        {"source": "lakerelay", "sourcetype": "web:log", "fields": {"service": "web"}, "event": {"x": 2}},
    ]


def test_records_keep_their_destination_through_slices_single_items_and_concatenation() -> None:
    records = arrow_records(["a", "b", "c"], [b"{}"] * 3, {"_index": ["i1", "i2", "i3"]})
    tail = records[1:]
    assert isinstance(tail, ArrowRecords)
    assert records[2] == Record("c", b"{}", None, {"_index": "i3"})
    assert [r.destination for r in tail.concat(records[:1])] == [
        {"_index": "i2"},
        {"_index": "i3"},
        {"_index": "i1"},
    ]
    assert [r.destination for r in records.filter(pa.array([True, False, True]))] == [
        {"_index": "i1"},
        {"_index": "i3"},
    ]


def test_every_strftime_code_evaluates_like_python() -> None:
    # The Python evaluation (replay) against the known calendar, around an ISO week-year boundary.
    template = parse_template("{ts:%Y %y %m %d %j %H %M %S %G-W%V %%}", "f")
    when = datetime(2027, 1, 1, 5, 6, 7, tzinfo=UTC) + timedelta(0)
    assert template.render({"ts": when.isoformat()}) == "2027 27 01 01 001 05 06 07 2026-W53 %"


@pytest.mark.parametrize(
    ("values", "plain"),
    [
        (["abc123", "DEF"], True),
        (["logs-web-2026.03.01", "é-ü/x y"], True),
        (['a"b'], False),
        (["a\\b"], False),
        (["a\nb"], False),
        (["a\x1fb"], False),
        (["ok", None], False),
        ([], True),
        (["", ""], True),
    ],
)
def test_is_plain_says_whether_values_go_between_json_quotes_as_they_are(values, plain) -> None:
    assert is_plain(pa.array(values, pa.string())) is plain
    assert is_plain(pa.array(values, pa.large_string())) is plain


def test_is_plain_reads_only_the_values_of_a_slice() -> None:
    values = pa.array(['a"b', "plain-1", "plain-2", "c\\d"], pa.string())
    assert (
        is_plain(values.slice(1, 2)) and not is_plain(values.slice(0, 2)) and not is_plain(values.slice(2, 2))
    )


def test_an_index_template_whose_text_elasticsearch_refuses_is_refused_at_planning() -> None:
    with pytest.raises(TemplateError) as refused:
        plan_destination(es_settings(index="Logs {feed}-{service}"), "web", DTYPES)
    assert str(refused.value).startswith(
        "es.index: template 'Logs {feed}-{service}' gives index names with ' ' 'L', which Elasticsearch refuses"
    )
    with pytest.raises(TemplateError, match=r"'W'.*or the feed's name"):
        plan_destination(es_settings(index="logs-{feed}"), "Web", DTYPES)
    # Column values are the sink's to judge (a refused one is dead-lettered with its reason).
    assert plan_destination(es_settings(index="logs-{service}"), "web", DTYPES).columns
