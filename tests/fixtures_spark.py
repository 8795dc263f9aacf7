"""One local SparkSession for the whole test session: Dagster's PySparkResource picks it up via getOrCreate."""

import pytest
from dagster_pyspark import PySparkResource

from pipelines.deployment import spark_config


@pytest.fixture(scope="session")
def spark_resource() -> PySparkResource:
    from pyspark.sql import SparkSession

    config = spark_config()
    builder = SparkSession.builder
    for key, value in config.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    yield PySparkResource(spark_config=config)
    session.stop()
