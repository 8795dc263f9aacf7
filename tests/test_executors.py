"""What the executors get from lakerelay: its code as one zip, a pinned list of packages, and readable errors."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from pipelines import deployment
from resources.executor_check import requirements_text
from resources.executor_code import code_archive
from resources.spark_errors import root_cause

ROOT = Path(__file__).resolve().parent.parent

CLASSIC = """An exception was thrown from the Python worker:
Traceback (most recent call last):
  File "/work/main/pipelines/post/read_stage.py", line 15, in <module>
    from pipelines.post.plan import PostPlan, ReadUnit, split_units
ModuleNotFoundError: No module named 'deltalake'"""
CONNECT = """
  An exception was thrown from the Python worker. Please see the stack trace below.
[PYTHON_EXCEPTION] An exception was thrown from the Python worker: Traceback (most recent call last):
  File "/x/pyspark.zip/pyspark/serializers.py", line 483, in loads
    return cloudpickle.loads(obj, encoding=encoding)
           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
ModuleNotFoundError: No module named 'pipelines'
 SQLSTATE: 38000"""
STAGE_FAILURE = """Job aborted due to stage failure: Task 0 in stage 3.0 failed 4 times, most recent failure: \
Lost task 0.3 in stage 3.0 (TID 9) (127.0.0.1 executor 0): org.apache.spark.api.python.PythonException: \
Traceback (most recent call last):
  File "/w/pipelines/post/post_stage.py", line 85, in post
    writer.add_arrow(batch.column("_id"), batch.column("_doc"), batch.column("_time"))
resources.sinks.writer.SinkTlsError: sink es: TLS verification failed

\tat org.apache.spark.api.python.BasePythonRunner$ReaderIterator.handlePythonException(PythonRunner.scala:624)"""


@pytest.mark.parametrize(
    ("text", "cause"),
    [
        (CLASSIC, "ModuleNotFoundError: No module named 'deltalake'"),
        (CONNECT, "ModuleNotFoundError: No module named 'pipelines'"),
        (STAGE_FAILURE, "SinkTlsError: sink es: TLS verification failed"),
        (
            "[FAILED_READ_FILE] Error while reading file s3://b/x.parquet\n\tat org.apache",
            "[FAILED_READ_FILE] Error while reading file s3://b/x.parquet",
        ),
    ],
)
def test_the_root_cause_of_a_spark_failure_is_the_executors_exception(text: str, cause: str) -> None:
    assert root_cause(text) == cause


def test_the_code_zip_is_named_by_its_content_and_imports_on_a_python_without_lakerelay(
    tmp_path: Path, worker_python: Path
) -> None:
    first = code_archive(directory=tmp_path)
    assert code_archive(directory=tmp_path) == first  # reused, not rebuilt
    names = zipfile.ZipFile(first).namelist()
    assert "pipelines/post/post_stage.py" in names and "resources/sinks/writer.py" in names
    assert not [n for n in names if "__pycache__" in n or not n.endswith(".py")]
    rebuilt = code_archive(directory=tmp_path / "other")
    assert rebuilt.name == first.name and rebuilt.read_bytes() == first.read_bytes()

    # What an executor does with it: the post stage imports from the zip, on the requirements alone.
    imports = "import pipelines.post.post_stage, pipelines.post.read_stage, resources.lease; print('ok')"
    # Spark puts its own pyspark and py4j zips on the workers' PYTHONPATH, as here.
    spark_libs = sorted((Path(__import__("pyspark").__file__).parent / "python" / "lib").glob("*.zip"))
    env = {"PYTHONPATH": ":".join(map(str, [first, *spark_libs])), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [str(worker_python), "-c", imports], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.stdout.strip() == "ok", result.stderr
    without = subprocess.run(
        [str(worker_python), "-c", imports], cwd=tmp_path, capture_output=True, text=True
    )
    assert "No module named 'pipelines'" in without.stderr


def _pins(path: Path) -> dict[str, str]:
    lines = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return {name.lower(): version for name, version in (line.split("==") for line in lines)}


def test_the_executor_requirements_file_matches_this_environment() -> None:
    assert (ROOT / "deploy" / "executor-requirements.txt").read_text() == requirements_text(), (
        "regenerate both files: python -m lakerelay.devtools.lock"
    )


def test_the_lock_pins_every_installed_distribution_at_its_installed_version() -> None:
    """A clean clone installs only what requirements.lock names: nothing unpinned can drift in."""
    from lakerelay.devtools.lock import lock_lines

    locked = _pins(ROOT / "requirements.lock")
    installed = dict(line.lower().split("==") for line in lock_lines(Path(sys.executable)))
    assert installed == locked, "this environment differs from requirements.lock: `make` reinstalls from it"
    executors = _pins(ROOT / "deploy" / "executor-requirements.txt")
    assert {name: locked.get(name) for name in executors} == executors


def test_cluster_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAKERELAY_SPARK_MASTER", "spark://master:7077")
    monkeypatch.delenv("PYSPARK_PYTHON", raising=False)
    monkeypatch.setenv("LAKERELAY_SPARK_CONF", '{"spark.executor.memory": "4g", "spark.cores.max": 8}')
    config = deployment.spark_config()
    assert config["spark.pyspark.python"] == "python3"  # Spark's own default on workers, not this venv's path
    assert (config["spark.executor.memory"], config["spark.cores.max"]) == ("4g", "8")
    monkeypatch.setenv("LAKERELAY_SPARK_EXECUTOR_PYTHON", "/opt/lakerelay-executors/bin/python")
    assert deployment.spark_config()["spark.pyspark.python"] == "/opt/lakerelay-executors/bin/python"
    monkeypatch.setenv("LAKERELAY_SPARK_CONF", "spark.executor.memory=4g")
    with pytest.raises(ValueError, match=r"LAKERELAY_SPARK_CONF is not JSON .*spark.executor.memory"):
        deployment.spark_config()
