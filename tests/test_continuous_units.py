"""Continuous mode's small parts: the coalesced report (clock injected), S3 notification bodies, and
what the definitions hold for a feed in continuous mode."""

import dataclasses
import os
from datetime import timedelta

import dagster as dg
import orjson
import pytest

from pipelines.continuous.defs import continuous_defs, with_continuous_freshness
from pipelines.continuous.report import CoalescedReport
from pipelines.continuous.watchers import FolderWatcher, landed_keys
from pipelines.feeds import EVENTS_FEED, feed_from_mapping
from pipelines.post.defs import post_defs
from pipelines.routes import RouteSpec
from resources.sinks.resource import ElasticsearchSinkResource

ES = dg.AssetKey(["sinks", "events_in_es"])
HEC = dg.AssetKey(["sinks", "events_in_hec"])


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_report_coalesces_micro_batches_into_one_materialization_per_asset_and_interval():
    clock = Clock()
    report = CoalescedReport(dg.AssetKey("events"), {"es": ES, "hec": HEC}, interval_s=60, clock=clock)
    for n in range(5):  # five micro-batches in one minute
        report.ingested(rows=10, files=1, delta_version=n, discovered_at=clock.now)
        report.posted("es", {"records": dg.MetadataValue.int(10), "accepted": dg.MetadataValue.int(10)})
        report.caught_up("es")
        clock.now += 5
    report.failed("hec", "ConnectionError: down")  # HEC posted nothing and is 50 records behind
    assert not report.due()
    clock.now += 35
    assert report.due()
    events = report.events()
    assert [e.asset_key for e in events] == [dg.AssetKey("events"), ES]  # a stuck sink is not reported
    assert events[0].metadata["continuous_rows_total"].value == 50
    assert events[1].metadata["continuous_records_total"].value == 10 * 5
    assert events[1].metadata["lag_records"].value == 0
    assert not report.due()
    # HEC catches up in the next window: reported, lag zero; the totals carry over.
    report.posted("hec", {"records": 50, "accepted": 50})
    report.caught_up("hec")
    clock.now += 60
    events = {e.asset_key: e for e in report.events()}
    assert (
        events[HEC].metadata["continuous_records_total"].value == 50
        and events[HEC].metadata["lag_records"].value == 0
    )
    assert events[dg.AssetKey("events")].metadata["continuous_window_rows"].value == 0


def test_lag_counts_records_and_seconds_since_the_oldest_unsettled_was_found():
    clock = Clock()
    report = CoalescedReport(dg.AssetKey("events"), {"es": ES}, interval_s=60, clock=clock)
    report.ingested(rows=7, files=1, delta_version=1, discovered_at=clock.now)
    report.posted("es", {"records": 3})
    report.failed("es", "Failure: 503")
    clock.now += 12
    report.ingested(rows=5, files=1, delta_version=2, discovered_at=clock.now)
    clock.now += 48
    [_, es] = report.events()
    assert es.metadata["lag_records"].value == 12 and es.metadata["lag_s"].value == 60.0


def test_s3_notification_keys_are_url_decoded_and_test_events_have_none():
    body = orjson.dumps(
        {
            "Records": [
                {"eventName": "ObjectCreated:Put", "s3": {"object": {"key": "landing%2Fevents%2Fa+b.json"}}},
                {"eventName": "ObjectRemoved:Delete", "s3": {"object": {"key": "landing/events/c.json"}}},
            ]
        }
    ).decode()
    assert landed_keys(body) == ["landing/events/a b.json"]
    assert landed_keys('{"Service":"Amazon S3","Event":"s3:TestEvent"}') == []
    assert landed_keys("not json") == []


def test_a_feed_mode_other_than_triggered_or_continuous_is_refused():
    with pytest.raises(ValueError, match="mode 'streaming' is not one of triggered, continuous"):
        feed_from_mapping({"name": "x", "mode": "streaming"})


def test_continuous_feeds_get_a_job_a_keeper_freshness_and_no_table_sensor_target():
    continuous = dataclasses.replace(EVENTS_FEED, mode="continuous")
    triggered = dataclasses.replace(EVENTS_FEED, name="other", source="other")
    feeds, sinks = (
        [continuous, triggered],
        {"es": ElasticsearchSinkResource(sink_name="es", url="http://127.0.0.1:9")},
    )
    routes = [RouteSpec(feed, "es", sink_kind="elasticsearch") for feed in feeds]
    post = post_defs(routes, dg.DefaultSensorStatus.STOPPED, 30)
    [sensor] = post.sensors
    assert "1 routes" in (sensor.description or "")  # only the triggered feed's route is watched
    extra = continuous_defs(feeds, routes, dg.DefaultSensorStatus.STOPPED, 30)
    assert [j.name for j in extra.jobs] == ["continuous_events"]
    assert [s.name for s in extra.sensors] == ["events_continuous_keeper"]
    resources = dg.Definitions(
        resources={
            "es": sinks["es"],
            "lake": dg.ResourceDefinition.none_resource(),
            "pyspark": dg.ResourceDefinition.none_resource(),
        }
    )
    merged = with_continuous_freshness(dg.Definitions.merge(post, extra, resources), routes)
    graph = merged.get_repository_def().asset_graph
    policy = graph.get(dg.AssetKey(["sinks", "events_in_es"])).freshness_policy
    assert policy is not None and policy.fail_window.to_timedelta() == timedelta(minutes=5)
    assert graph.get(dg.AssetKey(["sinks", "other_in_es"])).freshness_policy is None


def test_the_folder_watcher_wakes_on_a_rename_from_outside_and_on_close_not_on_creation(tmp_path):
    landing, outside = tmp_path / "landing", tmp_path / "staging"
    landing.mkdir()
    outside.mkdir()
    watcher = FolderWatcher(str(landing), backfill_s=3600)
    try:
        (outside / "a.json").write_bytes(b'{"n": 1}\n')
        os.replace(outside / "a.json", landing / "a.json")  # what bench.freshness and many shippers do
        assert watcher.wait(30)
        with (landing / "b.json").open("wb") as writer:  # written in place: not taken while open
            writer.write(b'{"n": 2}\n')
            writer.flush()
            assert not watcher.wait(0.5)
        assert watcher.wait(30)  # closed: now it is
    finally:
        watcher.close()
