"""The Spark resource: local Spark, a cluster, or a Spark Connect server, chosen by configuration.

dagster_pyspark's ``LazyPySparkResource`` builds every session with the classic builder. Given
``spark.remote`` that builder does switch to Spark Connect, but it refuses when the process already
has a classic SparkContext (``SESSION_ALREADY_EXIST``), it sets ``SPARK_CONNECT_MODE_ENABLED`` in the
process environment (after which every classic builder call in the process is sent to Connect too),
it returns the process's default Connect session whatever URL is asked for, and a server that is not
there surfaces only after the client's ~10 minutes of retries. :class:`SparkSessionResource` has
``LazyPySparkResource``'s config and ``.spark_session`` property (a resource of its own, so it needs
none of that class's private hooks) and builds Connect sessions with the Connect client itself: one session per resource, checked within ``connect_timeout_s``, with the token
from the environment rather than from the URL, released when the run ends.

A Connect session's calls ride out an unreachable server for ``connect_retry_s`` (the client's default
is ~10 minutes), so a server that dies fails the run within a minute; a session the server no longer
knows (it restarted) is replaced by a new one at the next attempt; and the run's operations on the
server are interrupted when the run ends, fails or its process exits, so the server's Python workers
stop posting.
"""

import atexit
import contextlib
import hashlib
import os
import re
import tempfile
import threading
import warnings
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dagster as dg
from pydantic import Field, PrivateAttr

if TYPE_CHECKING:
    from pyspark.sql import SparkSession
    from pyspark.sql.connect.client import DefaultChannelBuilder
    from pyspark.sql.connect.client.retries import RetryPolicy
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


# A bounded retry waits 0.25 s, then doubles up to 5 s between tries (pyspark's default policy starts at
# 50 ms, multiplies by 4 up to 60 s, and gives up after ~10 minutes).
_FIRST_BACKOFF_MS, _MAX_BACKOFF_MS = 250, 5000
# How long ending a session may take on a server that does not answer (interrupt, then release).
_END_SESSION_BUDGET_S = 2.0


def bounded_retry_policy(budget_s: float) -> "RetryPolicy":
    """pyspark's ``DefaultPolicy`` (what it retries: UNAVAILABLE, errors the server marks retryable), ~``budget_s`` in all.

    0 gives a policy that never retries. The server may ask for a longer wait (gRPC ``RetryInfo``); it
    is honoured up to the longest backoff, never the client's default of 10 minutes.
    """
    from pyspark.sql.connect.client.retries import DefaultPolicy

    retries, waited, backoff = 0, 0.0, _FIRST_BACKOFF_MS / 1000
    while waited + backoff <= budget_s:
        waited, backoff, retries = waited + backoff, min(backoff * 2, _MAX_BACKOFF_MS / 1000), retries + 1
    return DefaultPolicy(
        max_retries=retries,
        initial_backoff=_FIRST_BACKOFF_MS,
        backoff_multiplier=2.0,
        max_backoff=_MAX_BACKOFF_MS,
        jitter=250,
        min_jitter_threshold=2000,
        recognize_server_retry_delay=True,
        max_server_retry_delay=_MAX_BACKOFF_MS,
    )


@contextlib.contextmanager
def _retrying_for(session: "ConnectSparkSession", budget_s: float) -> Iterator[None]:
    """Calls of ``session`` inside the block ride out an unreachable server for ~``budget_s`` only."""
    client = session.client
    before = client.get_retry_policies()
    client.set_retry_policies([bounded_retry_policy(budget_s)])
    try:
        yield
    finally:
        client.set_retry_policies(before)


# Connect sessions this process opened and the server of each (as shown: no token). A failure message
# names the server; at exit the sessions a run did not end are interrupted and released.
_OPEN_SESSIONS: "weakref.WeakKeyDictionary[ConnectSparkSession, str]" = weakref.WeakKeyDictionary()
_OPEN_SESSIONS_LOCK = threading.Lock()


def connect_server_of(spark: object) -> str | None:
    """The Spark Connect server (``sc://host:port``, never a token) of a session from :func:`connect_session`."""
    with _OPEN_SESSIONS_LOCK:
        try:
            return _OPEN_SESSIONS.get(spark)  # type: ignore[arg-type]
        except TypeError:  # not weak-referenceable: not one of ours
            return None


def connect_session_is_usable(session: "ConnectSparkSession") -> bool:
    """One round trip without retries: False when the session is closed, gone from its server, or the server is down.

    A server that restarted no longer knows the session (pyspark then closes it: ``NO_ACTIVE_SESSION``
    on every later call); only a new session works there.
    """
    if session.is_stopped:
        return False
    try:
        with _retrying_for(session, 0), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # RETRIES_EXCEEDED: the answer is False
            session.version  # noqa: B018 - an AnalyzePlan round trip, checked against the session
    # A boundary: a gone server or session shows as gRPC errors, pyspark's own, or ValueError from a
    # closed channel, depending on where it broke; the caller only needs "start a new session".
    except Exception:
        return False
    return not session.is_stopped


def end_connect_session(session: "ConnectSparkSession") -> list[str]:
    """Interrupt the session's operations on the server, then release it; the ids of what was interrupted.

    The server then stops the session's Spark jobs, whose tasks stop their Python workers: nothing is
    posted for a run that has ended. Bounded to a few seconds whatever the server's state, and never
    raises (it runs when a run ends, fails, or its process exits).
    """
    with _OPEN_SESSIONS_LOCK:
        _OPEN_SESSIONS.pop(session, None)
    if session.is_stopped:
        return []
    with _retrying_for(session, _END_SESSION_BUDGET_S), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        try:
            interrupted = list(session.interruptAll())
        except Exception:
            # The server is not there (or lost the session): nothing to interrupt or release. Closing
            # the channel waits up to 10 s for pyspark's background releases of the call that failed,
            # still retrying a dead server: that wait is not the run's.
            session.release_session_on_close = False
            threading.Thread(target=session.stop, name="lakerelay-connect-close", daemon=True).start()
            return []
        session.stop()
    return interrupted


def _end_open_sessions() -> None:
    """At exit: interrupt and release the Connect sessions a run left open (its process is ending)."""
    with _OPEN_SESSIONS_LOCK:
        sessions = list(_OPEN_SESSIONS.keys())
    for session in sessions:
        with contextlib.suppress(Exception):
            end_connect_session(session)


atexit.register(_end_open_sessions)


def connect_session(
    url: str,
    token: str | None = None,
    options: dict[str, Any] | None = None,
    timeout_s: float = 60.0,
    retry_s: float = 30.0,
) -> "ConnectSparkSession":
    """A new Spark Connect session on ``url``, checked with one round trip that gives up after ``timeout_s``.

    ``token`` is sent as the bearer token (gRPC credentials; pyspark then uses TLS unless the host is
    ``localhost``). ``options`` are applied to the session like the builder's ``config()``: Spark SQL
    settings take effect, settings the server owns (``spark.master``, the app name) are ignored.
    Each later call of the session rides out an unreachable server for ``retry_s``, then raises.
    """
    from pyspark.sql.connect.session import SparkSession as ConnectSession

    shown = connect_url_for_display(url)
    channel = _connect_channel(url, shown)
    if token:
        channel.set("token", token)
    _probe_connect_server(channel, shown, timeout_s)
    # The public builder makes the session the process's default Connect session when there is none
    # (some client APIs look it up) and applies the options.
    builder = ConnectSession.builder.channelBuilder(channel)
    options = {k: v for k, v in (options or {}).items() if k not in ("spark.remote", "spark.master")}
    session = builder.config(map=options).create() if options else builder.create()
    # Riding out a dead server for the default ~10 minutes buys nothing: a server that comes back has
    # lost this session anyway. A blip of up to retry_s is ridden out; longer fails the call.
    session.client.set_retry_policies([bounded_retry_policy(retry_s)])
    with _OPEN_SESSIONS_LOCK:
        _OPEN_SESSIONS[session] = shown
    return session


def _connect_channel(url: str, shown: str) -> "DefaultChannelBuilder":
    """pyspark's channel builder for ``url``; a URL it refuses is one line naming the variable."""
    from pyspark.errors import PySparkValueError
    from pyspark.sql.connect.client import DefaultChannelBuilder

    try:
        return DefaultChannelBuilder(url)
    except PySparkValueError as exc:
        # pyspark's detail can quote the whole URL, parameters included: only without a token.
        detail = f": {str(exc).rstrip('.')}" if not connect_url_has_token(url) else ""
        raise SparkConnectUnavailable(
            f"LAKERELAY_SPARK_REMOTE={shown!r} is not a Spark Connect URL{detail}. "
            "Use sc://host:port, parameters after /; (sc://host:port/;use_ssl=true)"
        ) from None


def _probe_connect_server(channel: "DefaultChannelBuilder", shown: str, timeout_s: float) -> None:
    """One round trip on a throwaway session: the server is reachable and accepts this client and its
    token, or ``SparkConnectUnavailable`` says why and what to do, within ``timeout_s``."""
    from pyspark.sql.connect.session import SparkSession as ConnectSession

    probe = ConnectSession(connection=channel)
    # The client's default policy retries an unreachable server for ~10 minutes; a run should say
    # within seconds that the server is not there.
    probe.client.set_retry_policies([bounded_retry_policy(timeout_s)])
    try:
        with warnings.catch_warnings():  # pyspark also warns RETRIES_EXCEEDED; the error below says it
            warnings.simplefilter("ignore", UserWarning)
            probe.version  # noqa: B018 - one round trip: reachable, accepts this client and its token
    # A boundary: pyspark reports an unreachable or refusing server as gRPC errors, its own
    # exceptions or RetriesExceeded, depending on the version and the failure; each becomes the one
    # line below, with the reason grpc_reason finds in it.
    except Exception as exc:
        probe.release_session_on_close = False  # no session to release, and releasing would retry again
        reason = grpc_reason(exc)
        raise SparkConnectUnavailable(
            f"cannot open a session on the Spark Connect server {shown} within {timeout_s:.0f}s: {reason}. "
            f"What to do: {_connect_hint(reason)}."
        ) from None
    finally:
        probe.stop()


def _connect_hint(reason: str) -> str:
    if "UNAUTHENTICATED" in reason or "PERMISSION_DENIED" in reason:
        return "check the token in LAKERELAY_SPARK_CONNECT_TOKEN (or SPARK_CONNECT_AUTHENTICATE_TOKEN)"
    if "Tls handshake failed" in reason or "SSL_ERROR" in reason:
        return (
            "the server does not speak TLS, which pyspark uses with a token unless the host is "
            "localhost: serve TLS (a proxy in front of it) or use sc://localhost for a local server"
        )
    return START_CONNECT_SERVER_HINT


START_CONNECT_SERVER_HINT = (
    "start it (`make ui` runs one on sc://127.0.0.1:15002; "
    "`python -m lakerelay.devtools.spark_connect start --port <port>` starts one), fix LAKERELAY_SPARK_REMOTE, "
    "or unset LAKERELAY_SPARK_REMOTE to run Spark locally in each run"
)


def grpc_reason(exc: BaseException | str) -> str:
    """gRPC's own words (``UNAVAILABLE: … Connection refused``) from a Connect error, not its whole repr."""
    text = " ".join(str(exc).split())
    details = re.search(r"status = StatusCode\.(\w+) details = \"([^\"]*)\"", text)
    return f"{details[1]}: {details[2]}" if details else text[:400]


def forget_dead_local_driver() -> bool:
    """When this process's Spark driver JVM has exited (killed, out of memory), forget it; True if it had.

    pyspark keeps the dead JVM's gateway for the life of the process, so every later session (a retry
    of the run's step) would fail with "Connection refused" at once. With it forgotten, the next
    session starts a new JVM. pyspark has no public call for this: these are the class attributes its
    own ``SparkContext``/``SparkSession`` start from.
    """
    from pyspark.core.context import SparkContext
    from pyspark.sql import SparkSession

    gateway = SparkContext._gateway
    process = getattr(gateway, "proc", None)
    if gateway is None or process is None or process.poll() is None:
        return False
    with SparkContext._lock:
        context = SparkContext._active_spark_context
        server = getattr(context, "_accumulatorServer", None)
        if server is not None:
            with contextlib.suppress(Exception):
                server.shutdown()  # its socket and thread, which served the dead JVM
        with contextlib.suppress(Exception):
            gateway.close()
        SparkContext._active_spark_context = None
        SparkContext._gateway = None
        SparkContext._jvm = None
        SparkSession._instantiatedSession = None
        SparkSession._activeSession = None
    return True


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


# Spark 4's launcher always adds --add-modules=jdk.incubator.vector, and the JVM then prints this line
# on its stderr at every start, in every run's output; it says nothing a user can act on.
_JVM_NOISE = (b"WARNING: Using incubator modules: jdk.incubator.vector",)


def _forward_stderr(source: int, target: int) -> None:
    """Copy lines from ``source`` to ``target`` until ``source`` closes, leaving out ``_JVM_NOISE``."""
    with os.fdopen(source, "rb", buffering=0) as lines:
        for line in iter(lines.readline, b""):
            if not line.rstrip().startswith(_JVM_NOISE):
                os.write(target, line)
    os.close(target)


@contextlib.contextmanager
def _jvm_stderr_filtered() -> Iterator[None]:
    """While the block starts the driver JVM, its stderr (fd 2, inherited) becomes a pipe that a
    daemon thread copies to this process's stderr, for as long as the JVM lives, without the noise."""
    read_end, write_end = os.pipe()
    stderr_copy = os.dup(2)
    threading.Thread(
        target=_forward_stderr, args=(read_end, os.dup(2)), name="jvm-stderr", daemon=True
    ).start()
    os.dup2(write_end, 2)
    os.close(write_end)
    try:
        yield
    finally:
        os.dup2(stderr_copy, 2)  # this process writes to its own stderr again; the JVM keeps the pipe
        os.close(stderr_copy)


def classic_session(spark_config: dict[str, Any]) -> "SparkSession":
    """The process's classic session (``getOrCreate``) with ``spark_config`` applied."""
    from pyspark import SparkContext
    from pyspark.sql import SparkSession

    builder = SparkSession.builder
    for key, value in spark_config.items():
        builder = builder.config(key, str(value))
    if SparkContext._active_spark_context is not None:  # the JVM runs already
        return builder.getOrCreate()
    with _jvm_stderr_filtered():
        return builder.getOrCreate()


class SparkSessionResource(dg.ConfigurableResource):
    """``LazyPySparkResource``'s ``spark_config`` and ``.spark_session``, also speaking Spark Connect.

    With ``spark.remote`` in ``spark_config`` the session is a Spark Connect session on that server,
    whether or not the process already has a classic session; otherwise the classic builder's
    ``getOrCreate`` as before. The session is created when ``.spark_session`` is first read.
    """

    connect_token: str | None = Field(
        default=None,
        description="Bearer token for the Spark Connect server; pass dg.EnvVar('LAKERELAY_SPARK_CONNECT_TOKEN').",
    )
    connect_timeout_s: float = Field(
        default=45.0,
        gt=0,
        description="How long to wait for the Spark Connect server when a run starts (under a minute, so a "
        "server that is down fails the run within one).",
    )
    connect_retry_s: float = Field(
        default=30.0,
        ge=0,
        description="How long each call to the Spark Connect server rides out an unreachable server before "
        "the run fails (pyspark's own default is ~10 minutes).",
    )
    spark_config: dict[str, Any] = Field(
        description="Spark settings of the session (spark.remote: a Spark Connect server's sc:// URL)."
    )
    _spark_session: Any = PrivateAttr(default=None)
    _connect_session: bool = PrivateAttr(default=False)

    @property
    def spark_session(self) -> Any:
        """The session, created when first read (after planning: an empty run starts no Spark)."""
        self._start_session()
        return self._spark_session

    @property
    def spark_context(self) -> Any:
        return self.spark_session.sparkContext

    def _start_session(self) -> None:
        if self._spark_session is not None:
            if self._connect_session:
                if connect_session_is_usable(self._spark_session):
                    return
                # The server restarted (it no longer knows the session) or is down: a retry of the
                # run's step gets a new session, or a clear failure within connect_timeout_s.
                end_connect_session(self._spark_session)
            elif not forget_dead_local_driver():
                return
            self._spark_session, self._connect_session = None, False
        remote = self.spark_config.get("spark.remote")
        if remote:
            self._spark_session = connect_session(
                str(remote),
                self.connect_token,
                self.spark_config,
                self.connect_timeout_s,
                self.connect_retry_s,
            )
            self._connect_session = True
        else:
            # PySpark's driver hands $PYSPARK_PYTHON to the executors as their Python; the
            # spark.pyspark.python setting alone is read only by spark-submit, not by this process.
            prepare_classic_environment(self.spark_config)
            forget_dead_local_driver()  # another resource's JVM of this process that died: start anew
            self._spark_session = classic_session(self.spark_config)

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        # A Connect session lives on the server until released, and so do its operations: a run that
        # ends (success, failure, termination) interrupts what it still has running there first, so the
        # server's Python workers stop posting. A local session is shared and stays.
        if self._connect_session and self._spark_session is not None:
            interrupted = end_connect_session(self._spark_session)
            if interrupted and context.log is not None:
                context.log.info(
                    f"interrupted {len(interrupted)} operation(s) of this run on the Spark Connect server"
                )
            self._spark_session = None
            self._connect_session = False
