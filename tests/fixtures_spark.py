"""One local SparkSession for the whole test session: Dagster's LazyPySparkResource picks it up via getOrCreate."""

import pytest
from dagster_pyspark import LazyPySparkResource

from pipelines.deployment import spark_config


@pytest.fixture(scope="session")
def spark_resource() -> LazyPySparkResource:
    from pyspark.sql import SparkSession

    config = spark_config()
    builder = SparkSession.builder
    for key, value in config.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    yield LazyPySparkResource(spark_config=config)
    session.stop()
