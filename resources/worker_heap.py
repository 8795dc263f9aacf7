"""Cheaper garbage collection in Spark's Python workers, which run a full collection after every task.

PySpark's daemon calls ``gc.collect()`` after each task of a reused worker (``pyspark/daemon.py``).
A full collection walks every tracked object, and a post worker holds pyarrow, numpy, requests and
PySpark's own modules: about 85,000 objects, 58 ms a collection here. With a read and a post task
per slot in every run, that was a large share of the workers' CPU (py-spy with --gil: 48% of the
samples in that one ``gc.collect()`` line). Freezing the heap moves the loaded modules' objects to
the permanent generation that collections skip; what each task allocates is still collected.

A reused worker may run a read task first and a post task later, whose unpickling imports the
sinks' modules (about 340 more) only then; freezing once, at the first task, left those in every
later collection (py-spy: the daemon's ``gc.collect()`` still 12.6% of the workers' samples). The
heap is now frozen again whenever modules were imported since the last freeze, without a collection
first: that collection walked every newly imported object, the very cost the freeze saves (14% of
the samples). The daemon collects after every task, so what a task's start freezes is what survived
the previous one, plus the new modules.
"""

import gc
import sys

_modules_at_freeze = 0


def freeze_imported_heap() -> None:
    """Exempt everything alive now from later collections, if modules were imported since the last time."""
    global _modules_at_freeze
    if len(sys.modules) != _modules_at_freeze:
        gc.freeze()
        _modules_at_freeze = len(sys.modules)
