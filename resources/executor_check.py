"""What Spark executors' Python must contain, and a preflight that checks it before a record is posted.

    python -m resources.executor_check        # the pinned list, for `pip install -r` on the workers

Executors run lakerelay's shipped code (``resources.executor_code``) on their own Python, which
must have :data:`EXECUTOR_PACKAGES` and what those require, at this environment's versions; pyspark
itself comes from the cluster's Spark. :func:`check_executors` runs one small Spark job whose tasks
look up every one of those packages (and import the few every post task imports) and report what is
missing, so a worker that lacks a package fails the run with the package's name, not with a task
failed four times somewhere in an executor log.
"""

import functools
import importlib.metadata as metadata
import json
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from resources.executor_code import SHIPPED_PACKAGES, code_digest, ship_code, source_digest_function

# The post stage's third-party imports on executors (pandas: pyspark's Arrow path on the workers).
EXECUTOR_PACKAGES = ("pyarrow", "numpy", "pandas", "orjson", "requests", "boto3")
# Imported by the probe too, since every post task imports them anyway (the probe's Python workers
# are reused by the post): a broken build of one shows before a record is sent. The rest is looked up.
EXECUTOR_IMPORTS = ("pyarrow", "numpy", "orjson", "requests")


class ExecutorEnvironmentError(RuntimeError):
    """The executors' Python cannot run the post stage; the message names what is missing and the fix."""


def _canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def distribution_closure(names: Iterable[str]) -> list[metadata.Distribution]:
    """The installed distributions ``names`` and everything they require (no extras), sorted by name."""
    from packaging.requirements import Requirement

    seen: dict[str, metadata.Distribution] = {}
    todo = [_canonical(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        dist = metadata.distribution(name)
        seen[name] = dist
        for line in dist.requires or ():
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(_canonical(requirement.name))
    return [seen[name] for name in sorted(seen)]


def requirements_text() -> str:
    """``name==version`` per line for the executors' Python: this environment's versions."""
    lines = [f"{dist.metadata['Name']}=={dist.version}" for dist in distribution_closure(EXECUTOR_PACKAGES)]
    header = (
        "# The Python of every Spark executor (and of a Spark Connect server) needs these, at these versions;\n"
        "# pyspark comes from the cluster's Spark, lakerelay's own code is shipped with each session.\n"
        "# Generated from requirements.lock's versions by python -m lakerelay.devtools.lock (or, in an environment\n"
        "# installed from it, python -m resources.executor_check > deploy/executor-requirements.txt).\n"
    )
    return header + "\n".join(lines) + "\n"


def _probe(
    packages: tuple[str, ...], imports: tuple[str, ...], digest: Callable[[tuple[str, ...]], str | None]
) -> Callable[[Any], str]:
    # Nested, so cloudpickle ships the function by value: it runs even where lakerelay's modules,
    # or pyarrow for an Arrow UDF, cannot be imported, which is what it is there to say.
    def probe(_: Any) -> str:
        import importlib
        import importlib.metadata
        import importlib.util
        import json
        import socket
        import sys

        versions, failures = {}, {}
        for name in packages:  # found and its version, without the cost of importing it
            try:
                found = importlib.util.find_spec(name) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                failures[name] = f"ModuleNotFoundError: No module named {name!r}"
                continue
            try:
                versions[name] = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                versions[name] = ""
        for name in imports:  # what every post task imports anyway: a broken install shows here
            if name not in failures:
                try:
                    importlib.import_module(name)
                except Exception as exc:
                    failures[name] = f"{type(exc).__name__}: {exc}"
        return json.dumps(
            {
                "host": socket.gethostname(),
                "python": sys.executable,
                "python_version": sys.version.split()[0],
                "versions": versions,
                "failures": failures,
                "code": digest(SHIPPED_PACKAGES),
            },
            sort_keys=True,
        )

    return probe


@dataclass
class ExecutorReport:
    """What the probe found on the executors it reached (one entry per distinct Python)."""

    pythons: list[dict] = field(default_factory=list)
    version_mismatches: list[str] = field(default_factory=list)
    shipped: bool = True  # lakerelay's zip went with the session (the executors lack this version)

    def have_code(self, digest: str) -> bool:
        """Every executor Python has this code version installed: nothing to ship."""
        return bool(self.pythons) and all(found["code"] == digest for found in self.pythons)


def check_executors(spark: Any, tasks: int = 2) -> ExecutorReport:
    """Run the probe in ``tasks`` tasks; raise :class:`ExecutorEnvironmentError` when a package is missing.

    Third-party versions that differ from this environment's are returned, not raised: pyspark's
    Arrow exchange works across them, and a cluster may lag a patch release behind.
    """
    from pyspark.sql.connect.session import SparkSession as ConnectSession
    from pyspark.sql.types import StringType

    # Each API builds its own UDFs (the classic one parses the type with a SparkContext).
    if isinstance(spark, ConnectSession):
        from pyspark.sql.connect.functions import udf
    else:
        from pyspark.sql.functions import udf

    # Typed as Any: pyright picks udf's decorator overload for this call form.
    probe: Any = udf(
        _probe(_probed_packages(), EXECUTOR_IMPORTS, source_digest_function()), StringType(), useArrow=False
    )
    rows = spark.range(0, tasks, 1, numPartitions=tasks).select(probe("id").alias("r")).distinct().collect()
    report = ExecutorReport(pythons=[json.loads(row["r"]) for row in rows])
    problems = []
    for found in report.pythons:
        where = f"{found['python']} (Python {found['python_version']} on {found['host']})"
        failures = found["failures"]
        if failures:
            problems.append(
                f"{where}: " + "; ".join(f"{name}: {why}" for name, why in sorted(failures.items()))
            )
        for package in EXECUTOR_PACKAGES:
            theirs = found["versions"].get(package)
            ours = metadata.version(package)
            if theirs and theirs != ours:
                report.version_mismatches.append(f"{package} {theirs} on {where}, {ours} here")
    if problems:
        raise ExecutorEnvironmentError(
            "Spark executors cannot run lakerelay's post stage; their Python lacks what it imports: "
            + " | ".join(problems)
            + ". Nothing was posted. What to do: install the executor requirements in that Python on every "
            "worker (`pip install -r deploy/executor-requirements.txt`; `python -m resources.executor_check` "
            "prints them for this version), or point LAKERELAY_SPARK_EXECUTOR_PYTHON at a Python that has them."
        )
    return report


@functools.cache
def _probed_packages() -> tuple[str, ...]:
    """Every top-level module of the requirements' distributions (python-dateutil: dateutil), as here."""
    wanted = {_canonical(dist.metadata["Name"]) for dist in distribution_closure(EXECUTOR_PACKAGES)}
    found = {
        module
        for module, owners in metadata.packages_distributions().items()
        if module.isidentifier() and not module.startswith("_") and wanted & {_canonical(o) for o in owners}
    }
    return tuple(sorted(found | set(EXECUTOR_PACKAGES)))


# Spark application or Connect session -> the code version it was prepared for, and whether the
# zip had to be shipped (the executors did not have that version installed).
_PREPARED: dict[str, tuple[str, bool]] = {}


def prepare_executors(spark: Any, tasks: int, check: bool = True) -> ExecutorReport | None:
    """Make lakerelay's code reach ``spark``'s executors and check their Python, once per session and version.

    The check runs first: executors that already have this code version installed (local Spark,
    a server that runs the project's own Python) keep their warm Python workers, and a session
    ships only where the code is missing. Returns the report of a check made now, None when this
    session was already prepared or ``check`` is False (the zip is then always shipped). A classic
    application keeps its executors for its life; a Connect session is new per run.
    """
    from pyspark.sql.connect.session import SparkSession as ConnectSession

    owner = spark.session_id if isinstance(spark, ConnectSession) else spark.sparkContext.applicationId
    digest = code_digest()
    prepared = _PREPARED.get(str(owner))
    if prepared is not None and prepared[0] == digest:
        if prepared[1]:
            ship_code(spark)
        return None
    report = check_executors(spark, tasks) if check else None
    shipped = report is None or not report.have_code(digest)
    if shipped:
        ship_code(spark)
    if report is not None:
        report.shipped = shipped
    _PREPARED[str(owner)] = (digest, shipped)
    return report


if __name__ == "__main__":
    sys.stdout.write(requirements_text())
