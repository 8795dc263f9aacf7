"""Run one real ingest in this process and SIGKILL it right after one of its steps (tests only).

    python tests/crash_at.py <planned|quarantined|committed|cursor> <lake_uri> <landing_uri>

The step's function in the ingest modules is wrapped so that the process dies the moment it returns,
exactly where a crash hurts most; production code carries no hook for it.
"""

import os
import signal
import sys
from collections.abc import Callable

from pipelines.feeds import EVENTS_FEED
from pipelines.ingest import ledger, runner
from resources.lake import LakeResource

# step -> (object holding the function, its name, whether only a true result ends the step).
STEPS: dict[str, tuple[object, str, bool]] = {
    # The batch's file list is in the ledger (False: another run planned that number; no step done).
    "planned": (ledger.FileLedger, "plan", True),
    "quarantined": (runner, "record_quarantine", False),  # its bad records are in the quarantine table
    "committed": (runner, "append_once", False),  # its rows are in the Delta table
    "cursor": (runner, "move_listing_cursor", False),  # the listing cursor passed it
}


def die_after(function: Callable, only_if_true: bool) -> Callable:
    def wrapper(*args: object, **kwargs: object) -> object:
        result = function(*args, **kwargs)
        if result or not only_if_true:
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    return wrapper


def main(step: str, lake_uri: str, landing_uri: str) -> None:
    owner, name, only_if_true = STEPS[step]
    setattr(owner, name, die_after(getattr(owner, name), only_if_true))
    runner.ingest_feed(
        EVENTS_FEED, LakeResource(lake_uri=lake_uri, landing_uri=landing_uri), max_files_per_batch=2
    )


if __name__ == "__main__":
    main(*sys.argv[1:])
