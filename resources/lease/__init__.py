"""A fenced lease with a state payload, kept as an append-only sequence of create-only JSON records.

One lease is a folder (local) or prefix (S3) of immutable records ``<seq:012d>.json``; the record with
the highest seq is the truth. Writing record n+1 is a create-only write (``os.link`` locally,
``PUT If-None-Match: *`` on S3), which exactly one writer wins: a compare-and-set on "the latest is n"
that needs no lock service, no DynamoDB table and no clock agreement for its safety.

A record says who holds the lease (``owner``, e.g. a Dagster run id), its fencing ``token`` (the seq of
the record that took it; 0 when free), until when (``expires_at``) and the ``state`` the lease guards
(for a sink: its progress). The holder renews by appending; it writes state by appending; it releases by
appending a free record. Anyone else may append only when the latest record holds no live lease. A
holder whose append loses the race was fenced out: it must not write state, and ``LeaseLost`` says so.

Generic storage, so it lives in ``resources/`` beside the lake: it knows nothing about sinks or runs
(``pipelines/post/progress.py`` gives it that meaning), and an ingest fence can use it as it is.

Clocks: safety (one holder at a time, state never overwritten by a fenced-out holder) rests on the
create-only writes alone. Liveness uses ``expires_at`` on the writer's clock, compared with the reader's:
hosts must agree to well within a TTL (NTP does), or a takeover comes early or late by the skew.
"""

from resources.lease.guard import LeaseGuard
from resources.lease.holder import Lease, acquire, put_state

# KEEP_RECORDS stays in resources.lease.log, the one module that reads it (patch it there).
from resources.lease.log import LeaseLog
from resources.lease.record import LeaseHeld, LeaseLost, LeaseRecord

__all__ = [
    "Lease",
    "LeaseGuard",
    "LeaseHeld",
    "LeaseLog",
    "LeaseLost",
    "LeaseRecord",
    "acquire",
    "put_state",
]
