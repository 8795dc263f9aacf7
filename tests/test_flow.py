"""The whole flow in one process, on real parts: files → Delta → Spark → local sink server (→ export)."""

import gzip
import hashlib
import json
from pathlib import Path

import dagster as dg
import pyarrow.compute as pc
import pytest
import requests
from deltalake import DeltaTable

from lakerelay.localsink.server import LocalSinkServer
from pipelines.definitions import build_defs
from pipelines.deployment import LOCAL_HEC_TOKEN
from pipelines.post.dead_letters import DEAD_LETTER_TABLE
from pipelines.post.progress import read_progress, write_progress
from resources.export_storage import LocalExportStorage
from resources.sinks.resource import ElasticsearchSinkResource, SplunkHecSinkResource

from helpers import delta_table, land_events, local_lake

pytestmark = pytest.mark.integration


def flow_defs(lake, sink_url: str, spark_resource, **es_options) -> dg.Definitions:
    return build_defs(
        {
            "lake": lake,
            "pyspark": spark_resource,
            "elasticsearch": ElasticsearchSinkResource(
                sink_name="elasticsearch", url=sink_url, backoff_initial_s=0.05, **es_options
            ),
            "export_storage": LocalExportStorage(root=str(Path(lake.lake_uri).parent / "exports")),
            "splunk": SplunkHecSinkResource(
                sink_name="splunk", url=sink_url, token=LOCAL_HEC_TOKEN, backoff_initial_s=0.05
            ),
        }
    )


def run_job(defs: dg.Definitions, name: str, raise_on_error: bool = True) -> dg.ExecuteInProcessResult:
    return defs.resolve_job_def(name).execute_in_process(raise_on_error=raise_on_error)


def test_every_record_reaches_both_sinks_once_and_replays_add_nothing(
    tmp_path: Path, sink_server, spark_resource
) -> None:
    lake = local_lake(tmp_path)
    written = land_events(lake, files=8, records_per_file=500)
    defs = flow_defs(lake, sink_server.url, spark_resource)

    run_job(defs, "ingest_events")
    es = run_job(defs, "post_events_to_elasticsearch")
    run_job(defs, "post_events_to_splunk")

    rows = delta_table(lake).num_rows
    assert rows == written
    assert sink_server.es_count("events") == rows
    assert sink_server.hec_count("main") == rows
    assert len(set(sink_server.es_ids("events"))) == rows
    [materialization] = es.asset_materializations_for_node("sinks__events_in_elasticsearch")
    assert materialization.metadata["accepted"].value == rows
    assert materialization.metadata["dead_lettered"].value == 0
    assert read_progress(lake, "elasticsearch", "events").batch_id == 1

    export = run_job(defs, "export_events")
    [check] = export.get_asset_check_evaluations()
    assert check.passed
    exports = Path(lake.lake_uri).parent / "exports"
    metadata = export.asset_materializations_for_node("events_export")[0].metadata
    manifest = json.loads((exports / metadata["manifest_key"].value).read_text())
    assert manifest["total_rows"] == rows
    exported_ids = set()
    for part in manifest["parts"]:
        data = (exports / part["key"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == part["sha256"]
        lines = gzip.decompress(data).splitlines()
        assert len(lines) == part["rows"]
        exported_ids.update(json.loads(line)["event_id"] for line in lines)
    assert len(exported_ids) == rows

    # A second run finds nothing unsettled; a third ingest of the same files appends nothing.
    run_job(defs, "ingest_events")
    run_job(defs, "post_events_to_elasticsearch")
    run_job(defs, "post_events_to_splunk")
    assert delta_table(lake).num_rows == rows
    assert sink_server.es_count("events") == rows
    assert sink_server.hec_count("main") == rows

    # A crash after posting but before progress was saved: the batch is posted again, and the
    # deterministic ids overwrite instead of duplicating.
    bulk_requests_before = sink_server.stats()["es"]["bulk_requests"]
    write_progress(lake, "elasticsearch", "events", delta_version=-1, batch_id=0)
    run_job(defs, "post_events_to_elasticsearch")
    assert sink_server.stats()["es"]["bulk_requests"] > bulk_requests_before
    assert sink_server.es_count("events") == rows


def test_new_files_are_posted_incrementally(tmp_path: Path, sink_server, spark_resource) -> None:
    lake = local_lake(tmp_path)
    defs = flow_defs(lake, sink_server.url, spark_resource)
    first = land_events(lake, files=2, records_per_file=300)
    run_job(defs, "ingest_events")
    run_job(defs, "post_events_to_elasticsearch")
    second = land_events(lake, files=3, records_per_file=300, start_seq=first)
    run_job(defs, "ingest_events")
    result = run_job(defs, "post_events_to_elasticsearch")

    [materialization] = result.asset_materializations_for_node("sinks__events_in_elasticsearch")
    assert materialization.metadata["records"].value == second
    assert sink_server.es_count("events") == first + second


def test_documents_rejected_inside_a_200_are_dead_lettered_not_counted_as_posted(
    tmp_path: Path, sink_server, spark_resource
) -> None:
    lake = local_lake(tmp_path)
    written = land_events(lake, files=4, records_per_file=250)
    rejected_ids = ["evt-000000003", "evt-000000517", "evt-000000999"]
    requests.post(
        f"{sink_server.url}/_localsink/faults",
        json={"reject_field": "event_id", "reject_values": rejected_ids},
        timeout=10,
    ).raise_for_status()
    defs = flow_defs(lake, sink_server.url, spark_resource)

    run_job(defs, "ingest_events")
    result = run_job(defs, "post_events_to_elasticsearch")

    assert sink_server.es_count("events") == written - len(rejected_ids)
    [materialization] = result.asset_materializations_for_node("sinks__events_in_elasticsearch")
    assert materialization.metadata["accepted"].value == written - len(rejected_ids)
    assert materialization.metadata["dead_lettered"].value == len(rejected_ids)
    dead = delta_table(lake, DEAD_LETTER_TABLE)
    assert dead.num_rows == len(rejected_ids)
    assert set(pc.unique(dead["status"]).to_pylist()) == {400}
    assert all(any(event_id in record for event_id in rejected_ids) for record in dead["record"].to_pylist())
    assert read_progress(lake, "elasticsearch", "events").batch_id == 1


def test_wrong_credentials_fail_fast_with_a_clear_message_and_post_nothing(
    tmp_path: Path, spark_resource
) -> None:
    lake = local_lake(tmp_path)
    land_events(lake, files=1, records_per_file=50)
    with LocalSinkServer(es_api_key="the-right-key").start() as server:
        defs = flow_defs(lake, server.url, spark_resource, api_key="a-wrong-key")
        run_job(defs, "ingest_events")
        result = run_job(defs, "post_events_to_elasticsearch", raise_on_error=False)

        assert not result.success
        failure = result.get_step_failure_events()[0].step_failure_data.error
        assert "refused the credentials with HTTP 401" in failure.message
        assert "a-wrong-key" not in failure.message
        assert server.stats()["es"]["bulk_requests"] == 0  # no retry storm: nothing was posted
    assert read_progress(lake, "elasticsearch", "events").batch_id == 0
    assert DeltaTable(lake.table_uri("events")).version() == 0
