"""One local SparkSession for the whole test session: Dagster's LazyPySparkResource picks it up via getOrCreate."""

import pytest
from dagster_pyspark import LazyPySparkResource

from pipelines.deployment import spark_config
from resources.spark import prepare_classic_environment


@pytest.fixture(scope="session")
def spark_resource() -> LazyPySparkResource:
    from pyspark.sql import SparkSession

    config = spark_config()
    prepare_classic_environment(config)
    builder = SparkSession.builder
    for key, value in config.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    yield LazyPySparkResource(spark_config=config)
    session.stop()
