"""Where the run's liveness beacon listens, so that the post stage's workers can reach it.

The beacon (``resources/lease/beacon.py``) is a TCP listener in the driver's process; a worker that
loses its connection stops posting within a second, instead of at the lease's expiry. Workers of
local Spark, and of a Spark Connect server on this host, reach it on the loopback; a cluster's
executors reach the driver at ``spark.driver.host``. Where neither is known, there is no beacon and
the lease's expiry stops orphaned workers, as before.
"""

from pyspark.errors import PySparkAttributeError
from pyspark.sql import SparkSession

_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def beacon_host(spark: SparkSession) -> str | None:
    """The address to listen on for this session's executors, or None when they could not reach it."""
    try:
        context = spark.sparkContext  # classic: the driver is this process
    except PySparkAttributeError:  # Spark Connect has no SparkContext
        context = None
    if context is not None:
        if (context.master or "").startswith("local"):
            return "127.0.0.1"
        host = context.getConf().get("spark.driver.host")
        return host or None
    # Spark Connect: this process is only the client; its server's workers are on this host only when
    # the server runs locally and binds its driver to the loopback.
    master = (spark.conf.get("spark.master", None) or "").strip()
    driver_host = (spark.conf.get("spark.driver.host", None) or "").strip()
    if master.startswith("local") and driver_host in _LOOPBACK:
        return "127.0.0.1"
    return None
