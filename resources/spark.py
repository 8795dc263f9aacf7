"""The Spark resource: local Spark, a cluster, or a Spark Connect server, chosen by configuration.

dagster_pyspark's ``LazyPySparkResource`` builds every session with the classic builder. Given
``spark.remote`` that builder does switch to Spark Connect, but it refuses when the process already
has a classic SparkContext (``SESSION_ALREADY_EXIST``), it sets ``SPARK_CONNECT_MODE_ENABLED`` in the
process environment (after which every classic builder call in the process is sent to Connect too),
it returns the process's default Connect session whatever URL is asked for, and a server that is not
there surfaces only after the client's ~10 minutes of retries. :class:`SparkSessionResource` keeps
``LazyPySparkResource``'s config and ``.spark_session`` property and builds Connect sessions with the
Connect client itself: one session per resource, checked within ``connect_timeout_s``, with the token
from the environment rather than from the URL, released when the run ends.
"""

import hashlib
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dagster as dg
from dagster_pyspark import LazyPySparkResource
from dagster_pyspark.resources import spark_session_from_config
from pydantic import Field, PrivateAttr

if TYPE_CHECKING:
    from pyspark.sql.connect.session import SparkSession as ConnectSparkSession

# Spark's console at WARN, without the lines every start prints: "Using Spark's default log4j
# profile", "Setting default log level", and the native-hadoop notice (pure-Java codecs are fine here).
LOG4J2_CONSOLE_WARN = """\
rootLogger.level = warn
rootLogger.appenderRef.console.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{yy/MM/dd HH:mm:ss} %p %c{1}: %m%n%ex
logger.native_hadoop.name = org.apache.hadoop.util.NativeCodeLoader
logger.native_hadoop.level = error
"""


class SparkConnectUnavailable(dg.Failure):
    """The Spark Connect server in the configuration cannot be reached or refused the session.

    A ``dg.Failure`` without retries: the session was already awaited for ``connect_timeout_s``, so
    an op retry would only wait as long again before saying the same.
    """

    def __init__(self, description: str) -> None:
        super().__init__(description=description, allow_retries=False)


# Local Spark runs many short queries (one per micro-batch). With the JVM's default thresholds its JIT
# kept compiling Catalyst's lukewarm planning code on every run: 0.4-1.6 s of compile time per
# 100k-record post, half of the JVM's CPU. Fifteen times the thresholds leaves that code to the
# interpreter and still compiles the per-record loops (bench.spark_post profile: JIT 0.1-0.2 s per
# run, JVM CPU median 1.33 -> 1.11 CPU-s per 100k, the first run 22 -> 18 CPU-s; 40 times was slower).
LOCAL_JIT_OPTION = "-XX:CompileThresholdScaling=15"


def log4j_config_file(text: str = LOG4J2_CONSOLE_WARN, directory: Path | None = None) -> Path | None:
    """A log4j2 properties file holding ``text`` (written once, named by its content), or None.

    The JVM reads it from ``-Dlog4j.configurationFile``; None (no file, Spark's own defaults) when the
    folder is not writable or its path has a space, which Spark's option splitting would cut.
    """
    folder = directory or Path(tempfile.gettempdir())
    path = folder / f"lakerelay-log4j2-{hashlib.sha256(text.encode()).hexdigest()[:12]}.properties"
    if " " in str(path):
        return None
    try:
        if not path.exists() or path.read_text() != text:
            folder.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(f".{os.getpid()}.partial")
            partial.write_text(text)
            partial.replace(path)  # atomic: a JVM starting meanwhile never reads half a file
    except OSError:
        return None
    return path


def connect_url_for_display(url: str) -> str:
    """``sc://host:port`` without the URL's parameters (``;token=…`` must never reach a log)."""
    return url.split(";", 1)[0].rstrip("/")


def connect_url_has_token(url: str) -> bool:
    parameters = url.split(";")[1:]
    return any(p.split("=", 1)[0].strip().lower() == "token" for p in parameters)


def connect_session(
    url: str, token: str | None = None, options: dict[str, Any] | None = None, timeout_s: float = 60.0
) -> "ConnectSparkSession":
    """A new Spark Connect session on ``url``, checked with one round trip that gives up after ``timeout_s``.

    ``token`` is sent as the bearer token (gRPC credentials; pyspark then uses TLS unless the host is
    ``localhost``). ``options`` are applied to the session like the builder's ``config()``: Spark SQL
    settings take effect, settings the server owns (``spark.master``, the app name) are ignored.
    """
    from pyspark.errors import PySparkValueError
    from pyspark.sql.connect.client import DefaultChannelBuilder
    from pyspark.sql.connect.client.retries import DefaultPolicy
    from pyspark.sql.connect.session import SparkSession as ConnectSession

    shown = connect_url_for_display(url)
    try:
        channel = DefaultChannelBuilder(url)
    except PySparkValueError as exc:
        # pyspark's detail can quote the whole URL, parameters included: only without a token.
        detail = f": {str(exc).rstrip('.')}" if not connect_url_has_token(url) else ""
        raise SparkConnectUnavailable(
            f"LAKERELAY_SPARK_REMOTE={shown!r} is not a Spark Connect URL{detail}. "
            "Use sc://host:port, parameters after /; (sc://host:port/;use_ssl=true)"
        ) from None
    if token:
        channel.set("token", token)
    probe = ConnectSession(connection=channel)
    # The client's default policy retries an unreachable server for ~10 minutes; a run should say
    # within seconds that the server is not there. Backoff 0.25 s doubling to 5 s, ~timeout_s in all.
    retries, waited, backoff = 0, 0.0, 0.25
    while waited + backoff <= timeout_s:
        waited, backoff, retries = waited + backoff, min(backoff * 2, 5.0), retries + 1
    probe.client.set_retry_policies(
        [DefaultPolicy(max_retries=retries, initial_backoff=250, backoff_multiplier=2.0, max_backoff=5000)]
    )
    try:
        with warnings.catch_warnings():  # pyspark also warns RETRIES_EXCEEDED; the error below says it
            warnings.simplefilter("ignore", UserWarning)
            probe.version  # noqa: B018 - one round trip: reachable, accepts this client and its token
    except Exception as exc:
        probe.release_session_on_close = False  # no session to release, and releasing would retry again
        # gRPC's own words ("StatusCode.UNAVAILABLE … Connection refused"), not its whole repr.
        text = " ".join(str(exc).split())
        details = re.search(r"status = StatusCode\.(\w+) details = \"([^\"]*)\"", text)
        reason = f"{details[1]}: {details[2]}" if details else text[:400]
        hint = (
            "check the token in LAKERELAY_SPARK_CONNECT_TOKEN (or SPARK_CONNECT_AUTHENTICATE_TOKEN)"
            if "UNAUTHENTICATED" in reason or "PERMISSION_DENIED" in reason
            else "the server does not speak TLS, which pyspark uses with a token unless the host is "
            "localhost: serve TLS (a proxy in front of it) or use sc://localhost for a local server"
            if "Tls handshake failed" in reason or "SSL_ERROR" in reason
            else "start it (`make ui` runs one on sc://127.0.0.1:15002; "
            "`python -m devtools.spark_connect start --port <port>` starts one), fix LAKERELAY_SPARK_REMOTE, "
            "or unset LAKERELAY_SPARK_REMOTE to run Spark locally in each run"
        )
        raise SparkConnectUnavailable(
            f"cannot open a session on the Spark Connect server {shown} within {timeout_s:.0f}s: {reason}. "
            f"What to do: {hint}."
        ) from None
    finally:
        probe.stop()
    # The public builder makes the session the process's default Connect session when there is none
    # (some client APIs look it up) and applies the options; the default retry policy is back for the
    # run itself, so a server restart mid-run is ridden out.
    builder = ConnectSession.builder.channelBuilder(channel)
    options = {k: v for k, v in (options or {}).items() if k not in ("spark.remote", "spark.master")}
    return builder.config(map=options).create() if options else builder.create()


def prepare_classic_environment(spark_config: dict[str, Any]) -> None:
    """What a classic session reads from this process's environment rather than from its config.

    PySpark's driver hands ``$PYSPARK_PYTHON`` to the executors as their Python (the
    ``spark.pyspark.python`` setting alone is read only by spark-submit). The JVM binds the block
    manager and UI by ``SPARK_LOCAL_IP``: loopback when the driver is bound there (local mode), unless
    the environment says otherwise. Done when a session starts, never when the definitions load.
    """
    python = spark_config.get("spark.pyspark.python")
    if python:
        os.environ["PYSPARK_PYTHON"] = str(python)
    if spark_config.get("spark.driver.bindAddress") == "127.0.0.1":
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")


class SparkSessionResource(LazyPySparkResource):
    """``LazyPySparkResource`` (same ``spark_config`` and ``.spark_session``) that also speaks Spark Connect.

    With ``spark.remote`` in ``spark_config`` the session is a Spark Connect session on that server,
    whether or not the process already has a classic session; otherwise the classic builder's
    ``getOrCreate`` as before. The session is created when ``.spark_session`` is first read.
    """

    connect_token: str | None = Field(
        default=None,
        description="Bearer token for the Spark Connect server; pass dg.EnvVar('LAKERELAY_SPARK_CONNECT_TOKEN').",
    )
    connect_timeout_s: float = Field(
        default=60.0, gt=0, description="How long to wait for the Spark Connect server when a run starts."
    )
    _connect_session: bool = PrivateAttr(default=False)

    @classmethod
    def _is_dagster_maintained(cls) -> bool:
        return False

    def _init_session(self) -> None:
        if self._spark_session is not None:
            return
        remote = self.spark_config.get("spark.remote")
        if remote:
            self._spark_session = connect_session(
                str(remote), self.connect_token, self.spark_config, self.connect_timeout_s
            )
            self._connect_session = True
        else:
            # PySpark's driver hands $PYSPARK_PYTHON to the executors as their Python; the
            # spark.pyspark.python setting alone is read only by spark-submit, not by this process.
            prepare_classic_environment(self.spark_config)
            self._spark_session = spark_session_from_config(self.spark_config)

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        # A Connect session lives on the server until released; a local session is shared and stays.
        if self._connect_session and self._spark_session is not None:
            self._spark_session.stop()
            self._spark_session = None
            self._connect_session = False
