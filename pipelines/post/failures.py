"""Why a post run failed, in words a person can act on, and whether a retry in the run may cure it."""

import dagster as dg

from resources.sinks.resource import NEEDS_FIX
from resources.spark_errors import root_cause

# Errors of the sink layer that a retry cannot cure: configuration (credentials, TLS, URL, HEC ack).
_SINK_CONFIG_ERRORS = ("SinkAuthError: ", "SinkTlsError: ", "SinkConfigError: ", "SinkRequestError: ")
# Root causes that say the executors' Python is unfit, which no retry cures.
_ENVIRONMENT_ERRORS = ("ModuleNotFoundError:", "ImportError:", "[PYTHON_VERSION_MISMATCH]")


def needs_fix(description: str) -> dg.Failure:
    """A failure that no retry can cure (credentials, TLS, a URL, an enrichment that does not fit)."""
    return dg.Failure(description=description, allow_retries=False, metadata={NEEDS_FIX: True})


def spark_failure(exc: Exception, sink_name: str) -> dg.Failure:
    """The failure to raise for an exception of the Spark post stage."""
    description, fixable_by_retry = explain_spark_failure(exc, sink_name)
    return dg.Failure(description=description) if fixable_by_retry else needs_fix(description)


def explain_spark_failure(exc: Exception, sink_name: str) -> tuple[str, bool]:
    """The failure's description, and whether a retry may cure it (False: the configuration must change)."""
    text = str(exc)
    for marker in _SINK_CONFIG_ERRORS:
        if marker in text:
            line = text[text.index(marker) + len(marker) :].splitlines()[0]
            return f"{line} Nothing was marked as posted; fix the configuration and re-run.", False
    cause = root_cause(text).rstrip(".")
    if any(marker in cause for marker in _ENVIRONMENT_ERRORS):
        # A retry meets the same executors: their Python must change first.
        return (
            f"posting to sink {sink_name} failed in Spark: {cause}. Nothing was marked as posted. What to "
            "do: the executors' Python lacks what the post stage imports; install deploy/executor-requirements.txt "
            "in it on every worker (or set LAKERELAY_SPARK_EXECUTOR_PYTHON), then re-run.",
            False,
        )
    return (
        f"posting to sink {sink_name} failed in Spark: {cause} (the step log has the "
        f"executor's traceback). Nothing was marked as posted; a re-run resends the same records.",
        True,
    )
