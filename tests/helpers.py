"""Small builders shared by tests: a lake in a temp folder, a landing zone, Delta row counts, a post job."""

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dagster as dg
import orjson
import pyarrow as pa

from lakerelay.devtools.dagster_home import prepare as prepare_dagster_home
from lakerelay.devtools.sample_events import write_landing_zone
from pipelines.feeds import FeedSpec
from pipelines.post.defs import post_defs
from pipelines.routes import RouteSpec
from resources.delta_arrow import read_delta
from resources.lake import LakeResource
from resources.lease import LeaseLog, LeaseRecord

if TYPE_CHECKING:
    from fixtures_s3 import S3Settings


def post_job(sink_key: str, feed: FeedSpec, kind: str = "rest", **route: Any) -> dg.JobDefinition:
    """The post job of a route from ``feed`` to ``sink_key``, built as the definitions build it
    (``post_defs``); ``route`` takes the other ``RouteSpec`` fields (name, where, destination...).

    Its resources are placeholders: pass the real ones to ``execute_in_process(resources=...)``.
    """
    spec = RouteSpec(feed=feed, sink=sink_key, sink_kind=kind, **route)
    placeholders = {key: dg.ResourceDefinition.none_resource() for key in (sink_key, "lake", "pyspark")}
    defs = dg.Definitions.merge(
        post_defs([spec], dg.DefaultSensorStatus.STOPPED, 30), dg.Definitions(resources=placeholders)
    )
    return defs.resolve_job_def(spec.job_name)


def local_lake(root: Path) -> LakeResource:
    return LakeResource(lake_uri=str(root / "lake"), landing_uri=str(root / "landing"))


def s3_lake(s3: "S3Settings") -> LakeResource:
    """A lake and landing zone under one test bucket of the moto server."""
    return LakeResource(
        lake_uri=f"s3://{s3.bucket}/lake",
        landing_uri=f"s3://{s3.bucket}/landing",
        endpoint_url=s3.endpoint_url,
        region_name=s3.region,
        aws_access_key_id=s3.access_key,
        aws_secret_access_key=s3.secret_key,
    )


def land_events(
    lake: LakeResource, files: int, records_per_file: int, start_seq: int = 0, seed: int = 7
) -> int:
    return write_landing_zone(
        Path(lake.landing_uri) / "events", files, records_per_file, seed=seed, start_seq=start_seq
    )


def land_file(lake: LakeResource, feed: str, name: str, content: bytes) -> Path:
    """A landing file of ``feed`` with the given bytes, as an upstream system would drop it."""
    path = Path(lake.landing_uri) / feed / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def json_lines(*records: dict) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in records)


def delta_table(lake: LakeResource, name: str = "events") -> pa.Table:
    return read_delta(lake.table(name), lake.filesystem_settings())


def dagster_cli_env(home: Path, sink_url: str, **extra: str) -> dict[str, str]:
    """Environment for Dagster CLI/daemon subprocesses: a persistent DAGSTER_HOME and lakerelay under ``home``."""
    dagster_home = home / "dagster"
    dagster_home.mkdir(exist_ok=True)
    prepare_dagster_home(dagster_home)  # one slot per lakerelay pool, a queue checked every second
    return {
        **os.environ,
        "DAGSTER_HOME": str(dagster_home),
        "LAKERELAY_HOME": str(home),
        "LAKERELAY_ES_URL": sink_url,
        "LAKERELAY_HEC_URL": sink_url,
        **extra,
    }


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Wait until ``condition()`` holds, polling every 50 ms; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def records(log: LeaseLog) -> list[LeaseRecord]:
    """Every record of a lease log, in sequence order (a seq being written may read as None: skipped)."""
    return [r for r in map(log.read, log.seqs()) if r is not None]
