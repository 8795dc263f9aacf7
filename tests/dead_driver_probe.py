"""Run in a subprocess by test_spark_errors: a local session whose JVM is killed, then the resource's next session.

Prints one JSON line: what the dead driver raised, its diagnosis, and whether the resource's next
session (what a retry of the run's step gets) ran a query on a new JVM.
"""

import json
import os
import signal
import sys

from pipelines import deployment
from pipelines.post.failures import executor_check_failure
from resources.executor_check import prepare_executors
from resources.spark_errors import spark_fault


def main() -> None:
    from pyspark.core.context import SparkContext

    os.environ["LAKERELAY_SPARK_MASTER"] = "local[1]"
    resource = deployment.spark_resource()
    spark = resource.spark_session
    spark.range(1).collect()
    jvm = SparkContext._gateway.proc
    os.kill(jvm.pid, signal.SIGKILL)
    jvm.wait()
    try:
        prepare_executors(spark, 1, True)
        raised = None
    except Exception as exc:  # what the run's executor check meets
        raised = exc
    failure = executor_check_failure(raised) if raised else None
    again = resource.spark_session  # what a retry of the step gets
    result = {
        "raised": f"{type(raised).__name__}: {raised}"[:300] if raised else None,
        "fault": spark_fault(raised).value if raised else None,
        "allow_retries": failure.allow_retries if failure else None,
        "description": failure.description if failure else None,
        "new_session": again is not spark,
        "new_jvm": SparkContext._gateway.proc.pid != jvm.pid,
        "rows": again.range(7).count(),
    }
    print(json.dumps(result))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
