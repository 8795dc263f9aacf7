"""The root cause of a failed Spark job, in a line: what the executor's Python or the JVM said.

A failed task reaches the driver as a long text: Spark's wrapper ("Job aborted due to stage
failure: Task 0 in stage 3.0 failed 4 times …"), the JVM stack, and, for a Python worker, its
traceback. Classic Spark and Spark Connect word the wrapper differently; both keep the traceback,
whose last line (``ModuleNotFoundError: No module named 'orjson'``) is what a user must read.

:func:`spark_fault` says what kind of failure it was, from the same text: only a Python worker that
cannot import what it needs, or runs another Python version than the driver, needs a person; a worker
slow to start, a driver JVM that died and a Connect server that went away are transient.

Text is read only where the evidence can only be text: a worker that could not even import the post
stage, a JVM or Connect server that went away. What the post stage's own code catches (the sink
refusing its configuration) its tasks report as data (``pipelines/post/post_stage.py``).
"""

import enum
import re

_TRACEBACK = "Traceback (most recent call last):"
# The exception line ending a traceback: a dotted name ending in Error/Exception/…, then its message.
_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Warning)\b:?.*)$")
_NOISE = re.compile(r"\s*SQLSTATE: \w+\s*$")
_MAX_CHARS = 600


def root_cause(exc: BaseException | str) -> str:
    """The exception line of the last Python traceback in ``exc``, else its first informative line."""
    text = str(exc)
    if _TRACEBACK in text:
        tail = text[text.rindex(_TRACEBACK) + len(_TRACEBACK) :]
        for line in tail.splitlines():
            match = _EXCEPTION_LINE.match(line.strip())
            if match and not line.startswith((" ", "\t")):
                cause = _NOISE.sub("", match[1])
                # "pyspark.errors…PySparkRuntimeError: [X] …" reads better without the module path.
                name, _, message = cause.partition(":")
                return f"{name.rsplit('.', 1)[-1]}:{message}"[:_MAX_CHARS]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in lines:
        if not line.startswith(("An exception was thrown from the Python worker", "at ")):
            return _NOISE.sub("", line)[:_MAX_CHARS]
    return (lines[0] if lines else type(exc).__name__)[:_MAX_CHARS]


class SparkFault(enum.Enum):
    """What kind of failure a Spark error is, which decides whether a retry may cure it."""

    # The workers' Python lacks a package or is another version: a person fixes it.
    ENVIRONMENT = "environment"
    # A Python worker did not start or died starting (a busy host): transient.
    WORKER_START = "worker_start"
    # This process's Spark driver JVM died or stopped: transient, a new one starts.
    DRIVER_GONE = "driver_gone"
    # The Spark Connect server does not answer.
    CONNECT_UNREACHABLE = "connect_unreachable"
    # The server restarted: the session is gone, a new one works.
    CONNECT_SESSION_LOST = "connect_session_lost"
    OTHER = "other"

    @property
    def needs_fix(self) -> bool:
        return self is SparkFault.ENVIRONMENT


# Root causes (the exception line of a Python worker's traceback) that no retry cures: the same
# workers would fail the same way.
_ENVIRONMENT_CAUSES = ("ModuleNotFoundError:", "ImportError:", "[PYTHON_VERSION_MISMATCH]")
# Spark Connect: the server is gone (killed, stopped, network) or hung past the RPC deadline.
_CONNECT_UNREACHABLE = ("StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED", "RPC deadline exceeded")
# Spark Connect: the server no longer knows the session (it restarted); pyspark then closes the
# client and says NO_ACTIVE_SESSION on every later call.
_CONNECT_SESSION_LOST = (
    "[NO_ACTIVE_SESSION]",
    "INVALID_HANDLE.SESSION_CHANGED",
    "INVALID_HANDLE.SESSION_NOT_FOUND",
    "INVALID_HANDLE.SESSION_CLOSED",
    "incorrect server side session identifier",
)
# The JVM could not start a Python worker (its daemon exited or was killed before it said its port,
# or the worker did not connect back in time): a busy or memory-starved host, not the Python itself,
# which the executor check would name.
_WORKER_START = (
    "EOFException occurred while reading the port number from",
    "Timed out while waiting for the Python worker to connect back",
    "Python worker failed to connect back",
    "Python worker exited unexpectedly (crashed)",
)
# This process's driver JVM died (killed, out of memory) or shut its SparkContext down: py4j cannot
# reach it ("Connection refused", an empty answer), or reaches a JVM that is shutting down.
_DRIVER_GONE = (
    "Cannot call methods on a stopped SparkContext",
    "SparkContext was shut down",
    "SparkContext has been shutdown",
    "Answer from Java side is empty",
    "Error while sending or receiving",
    "Py4JNetworkError",
    "does not exist in the JVM",
    "An error occurred while calling z:py4j.",  # py4j's own reflection call failed: a JVM shutting down
    "ConnectionRefusedError: [Errno 111]",
    "ConnectionResetError: [Errno 104]",
)


def spark_fault(exc: BaseException | str) -> SparkFault:
    """The kind of failure ``exc`` (a Spark error or its text) is; see :class:`SparkFault`."""
    text = f"{type(exc).__name__}: {exc}" if isinstance(exc, BaseException) else exc
    # A Python worker's own traceback is the most specific evidence: it ran, and said what it lacks.
    if any(marker in root_cause(text) for marker in _ENVIRONMENT_CAUSES):
        return SparkFault.ENVIRONMENT
    for fault, markers in (
        (SparkFault.CONNECT_SESSION_LOST, _CONNECT_SESSION_LOST),
        (SparkFault.CONNECT_UNREACHABLE, _CONNECT_UNREACHABLE),
        (SparkFault.WORKER_START, _WORKER_START),
        (SparkFault.DRIVER_GONE, _DRIVER_GONE),
    ):
        if any(marker in text for marker in markers):
            return fault
    return SparkFault.OTHER
