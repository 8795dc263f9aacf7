"""Run config defaults shared by lakerelay's jobs."""

# INFO-level run logs by default: without any logger config Dagster prints every DEBUG event (pages of
# them under `dagster job execute` in CI). A run can still ask for DEBUG; Dagster merges run config
# given with `-c` or in the Launchpad over this default.
INFO_LOGS = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}
