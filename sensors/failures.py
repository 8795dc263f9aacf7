"""A run-failure sensor that says, in the daemon log, which lakerelay run failed and what to do next."""

import dagster as dg

from resources.run_tags import NEEDS_FIX, RELAY_TAG, SINK_TAG
from sensors.table import BACKOFF_FIRST_S, BACKOFF_MAX_S


def build_failure_sensor(
    backoff_first_s: float = BACKOFF_FIRST_S, backoff_max_s: float = BACKOFF_MAX_S
) -> dg.SensorDefinition:
    """Watches every job of this code location; its advice names the sensors' backoff as configured."""
    backoff = f"{backoff_first_s:g} s doubling to {backoff_max_s / 60:g} min"

    @dg.run_failure_sensor(
        name="lakerelay_run_failure_sensor",
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Logs every failed lakerelay run with its error.",
    )
    def failure_sensor(context: dg.RunFailureSensorContext) -> None:
        run = context.dagster_run
        message = context.failure_event.message if context.failure_event else "unknown error"
        needs_fix = run.tags.get(NEEDS_FIX)
        if needs_fix:
            next_step = (
                "A retry cannot fix this (credentials, TLS, a URL or an enrichment): fix the configuration; "
                f"the table sensor tries again every {backoff_max_s / 60:g} minutes, or re-execute the run once fixed."
            )
        elif run.tags.get(RELAY_TAG):
            next_step = (
                f"The feed's landing sensor requests the ingest again with backoff ({backoff}) "
                "while its files wait, and each table sensor the posts its sink has not settled; no action "
                "is needed if the cause was transient."
            )
        elif run.tags.get(SINK_TAG):
            next_step = (
                f"The feed's table sensor requests the post again with backoff ({backoff}), "
                "with or without new data; no action is needed if the cause was transient."
            )
        else:
            next_step = (
                "Re-execute the run once the cause is fixed; a re-run repeats nothing already committed."
            )
        context.log.error(
            f"run {run.run_id} of job {run.job_name} failed: {message}. Nothing it did not finish was "
            f"marked done. {next_step}"
        )

    return failure_sensor
