"""The task guard's verdicts on storage trouble: a hiccup is no verdict, a bug is not a hiccup."""

import shutil
from pathlib import Path

import pytest

from resources.filesystem import FileSystemSettings
from resources.lease import LeaseLog, LeaseRecord, acquire


class _BuggyLog(LeaseLog):
    """Stands for a bug of lakerelay's in reading the log (no real part raises this on purpose)."""

    def latest(self) -> LeaseRecord | None:
        raise TypeError("a bug, not a storage error")


def test_unreachable_storage_is_no_verdict_but_a_bug_is_raised(tmp_path: Path) -> None:
    folder = tmp_path / "lease"
    log = LeaseLog(str(folder), FileSystemSettings())
    lease = acquire(log, "run-1", ttl_s=30)
    guard = lease.guard(check_s=0.1)
    assert guard.lost_reason(force=True) is None

    # The lease's folder is now a file: every listing fails with an OSError, as an unmounted volume does.
    shutil.rmtree(folder)
    folder.write_text("not a folder")
    assert guard.lost_reason(force=True) is None  # the lease has not expired: no verdict yet

    buggy = lease.guard(check_s=0.1)
    buggy.log = _BuggyLog(str(folder), FileSystemSettings())
    with pytest.raises(TypeError, match="a bug"):
        buggy.lost_reason(force=True)
