"""Seeded fault injection, so retry and dead-letter paths can be exercised without mocks and replayed.

All random draws come from one `random.Random(seed)` under a lock: a client that sends requests one
at a time sees the same faults on every run. Concurrent clients see the same fault *rates*, but which
request gets which draw depends on thread scheduling.

Request-level faults (429/503 and latency) apply only to ingest endpoints (`_bulk`, single-document
writes, HEC `event`/`raw`), so health checks and the counts a test reads afterwards never fail.
"""

import random
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(frozen=True, slots=True)
class FaultConfig:
    seed: int = 0
    request_429_rate: float = 0.0
    request_503_rate: float = 0.0
    item_429_rate: float = 0.0
    reject_field: str | None = None
    reject_values: tuple[Any, ...] = ()
    latency_ms: float = 0.0
    connection_reset_rate: float = 0.0

    def __post_init__(self) -> None:
        for name in ("request_429_rate", "request_503_rate", "item_429_rate", "connection_reset_rate"):
            rate = getattr(self, name)
            if not isinstance(rate, int | float) or not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be a number between 0 and 1, got {rate!r}")
        if self.request_429_rate + self.request_503_rate > 1.0:
            raise ValueError("request_429_rate + request_503_rate must not exceed 1")
        if not isinstance(self.latency_ms, int | float) or self.latency_ms < 0:
            raise ValueError(f"latency_ms must be a non-negative number, got {self.latency_ms!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        if self.reject_field is not None and not isinstance(self.reject_field, str):
            raise ValueError("reject_field must be a string")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "FaultConfig":
        """Build from JSON; keys not given take their defaults (so `{}` switches every fault off)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown fault settings {unknown}; known: {sorted(known)}")
        values = dict(data)
        if "reject_values" in values:
            raw = values["reject_values"]
            if not isinstance(raw, list | tuple):
                raise ValueError("reject_values must be a list")
            values["reject_values"] = tuple(raw)
        for name in (
            "request_429_rate",
            "request_503_rate",
            "item_429_rate",
            "latency_ms",
            "connection_reset_rate",
        ):
            if values.get(name) is None:
                values.pop(name, None)
        if values.get("seed") is None:
            values.pop("seed", None)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["reject_values"] = list(self.reject_values)
        return data


class FaultInjector:
    def __init__(self, config: FaultConfig | None = None) -> None:
        self._lock = threading.Lock()
        self._config = config or FaultConfig()
        self._rng = random.Random(self._config.seed)
        self._counts: Counter[str] = Counter()

    @property
    def config(self) -> FaultConfig:
        return self._config

    def configure(self, config: FaultConfig) -> None:
        """Replace the settings and restart the random sequence from the seed."""
        with self._lock:
            self._config = config
            self._rng = random.Random(config.seed)

    def reset(self) -> None:
        """Forget counts and restart the random sequence, keeping the settings."""
        with self._lock:
            self._rng = random.Random(self._config.seed)
            self._counts.clear()

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(sorted(self._counts.items()))

    def record(self, kind: str, n: int = 1) -> None:
        if n:
            with self._lock:
                self._counts[kind] += n

    def delay(self) -> None:
        latency = self._config.latency_ms
        if latency > 0:
            time.sleep(latency / 1000.0)

    def request_fault(self) -> int | None:
        """429, 503 or None for one ingest request. Draws nothing when both rates are zero."""
        config = self._config
        if not (config.request_429_rate or config.request_503_rate):
            return None
        with self._lock:
            draw = self._rng.random()
            if draw < config.request_429_rate:
                self._counts["request_429"] += 1
                return 429
            if draw < config.request_429_rate + config.request_503_rate:
                self._counts["request_503"] += 1
                return 503
        return None

    def connection_reset(self) -> str | None:
        """For one ingest request: None, or when to reset the connection, "before" or "after" applying it.

        "after" is the case that makes duplicates: the sink committed the request but the client never
        hears so and resends it.
        """
        rate = self._config.connection_reset_rate
        if not rate:
            return None
        with self._lock:
            if self._rng.random() >= rate:
                return None
            when = "after" if self._rng.random() < 0.5 else "before"
            self._counts[f"connection_reset_{when}"] += 1
            return when

    def item_429_mask(self, n: int) -> list[bool] | None:
        """One draw per bulk item, taken together so a request's draws are contiguous. None = no faults."""
        rate = self._config.item_429_rate
        if not rate:
            return None
        with self._lock:
            rand = self._rng.random
            mask = [rand() < rate for _ in range(n)]
            self._counts["item_429"] += sum(mask)
        return mask

    def rejects(self, doc: Any) -> bool:
        """True if `doc[reject_field]` (dots walk into nested objects) equals one of `reject_values`."""
        config = self._config
        if config.reject_field is None or not config.reject_values or not isinstance(doc, dict):
            return False
        value = lookup_field(doc, config.reject_field)
        if value is _MISSING:
            return False
        # Type must match too, so a rejected value of 1 does not also reject true.
        hit = any(type(value) is type(v) and value == v for v in config.reject_values)
        if hit:
            self.record("reject_field")
        return hit


_MISSING = object()


def lookup_field(doc: dict[str, Any], path: str) -> Any:
    if path in doc:
        return doc[path]
    node: Any = doc
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node
