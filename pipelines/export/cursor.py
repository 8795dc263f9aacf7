"""The ``since`` cursor: an opaque token naming a Delta version and the last ordering key exported.

Users pass it back unchanged; it is URL-safe base64 of a small JSON document, so it survives shells,
query strings and YAML. It also names the dataset and key column, so a cursor cannot be replayed
against another export by mistake.
"""

import base64
import binascii
from dataclasses import dataclass

import orjson

CURSOR_VERSION = 1


@dataclass(frozen=True)
class Cursor:
    dataset: str
    order_by: str
    delta_version: int
    last_key: int | str | None  # None: nothing exported yet, the next export starts at the beginning

    def encode(self) -> str:
        doc = {"c": CURSOR_VERSION, "d": self.dataset, "o": self.order_by, "v": self.delta_version}
        doc["k"] = self.last_key
        return base64.urlsafe_b64encode(orjson.dumps(doc)).decode("ascii").rstrip("=")


def decode_cursor(token: str, dataset: str, order_by: str) -> Cursor:
    """The cursor in ``token``; a clear error if it is malformed or belongs to another export."""
    try:
        doc = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        cursor = Cursor(doc["d"], doc["o"], int(doc["v"]), doc["k"])
    except (binascii.Error, ValueError, KeyError, TypeError) as exc:
        raise ValueError(
            f"'since' cursor {token[:40]!r} is not a cursor of this exporter: pass the next_cursor of a "
            "previous export's manifest unchanged"
        ) from exc
    if (cursor.dataset, cursor.order_by) != (dataset, order_by):
        raise ValueError(
            f"'since' cursor belongs to dataset {cursor.dataset!r} ordered by {cursor.order_by!r}, "
            f"not {dataset!r} ordered by {order_by!r}"
        )
    return cursor
