"""The root cause of a failed Spark job, in a line: what the executor's Python or the JVM said.

A failed task reaches the driver as a long text: Spark's wrapper ("Job aborted due to stage
failure: Task 0 in stage 3.0 failed 4 times …"), the JVM stack, and, for a Python worker, its
traceback. Classic Spark and Spark Connect word the wrapper differently; both keep the traceback,
whose last line (``ModuleNotFoundError: No module named 'orjson'``) is what a user must read.
"""

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
