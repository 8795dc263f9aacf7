"""A sink that refuses a post task's requests: the task reports the kind as data, the driver decides from it.

A real local sink on 127.0.0.1 answers 401 to a wrong bearer token. The generic REST sink has no
health path here, so nothing checks the credentials before Spark: the refusal meets the task itself.
"""

import gc
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pytest
from test_post_job import run_post, write_feed_batch

from lakerelay.localsink.server import LocalSinkServer
from pipelines.post.failures import reported_failure
from pipelines.post.post_stage import FAILURE, RESULT_SCHEMA, RESULT_SPARK_SCHEMA, make_poster, task_failure
from pipelines.post.progress import read_progress
from resources.run_tags import NEEDS_FIX
from resources.sinks.errors import SinkAuthError
from resources.sinks.resource import GenericRestSinkResource

from helpers import local_lake

REFUSED = "refused the credentials with HTTP 401"


@pytest.fixture(autouse=True)
def unfrozen_heap() -> Iterator[None]:
    """A poster called here freezes this process's heap as it would a Spark worker's: undo it after."""
    yield
    gc.unfreeze()


def wrong_token_sink(url: str) -> GenericRestSinkResource:
    return GenericRestSinkResource(
        sink_name="api", url=url, path="/_generic/alerts", bearer_token="wrong-token"
    )


def sink_records(n: int) -> pa.RecordBatch:
    """The post stage's input: ``_id``, ``_doc`` (JSON bytes), ``_time`` (epoch seconds)."""
    return pa.RecordBatch.from_pydict(
        {
            "_id": pa.array([f"e{i}" for i in range(n)], pa.string()),
            "_doc": pa.array([b'{"event_id": "e%d"}' % i for i in range(n)], pa.binary()),
            "_time": pa.array([None] * n, pa.float64()),
        }
    )


def test_a_task_refused_by_the_sink_answers_with_a_failure_row_of_that_kind() -> None:
    with LocalSinkServer(es_bearer="right-token") as server:
        poster = make_poster(wrong_token_sink(server.url).settings())
        rows = pa.Table.from_batches(list(poster(iter([sink_records(10)]))), schema=RESULT_SCHEMA)

    assert rows["kind"].to_pylist() == [FAILURE]  # no stats: nothing of this task may be settled
    reported = task_failure(rows)
    assert reported is not None and reported.kind == SinkAuthError.kind
    assert REFUSED in reported.message and "wrong-token" not in reported.message
    failure = reported_failure(reported, "api")
    assert NEEDS_FIX in (failure.metadata or {}) and not failure.allow_retries
    assert (failure.description or "").endswith(
        "Nothing was marked as posted; fix the configuration and re-run."
    )


def test_a_task_that_posted_reports_no_failure() -> None:
    with LocalSinkServer(es_bearer="right-token") as server:
        sink = GenericRestSinkResource(
            sink_name="api", url=server.url, path="/_generic/alerts", bearer_token="right-token"
        )
        rows = pa.Table.from_batches(list(make_poster(sink.settings())(iter([sink_records(10)]))))
        assert len(server.generic_records("alerts")) == 10
    assert task_failure(rows) is None and rows["accepted"].to_pylist() == [10]


@pytest.mark.integration
def test_the_failure_kind_crosses_spark_as_data(spark_resource) -> None:
    spark = spark_resource.spark_session
    records = spark.createDataFrame(sink_records(50).to_pandas()).repartition(2)
    with LocalSinkServer(es_bearer="right-token") as server:
        poster = make_poster(wrong_token_sink(server.url).settings())
        rows = records.mapInArrow(poster, RESULT_SPARK_SCHEMA).toArrow()  # the job succeeds

    assert set(rows["kind"].to_pylist()) == {FAILURE}
    reported = task_failure(rows)
    assert reported is not None and reported.kind == SinkAuthError.kind and REFUSED in reported.message


@pytest.mark.integration
def test_a_post_refused_in_its_tasks_needs_a_fix_and_is_not_retried(tmp_path: Path, spark_resource) -> None:
    lake = local_lake(tmp_path)
    write_feed_batch(lake, 1, 200)
    instance = dg.DagsterInstance.ephemeral()
    with LocalSinkServer(es_bearer="right-token") as server:
        result = run_post(
            "api", wrong_token_sink(server.url), lake, spark_resource, raise_on_error=False, instance=instance
        )
        assert server.generic_records("alerts") == []

    assert not result.success
    failures = [e for e in result.all_events if e.is_step_failure]
    assert len(failures) == 1 and not [e for e in result.all_events if e.is_step_up_for_retry]
    message = failures[0].step_failure_data.error.message
    assert REFUSED in message and "Nothing was marked as posted; fix the configuration and re-run." in message
    run = instance.get_run_by_id(result.run_id)
    assert run is not None and REFUSED in run.tags[NEEDS_FIX]
    assert read_progress(lake, "api", "events").batch_id == 0  # nothing settled
