"""Cheaper garbage collection in Spark's Python workers, which run a full collection after every task.

PySpark's daemon calls ``gc.collect()`` after each task of a reused worker (``pyspark/daemon.py``).
A full collection walks every tracked object, and a post worker holds pyarrow, numpy, pandas,
requests and PySpark's own modules: about 85,000 objects, 58 ms a collection here. With a read and a
post task per slot in every run, that was a large share of the workers' CPU (py-spy with --gil: 48%
of the samples in that one ``gc.collect()`` line). Freezing the heap once, when a worker first runs
lakerelay's code, moves the imported modules' objects to the permanent generation that collections
skip; what each task allocates is still collected as before.
"""

import gc

_frozen = False


def freeze_imported_heap() -> None:
    """Once per worker process: collect, then exempt everything alive now from later collections."""
    global _frozen
    if not _frozen:
        gc.collect()
        gc.freeze()
        _frozen = True
