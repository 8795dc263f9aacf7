"""Why a post run failed, in words a person can act on, and whether a retry may cure it.

Only what a person must change is ``needs_fix`` (tagged, so the table sensor waits its longest backoff):
the sink's configuration, and executors whose Python lacks a package or is another version. A worker
slow to start, a driver JVM that died and a Spark Connect server that restarted are retried in the
run; a Connect server that stays unreachable fails the run at once (its calls already waited), and the
table sensor asks again with its short backoff.

The sink's configuration errors arrive as data: the post task catches them and reports their kind in
its result rows (``reported_failure``). Spark's error text is read (``spark_failure``) only for what
no task of ours could report: a Python worker that could not start or import the post stage, a driver
JVM or Connect server that went away.
"""

import dagster as dg

from pipelines.post.post_stage import TaskFailure
from resources.run_tags import NEEDS_FIX
from resources.sinks.errors import NEEDS_FIX_KINDS
from resources.spark import START_CONNECT_SERVER_HINT, connect_server_of, grpc_reason
from resources.spark_errors import SparkFault, root_cause, spark_fault

_NOT_SETTLED = "Records not settled yet are posted again by the next attempt"


def needs_fix(description: str) -> dg.Failure:
    """A failure that no retry can cure (credentials, TLS, a URL, an enrichment that does not fit)."""
    return dg.Failure(description=description, allow_retries=False, metadata={NEEDS_FIX: True})


def reported_failure(failure: TaskFailure, sink_name: str) -> dg.Failure:
    """The failure to raise for what a post task reported in its result rows (its kind decides)."""
    if failure.kind in NEEDS_FIX_KINDS:
        return needs_fix(f"{failure.message} Nothing was marked as posted; fix the configuration and re-run.")
    return dg.Failure(
        description=f"posting to sink {sink_name} failed in Spark: {failure.message} {_NOT_SETTLED}."
    )


def spark_failure(exc: Exception, sink_name: str, spark: object = None) -> dg.Failure:
    """The failure to raise for an exception of the Spark post stage (``spark``: its session, to name a Connect server)."""
    return _failure(exc, f"posting to sink {sink_name} failed in Spark", spark)


def executor_check_failure(exc: Exception, spark: object = None) -> dg.Failure:
    """The failure to raise when the check of the executors' Python could not run (not: found a misfit)."""
    return _failure(exc, "Spark executors could not run the check of their Python", spark)


def _failure(exc: Exception, what: str, spark: object) -> dg.Failure:
    fault = spark_fault(exc)
    cause = root_cause(exc).rstrip(".")
    server = connect_server_of(spark) or "(see LAKERELAY_SPARK_REMOTE)"
    if fault is SparkFault.ENVIRONMENT:
        # A retry meets the same executors: their Python must change first.
        return needs_fix(
            f"{what}: {cause}. Nothing was marked as posted. What to do: the executors' Python lacks what "
            "the post stage imports or is not the driver's Python version; install "
            "deploy/executor-requirements.txt in the driver's Python version on every worker (or set "
            "LAKERELAY_SPARK_EXECUTOR_PYTHON), then re-run."
        )
    if fault is SparkFault.CONNECT_UNREACHABLE:
        # Not retried in the run: the session's calls already rode the outage out for connect_retry_s,
        # and a server that comes back has lost this session anyway. The table sensor asks again.
        return dg.Failure(
            description=(
                f"{what}: the Spark Connect server {server} stopped answering ({grpc_reason(exc)}). "
                f"{_NOT_SETTLED}. What to do: check that server and its log; if it is down, {START_CONNECT_SERVER_HINT}. "
                "The next run opens a new session on it."
            ),
            allow_retries=False,
        )
    if fault is SparkFault.CONNECT_SESSION_LOST:
        return dg.Failure(
            description=(
                f"{what}: the Spark Connect server {server} no longer knows this run's session (it restarted: "
                f"{cause}). {_NOT_SETTLED}, on a new session; nothing to do unless it keeps restarting (see its log)."
            )
        )
    if fault is SparkFault.WORKER_START:
        return dg.Failure(
            description=(
                f"{what}: a Python worker did not start ({cause}), which a busy or memory-starved host causes. "
                f"{_NOT_SETTLED}. If it persists, give the Spark workers more memory or fewer tasks (max_tasks)."
            )
        )
    if fault is SparkFault.DRIVER_GONE:
        return dg.Failure(
            description=(
                f"{what}: the Spark driver (the JVM of this run) died or stopped ({cause}), e.g. killed for "
                f"memory. {_NOT_SETTLED}, with a new driver. If it persists, raise LAKERELAY_SPARK_DRIVER_MEMORY "
                "or look for the JVM's hs_err_pid*.log / the kernel's OOM killer."
            )
        )
    return dg.Failure(
        description=(
            f"{what}: {cause} (the step log has the executor's traceback). {_NOT_SETTLED}; "
            "a re-run resends the same records."
        )
    )
