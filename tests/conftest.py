"""Shared fixtures. Each fixture family lives in its own module beside this file."""

from fixtures_cluster import spark_cluster, worker_python, worker_python_without_orjson  # noqa: F401
from fixtures_connect import spark_connect_url  # noqa: F401
from fixtures_postgres import postgres_db, postgres_server  # noqa: F401
from fixtures_s3 import moto_server, moto_with_auth, s3_settings  # noqa: F401
from fixtures_sink import sink_server  # noqa: F401
from fixtures_spark import spark_resource  # noqa: F401
