"""A run-failure sensor that says, in the daemon log, which lakerelay run failed and what to do next."""

import dagster as dg


def build_failure_sensor() -> dg.SensorDefinition:
    """Watches every job of this code location."""

    @dg.run_failure_sensor(
        name="lakerelay_run_failure_sensor",
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Logs every failed lakerelay run with its error.",
    )
    def failure_sensor(context: dg.RunFailureSensorContext) -> None:
        message = context.failure_event.message if context.failure_event else "unknown error"
        context.log.error(
            f"run {context.dagster_run.run_id} of job {context.dagster_run.job_name} failed: {message}. "
            f"Nothing it did not finish was marked done; fix the cause and re-execute the run (or let the sensor retry)."
        )

    return failure_sensor
