"""A local Spark start prints no JDK noise, and the JVM's other stderr output still reaches stderr."""

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent

PROGRAM = """
import sys
from pipelines import deployment
from resources.spark import classic_session
spark = classic_session(deployment.spark_config())
print(spark.range(5).count())
# The JVM's own stderr still comes through: a message logged on the driver's log4j at ERROR.
spark.sparkContext._jvm.org.apache.log4j.LogManager.getRootLogger().error("jvm-says-hello")
print("python-after", file=sys.stderr, flush=True)
spark.stop()
"""


def test_a_local_spark_start_prints_no_incubator_warning_and_keeps_the_jvm_stderr(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={
            "PATH": "/usr/bin:/bin",
            "LAKERELAY_HOME": str(tmp_path),
            "HOME": str(tmp_path),
            **{k: v for k, v in __import__("os").environ.items() if k.startswith(("JAVA", "SPARK"))},
        },
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["5"]
    assert "incubator" not in done.stderr
    assert "python-after" in done.stderr
    assert "jvm-says-hello" in done.stderr, done.stderr[-2000:]
