"""The one place that turns the environment into this deployment's resources, with laptop defaults.

Dagster's way: a setting given in the environment reaches its resource field as ``dg.EnvVar``, so the
Launchpad and the resources page show which variable it came from, the value is resolved when a run
starts, and secrets are never shown. A setting left unset gets its embedded default. Numbers and
flags are parsed here: Dagster has no float or boolean ``EnvVar``, and ``dg.EnvVar.int`` stands for
0 until resolved, which the fields' bounds (``gt=0``) refuse. Every value is checked when the code location loads, so a wrong one stops it with the
variable's name and the fix, not a run later. Reading the environment shapes the definitions only
where it must (feeds file, crons, sensor status and interval); nothing here writes the environment.
"""

import json
import os
import sys
from pathlib import Path
from typing import Any, Literal, TypeVar, cast, overload

import dagster as dg

from resources.export_storage import ExportStorage, LocalExportStorage, S3ExportStorage
from resources.lake import LakeResource
from resources.sinks.resource import ElasticsearchSinkResource, RestSinkResource, SplunkHecSinkResource
from resources.spark import LOCAL_JIT_OPTION, SparkSessionResource, connect_url_has_token, log4j_config_file
from sensors.table import BACKOFF_FIRST_S, BACKOFF_MAX_S

# The local sink server's default HEC token: a development value, not a secret.
LOCAL_HEC_TOKEN = "lakerelay-local-hec-token"

Resource = TypeVar("Resource", bound=dg.ConfigurableResource)


def home() -> Path:
    """Where embedded-default state lives: ``$LAKERELAY_HOME`` or ``./.lakerelay``."""
    return Path(os.environ.get("LAKERELAY_HOME", ".lakerelay")).resolve()


def resolved(resource: Resource) -> Resource:
    """``resource`` with its ``EnvVar`` fields resolved, for code that uses a resource outside a run (CLIs)."""
    return resource.process_config_and_initialize()


@overload
def _env(name: str) -> str | None: ...
@overload
def _env(name: str, default: str) -> str: ...
def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


@overload
def _setting(name: str) -> str | None: ...
@overload
def _setting(name: str, default: str) -> str: ...
def _setting(name: str, default: str | None = None) -> str | None:
    """``dg.EnvVar(name)`` when the variable is set, else ``default``."""
    return dg.EnvVar(name) if _env(name) is not None else default


@overload
def _env_number(name: str, kind: type[int] | type[float]) -> float | None: ...
@overload
def _env_number(name: str, kind: type[int] | type[float], default: float) -> float: ...
def _env_number(name: str, kind: type[int] | type[float], default: float | None = None) -> float | None:
    """A numeric setting; a value that is not a number stops the code location with a clear message."""
    raw = _env(name)
    if raw is None:
        return default
    try:
        return kind(raw)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise ValueError(f"environment variable {name}={raw!r} must be {what}; fix or unset it") from None


def _env_flag(name: str, default: bool = False) -> bool:
    raw = _env(name)
    if raw is None:
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(
        f"environment variable {name}={raw!r} must be true or false (1/0, yes/no); fix or unset it"
    )


def _secret(name: str) -> dg.EnvVar | None:
    return dg.EnvVar(name) if _env(name) else None


def spark_config() -> dict[str, str]:
    """Local Spark by default; ``LAKERELAY_SPARK_REMOTE`` (Spark Connect) or ``LAKERELAY_SPARK_MASTER`` otherwise.

    ``LAKERELAY_SPARK_REMOTE`` is a Spark Connect URL, ``sc://host:port`` with optional parameters
    after ``/;`` (``use_ssl=true``, ``user_id=…``, ``grpc_keepalive_time_ms=…``). Its token is not one
    of them: this config is shown in the Dagster UI, so the token comes from
    ``LAKERELAY_SPARK_CONNECT_TOKEN`` (see :func:`spark_resource`). Local Spark listens on 127.0.0.1
    only and logs at WARN.
    """
    config = {
        "spark.app.name": "lakerelay",
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
    }
    remote = _env("LAKERELAY_SPARK_REMOTE")
    if remote:
        if connect_url_has_token(remote):
            raise ValueError(
                "LAKERELAY_SPARK_REMOTE carries a token= parameter; the URL is shown in the Dagster UI. "
                "Remove it from the URL and put the token in LAKERELAY_SPARK_CONNECT_TOKEN instead"
            )
        config["spark.remote"] = remote
        return config
    master = _env("LAKERELAY_SPARK_MASTER", "local[2]")
    local = master.startswith("local")
    if local:
        config.update(_local_spark_config())
    config.update(
        {
            "spark.master": master,
            "spark.ui.enabled": _env("LAKERELAY_SPARK_UI", "false"),
            "spark.pyspark.python": executor_python(local),
            "spark.driver.memory": _env("LAKERELAY_SPARK_DRIVER_MEMORY", "2g"),
            "spark.sql.shuffle.partitions": "8",
            "spark.ui.showConsoleProgress": "false",
            "spark.sql.debug.maxToStringFields": "200",
        }
    )
    config.update(extra_spark_conf())
    return config


def extra_spark_conf() -> dict[str, str]:
    """``LAKERELAY_SPARK_CONF``: a JSON object of Spark settings for a cluster (executor memory, cores…)."""
    text = _env("LAKERELAY_SPARK_CONF")
    if not text:
        return {}
    try:
        settings = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"LAKERELAY_SPARK_CONF is not JSON ({exc.msg} at character {exc.pos}); write an object such as "
            '{"spark.executor.memory": "4g", "spark.cores.max": "8"}'
        ) from None
    if not isinstance(settings, dict):
        raise ValueError('LAKERELAY_SPARK_CONF must be a JSON object, e.g. {"spark.executor.memory": "4g"}')
    return {str(key): str(value) for key, value in settings.items()}


def executor_python(local: bool) -> str:
    """The Python that Spark's Python workers (the executors' side of the post stage) run.

    ``LAKERELAY_SPARK_EXECUTOR_PYTHON`` when set: on a cluster, the path of a Python on every worker
    that has ``deploy/executor-requirements.txt`` (lakerelay itself is shipped with each session).
    Otherwise, in local mode, ``$PYSPARK_PYTHON`` or this Python (which has the project's packages;
    PySpark's own default ``python3`` is often one without pyarrow); on a cluster ``$PYSPARK_PYTHON``
    or Spark's default ``python3``, as its workers rarely have this process's virtualenv at the same
    path. The session resource hands the choice to PySpark when the session starts.
    """
    chosen = _env("LAKERELAY_SPARK_EXECUTOR_PYTHON")
    if chosen:
        return chosen
    return os.environ.get("PYSPARK_PYTHON", sys.executable if local else "python3")


def _local_spark_config() -> dict[str, str]:
    """Local mode on loopback only, and a quiet console.

    Left alone, Spark resolves the host name, finds it is a loopback address, warns and binds the
    driver, block manager and UI to the first non-loopback interface instead. The driver settings
    keep it on 127.0.0.1 (the session resource also sets ``SPARK_LOCAL_IP`` for the JVM it starts).
    Not for a cluster master, whose executors must reach the driver.
    """
    config = {"spark.driver.bindAddress": "127.0.0.1", "spark.driver.host": "127.0.0.1"}
    java_options = [LOCAL_JIT_OPTION]
    log4j = log4j_config_file()
    if log4j is not None:
        java_options.append(f"-Dlog4j.configurationFile={log4j}")
    config["spark.driver.extraJavaOptions"] = " ".join(java_options)
    return config


def lake_resource() -> LakeResource:
    """The lake and its S3 settings: the one S3 setup of the Delta tables, the landing zone, the
    exports on S3, the lease log and the export CLI. Region unset: ``resources.filesystem.DEFAULT_REGION``;
    ``LAKERELAY_S3_MAX_ATTEMPTS`` unset: each client's own retries."""
    root = home()
    max_attempts = _env_number("LAKERELAY_S3_MAX_ATTEMPTS", int)
    unset_keeps_default: dict[str, Any] = (
        {"max_attempts": int(max_attempts)} if max_attempts is not None else {}
    )
    return LakeResource(
        lake_uri=_setting("LAKERELAY_LAKE_URI", str(root / "lake")),
        landing_uri=_setting("LAKERELAY_LANDING_URI", str(root / "landing")),
        endpoint_url=_setting("LAKERELAY_S3_ENDPOINT_URL") or _setting("AWS_ENDPOINT_URL"),
        region_name=_setting("AWS_REGION"),
        aws_access_key_id=_secret("AWS_ACCESS_KEY_ID"),
        aws_secret_access_key=_secret("AWS_SECRET_ACCESS_KEY"),
        aws_session_token=_secret("AWS_SESSION_TOKEN"),
        **unset_keeps_default,
    )


def sink_resources() -> dict[str, RestSinkResource]:
    shared = sink_tuning()
    return {
        "elasticsearch": ElasticsearchSinkResource(
            sink_name="elasticsearch",
            url=_setting("LAKERELAY_ES_URL", "http://127.0.0.1:9200"),
            index=_setting("LAKERELAY_ES_INDEX", "events"),
            op_type=cast(
                Literal["index", "create"], _setting("LAKERELAY_ES_OP_TYPE", "index")
            ),  # the resource validates it
            pipeline=_setting("LAKERELAY_ES_PIPELINE"),
            id_field=_setting("LAKERELAY_ES_ID_FIELD"),
            api_key=_secret("LAKERELAY_ES_API_KEY"),
            username=_setting("LAKERELAY_ES_USERNAME"),
            password=_secret("LAKERELAY_ES_PASSWORD"),
            bearer_token=_secret("LAKERELAY_ES_BEARER_TOKEN"),
            ca_bundle=_setting("LAKERELAY_ES_CA_BUNDLE"),
            client_cert=_setting("LAKERELAY_ES_CLIENT_CERT"),
            client_key=_setting("LAKERELAY_ES_CLIENT_KEY"),
            **shared,
        ),
        "splunk": SplunkHecSinkResource(
            sink_name="splunk",
            url=_setting("LAKERELAY_HEC_URL", "http://127.0.0.1:8088"),
            token=_secret("LAKERELAY_HEC_TOKEN") or LOCAL_HEC_TOKEN,
            index=_setting("LAKERELAY_HEC_INDEX"),
            ack=_env_flag("LAKERELAY_HEC_ACK"),
            ca_bundle=_setting("LAKERELAY_HEC_CA_BUNDLE"),
            client_cert=_setting("LAKERELAY_HEC_CLIENT_CERT"),
            client_key=_setting("LAKERELAY_HEC_CLIENT_KEY"),
            **shared,
        ),
    }


def sink_tuning() -> dict[str, Any]:
    """Batching and flow-control settings shared by the sinks, from ``LAKERELAY_SINK_*`` when set."""
    whole = {
        "max_records_per_call": "LAKERELAY_SINK_MAX_RECORDS_PER_CALL",
        "max_bytes_per_call": "LAKERELAY_SINK_MAX_BYTES_PER_CALL",
        "max_in_flight": "LAKERELAY_SINK_MAX_IN_FLIGHT",
        "gzip_level": "LAKERELAY_SINK_GZIP_LEVEL",
    }
    fractional = {
        "delivery_timeout_s": "LAKERELAY_SINK_DELIVERY_TIMEOUT_S",
        "rate_limit_requests_per_s": "LAKERELAY_SINK_RATE_LIMIT_REQUESTS_PER_S",
        "rate_limit_records_per_s": "LAKERELAY_SINK_RATE_LIMIT_RECORDS_PER_S",
    }
    tuning: dict[str, Any] = {key: _env_number(name, int) for key, name in whole.items() if _env(name)}
    tuning |= {key: _env_number(name, float) for key, name in fractional.items() if _env(name)}
    if _env("LAKERELAY_SINK_ADAPTIVE_CONCURRENCY"):
        tuning["adaptive_concurrency"] = _env_flag("LAKERELAY_SINK_ADAPTIVE_CONCURRENCY")
    return tuning


def export_storage_resource(lake: LakeResource | None = None) -> ExportStorage:
    """S3 (any endpoint) when ``LAKERELAY_EXPORT_BUCKET`` is set, else a local folder standing in for it.

    On S3 the connection is ``lake``'s (default: :func:`lake_resource`), so the exports use the same
    endpoint, region and credentials as the Delta tables; only bucket, prefix and how long S3 calls
    are retried (``LAKERELAY_EXPORT_RETRY_DEADLINE_S``, default 600) are their own.
    """
    bucket = _env("LAKERELAY_EXPORT_BUCKET")
    if not bucket:
        return LocalExportStorage(root=_setting("LAKERELAY_EXPORT_DIR", str(home() / "exports")))
    deadline = _env_number("LAKERELAY_EXPORT_RETRY_DEADLINE_S", float)
    unset_keeps_default: dict[str, Any] = {"retry_deadline_s": deadline} if deadline is not None else {}
    return S3ExportStorage(
        lake=lake or lake_resource(),
        bucket=_setting("LAKERELAY_EXPORT_BUCKET", bucket),
        prefix=_setting("LAKERELAY_EXPORT_PREFIX", "exports"),
        **unset_keeps_default,
    )


def exports_file() -> str | None:
    """YAML/JSON file listing the exports (``LAKERELAY_EXPORTS_FILE``); unset: one export per feed."""
    return _env("LAKERELAY_EXPORTS_FILE")


def export_cleanup_cron() -> str:
    """When the export retention job runs (``LAKERELAY_EXPORT_CLEANUP_CRON``, default daily 03:00 UTC)."""
    return _env("LAKERELAY_EXPORT_CLEANUP_CRON", "0 3 * * *")


def spark_resource() -> SparkSessionResource:
    """Spark starts when a post op first needs it: after planning and the sink check, never for an empty run.

    With ``LAKERELAY_SPARK_REMOTE`` the session is a Spark Connect session on that server (no JVM in
    the run), authenticated with ``LAKERELAY_SPARK_CONNECT_TOKEN`` when set (resolved at run time,
    never shown); pyspark's own ``SPARK_CONNECT_AUTHENTICATE_TOKEN`` works too.
    """
    return SparkSessionResource(
        spark_config=spark_config(),
        connect_token=_secret("LAKERELAY_SPARK_CONNECT_TOKEN"),
        connect_timeout_s=_env_number("LAKERELAY_SPARK_CONNECT_TIMEOUT_S", float, 45.0),
        connect_retry_s=_env_number("LAKERELAY_SPARK_CONNECT_RETRY_S", float, 30.0),
    )


def sensors_default_status() -> dg.DefaultSensorStatus:
    running = _env_flag("LAKERELAY_SENSORS_RUNNING")
    return dg.DefaultSensorStatus.RUNNING if running else dg.DefaultSensorStatus.STOPPED


def sensor_interval_seconds() -> int:
    return int(_env_number("LAKERELAY_SENSOR_INTERVAL_S", int, 30))


JOB_LAYOUTS = ("per_route", "shared")


def job_layout() -> str:
    """``per_route`` (default): a job per feed (``ingest_<feed>``, ``relay_<feed>``) and per route
    (``post_<feed>_to_<route>``); ``shared``: one ``ingest_feeds``, ``relay_feeds`` and ``post_routes``
    job whose runs select the assets of one feed or route. The daemon fetches every job's snapshot
    again each minute, so with many feeds ``shared`` is what keeps it idle (bench/feeds.py)."""
    layout = _env("LAKERELAY_JOB_LAYOUT", "per_route")
    if layout not in JOB_LAYOUTS:
        raise ValueError(
            f"environment variable LAKERELAY_JOB_LAYOUT={layout!r} must be one of {', '.join(JOB_LAYOUTS)}; "
            "fix or unset it"
        )
    return layout


def retry_backoff_s() -> tuple[float, float]:
    """First and longest wait before a sensor requests a failed run again (default: the sensors')."""
    first = float(_env_number("LAKERELAY_RETRY_BACKOFF_S", float, BACKOFF_FIRST_S))
    longest = float(_env_number("LAKERELAY_RETRY_BACKOFF_MAX_S", float, BACKOFF_MAX_S))
    if first <= 0 or longest < first:
        raise ValueError(
            f"LAKERELAY_RETRY_BACKOFF_S={first} and LAKERELAY_RETRY_BACKOFF_MAX_S={longest}: both must be "
            "positive and the first at most the longest; fix or unset them"
        )
    return first, longest


def maintenance_cron() -> str:
    """When each feed's table, ledger and quarantine table are compacted and vacuumed (daily by default)."""
    return _env("LAKERELAY_MAINTENANCE_CRON", "30 3 * * *")


def defs_project_root() -> Path | None:
    """``LAKERELAY_DEFS_PROJECT``: a dg project folder (its pyproject.toml names its defs module)
    whose feeds, sinks, routes and exports this deployment runs instead of the shipped ones: keep
    the declarations in a repository of their own, or try a topology without editing this one."""
    root = _env("LAKERELAY_DEFS_PROJECT")
    if root is None:
        return None
    path = Path(root).resolve()
    if not (path / "pyproject.toml").is_file():
        raise ValueError(
            f"LAKERELAY_DEFS_PROJECT={root!r} has no pyproject.toml; point it at a dg project folder "
            "(with [tool.dg.project] defs_module) or unset it"
        )
    return path


def feeds_file() -> str | None:
    """``LAKERELAY_FEEDS_FILE``: a deployment declared before components (feeds to every sink)."""
    return _env("LAKERELAY_FEEDS_FILE")


def feeds(default: list) -> list:
    """The feeds in ``$LAKERELAY_FEEDS_FILE`` (YAML or JSON), or ``default`` when it is unset."""
    from pipelines.feeds import load_feeds  # here, so that importing deployment stays light

    return load_feeds(_env("LAKERELAY_FEEDS_FILE"), default)
