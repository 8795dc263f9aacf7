"""The op context as ``run_post`` sees it in the continuous run: quiet, so the event log does not grow
with micro-batches.

``run_post`` returns what it posted (the coalesced report sums it) and logs through its op context;
in the continuous run that is ``QuietContext``: info lines go to the process log (the run's stderr,
timestamped), and only warnings and errors reach Dagster's event log.
"""

import logging
import sys
import time
from typing import Any

import dagster as dg

process_log = logging.getLogger("lakerelay.continuous")


def log_to_stderr() -> None:
    """Send the process log's info lines, timestamped, to stderr: the run's compute log (once per process)."""
    if not process_log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
        process_log.addHandler(handler)
        process_log.setLevel(logging.INFO)
        process_log.propagate = False  # not twice, should the root logger have a handler


class QuietLog(logging.LoggerAdapter):
    """Info and debug to the process log; warnings and errors to Dagster's (the event log). A
    ``LoggerAdapter``, so it goes wherever a logger does.

    With ``marks``, each info line is also kept with the time it was logged: ``run_post`` logs one at
    each step (lease taken, plan, groups submitted, accepted), which times its steps from outside.
    """

    def __init__(self, dagster_log: Any, marks: list[tuple[float, str]] | None = None) -> None:
        super().__init__(process_log)
        self.dagster_log = dagster_log
        self.marks = marks

    def debug(self, msg: object, *args: object, **kwargs: Any) -> None:
        process_log.debug(msg, *args, **kwargs)

    def info(self, msg: object, *args: object, **kwargs: Any) -> None:
        if self.marks is not None:
            self.marks.append((time.perf_counter(), str(msg)))
        process_log.info(msg, *args, **kwargs)

    def warning(self, msg: object, *args: object, **kwargs: Any) -> None:
        self.dagster_log.warning(msg, *args, **kwargs)

    def error(self, msg: object, *args: object, **kwargs: Any) -> None:
        self.dagster_log.error(msg, *args, **kwargs)

    def exception(self, msg: object, *args: object, **kwargs: Any) -> None:
        self.dagster_log.exception(msg, *args, **kwargs)

    def critical(self, msg: object, *args: object, **kwargs: Any) -> None:
        self.dagster_log.critical(msg, *args, **kwargs)


class QuietContext:
    """The op context as one sink's ``run_post`` sees it in the continuous run (see the module doc)."""

    def __init__(self, context: dg.OpExecutionContext, marks: list[tuple[float, str]] | None = None) -> None:
        self._context = context
        self.log = QuietLog(context.log, marks)

    def __getattr__(self, name: str) -> Any:  # run_id, instance, resources: the op's own
        return getattr(self._context, name)
