"""Error texts of real failures, as pyspark 4.3 raised them here (stack traces cut after a few frames).

Each is (exception type, str(exception)). How they were made:

- DRIVER_*: a local SparkSession (``deployment.spark_config()``, local[1]) whose JVM got SIGTERM
  (``os.kill(SparkContext._gateway.proc.pid, SIGTERM)``) while the driver kept calling
  ``spark.range(1).collect()``: the errors, in the order they came, while the JVM shut down and after.
- WORKER_DAEMON_EOF: a local SparkSession whose ``spark.pyspark.python`` is a script that sleeps 3 s
  and exits 1 (a worker killed while starting), then ``prepare_executors(spark, 1, True)``.
- CONNECT_*: a Spark Connect server (``lakerelay.devtools.spark_connect``) killed with SIGKILL during a
  ``mapInArrow(...).toArrow()`` (UNAVAILABLE, after the session's retries), and the same session's
  next call once the server was restarted on its port (NO_ACTIVE_SESSION).
"""

DRIVER_SHUT_DOWN_DURING_COLLECT = (
    "Py4JJavaError",
    "An error occurred while calling o52.collectToPython.\n: java.lang.IllegalStateException: SparkContext has been shutdown\n\tat org.apache.spark.SparkContext.runJob(SparkContext.scala:2490)\n\tat org.apache.spark.SparkContext.runJob(SparkContext.scala:2520)\n\tat org.apache.spark.SparkContext.runJob(SparkContext.scala:2539)\n\tat org.apache.spark.SparkContext.runJob(SparkContext.scala:2564)\n\tat org.apache.spark.rdd.RDD.$anonfun$collect$1(RDD.scala:1123)\n\tat org.apache.spark.rdd.RDDOperationScope$.withScope(RDDOperationScope.scala:169)\n\tat org.apache.spark.rdd.RDDOperationScope$.withScope(RDDOperationScope.scala:134)\n\tat org.apache.spark.rdd.RDDOperationScope$.withScope(RDDOperationScope.scala:112)\n\tat org.apache.spark.rdd.RDD.withScope(RDD.scala:467)\n\tat org.apache.spark.rdd.RDD.collect(RDD.scala:1122)\n\tat org.apache.spark.sql.execution.SparkPlan.executeCollect(SparkPlan.scala:480)\n\tat org.apache.spark.sql.classic.Dataset.$anonfun$collectToPython$1(Dataset.scala:2143)",
)

DRIVER_STOPPED_CONTEXT = (
    "Py4JJavaError",
    "An error occurred while calling o55.defaultParallelism.\n: java.lang.IllegalStateException: Cannot call methods on a stopped SparkContext.\nThis stopped SparkContext was created at:\n\norg.apache.spark.api.java.JavaSparkContext.<init>(JavaSparkContext.scala:59)\njava.base/jdk.internal.reflect.NativeConstructorAccessorImpl.newInstance0(Native Method)\njava.base/jdk.internal.reflect.NativeConstructorAccessorImpl.newInstance(NativeConstructorAccessorImpl.java:77)\njava.base/jdk.internal.reflect.DelegatingConstructorAccessorImpl.newInstance(DelegatingConstructorAccessorImpl.java:45)",
)

DRIVER_PY4J_REFLECTION = (
    "Py4JError",
    "An error occurred while calling z:py4j.reflection.TypeUtil.isInstanceOf",
)

DRIVER_REFUSED = ("ConnectionRefusedError", "[Errno 111] Connection refused")

WORKER_DAEMON_EOF = (
    "Py4JJavaError",
    "An error occurred while calling o70.collectToPython.\n: org.apache.spark.SparkException: EOFException occurred while reading the port number from pyspark.daemon's stdout.\n\tat org.apache.spark.errors.SparkCoreErrors$.eofExceptionWhileReadPortNumberError(SparkCoreErrors.scala:55)\n\tat org.apache.spark.api.python.PythonWorkerFactory.startDaemon(PythonWorkerFactory.scala:382)\n\tat org.apache.spark.api.python.PythonWorkerFactory.createThroughDaemon(PythonWorkerFactory.scala:229)\n\tat org.apache.spark.api.python.PythonWorkerFactory.create(PythonWorkerFactory.scala:177)\n\tat org.apache.spark.SparkEnv.createPythonWorker(SparkEnv.scala:326)\n\tat org.apache.spark.api.python.BasePythonRunner.compute(PythonRunner.scala:637)\n\tat org.apache.spark.sql.execution.python.BatchEvalPythonEvaluatorFactory.evaluate(BatchEvalPythonExec.scala:99)\n\tat org.apache.spark.sql.execution.python.EvalPythonEvaluatorFactory$EvalPythonPartitionEvaluator.eval(EvalPythonEvaluatorFactory.scala:119)",
)

CONNECT_SERVER_KILLED = (
    "SparkConnectGrpcException",
    "<_MultiThreadedRendezvous of RPC that terminated with:\n\tstatus = StatusCode.UNAVAILABLE\n\tdetails = "
    '"failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:54197: Failed to connect to '
    'remote host: Connection refused"\n\tdebug_error_string = "UNAVAILABLE:failed to connect to all addresses; '
    'last error: UNKNOWN: ipv4:127.0.0.1:54197: Failed to connect to remote host: Connection refused"\n>',
)
CONNECT_SERVER_RESTARTED = (
    "SparkConnectException",
    "[NO_ACTIVE_SESSION] No active Spark session found. Please create a new Spark session before running the code.",
)
# The Connect server killed during a post and restarted on its port while the session's calls still
# retried: the reattach finds no session (tests/test_spark_connect.py, restarted_mid_post).
CONNECT_SERVER_RESTARTED_MID_QUERY = (
    "PySparkRuntimeError",
    "[RESPONSE_ALREADY_RECEIVED] INVALID_HANDLE.SESSION_NOT_FOUND on the server but responses were already "
    "received from it.",
)
