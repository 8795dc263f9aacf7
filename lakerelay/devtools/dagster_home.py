"""A local DAGSTER_HOME for `make ui`, the benchmarks and the end-to-end tests.

Its dagster.yaml gives every lakerelay pool one slot (one post per sink and feed, one ingest per
feed, at run granularity: a second run waits in the queue instead of starting beside the first), a
run queue that is checked every second (the default 5 s would add to the freshness of every file),
sensors evaluated in threads (the daemon's sensor loop starts at most every 5 s; evaluating the
sensors one after another would stretch it), and no telemetry.
"""

import argparse
from pathlib import Path

DAGSTER_YAML = """\
telemetry:
  enabled: false
concurrency:
  pools:
    default_limit: 1
    granularity: run
sensors:
  use_threads: true
  num_workers: 4
run_coordinator:
  module: dagster.core.run_coordinator
  class: QueuedRunCoordinator
  config:
    dequeue_interval_seconds: {dequeue_interval_s}
"""


def prepare(home: Path, dequeue_interval_s: int = 1) -> Path:
    """Create ``home`` with lakerelay's dagster.yaml unless it already has one; returns ``home``."""
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text(DAGSTER_YAML.format(dequeue_interval_s=dequeue_interval_s))
    return home


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("home", type=Path, help="the DAGSTER_HOME folder to prepare")
    print(prepare(parser.parse_args().home.resolve()))


if __name__ == "__main__":
    main()
