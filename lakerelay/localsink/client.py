"""Small `requests` helpers for tests and the demo to read and steer a running sink over HTTP."""

import time
from typing import Any

import requests

from lakerelay.localsink.splunk import DEFAULT_HEC_INDEX


def _admin(url: str, path: str) -> str:
    return f"{url.rstrip('/')}/_localsink/{path}"


def fetch_stats(url: str, timeout: float = 10.0) -> dict[str, Any]:
    resp = requests.get(_admin(url, "stats"), timeout=timeout)
    resp.raise_for_status()
    return resp.json()


def es_count(url: str, index: str, timeout: float = 10.0) -> int:
    """Documents in `index` (0 if it does not exist), from the admin view so no ES auth is needed."""
    return int(fetch_stats(url, timeout)["es"]["indices"].get(index, 0))


def es_ids(url: str, index: str, timeout: float = 10.0) -> list[str]:
    resp = requests.get(_admin(url, f"es/{index}/ids"), timeout=timeout)
    if resp.status_code == 404:
        return []
    resp.raise_for_status()
    return resp.json()["ids"]


def hec_count(url: str, index: str = DEFAULT_HEC_INDEX, timeout: float = 10.0) -> int:
    return int(fetch_stats(url, timeout)["hec"]["indices"].get(index, 0))


def hec_events(
    url: str, index: str = DEFAULT_HEC_INDEX, limit: int | None = None, timeout: float = 10.0
) -> list[Any]:
    params = {} if limit is None else {"limit": limit}
    resp = requests.get(_admin(url, f"hec/{index}/events"), params=params, timeout=timeout)
    if resp.status_code == 404:
        return []
    resp.raise_for_status()
    return resp.json()["events"]


def reset(url: str, timeout: float = 10.0) -> None:
    requests.post(_admin(url, "reset"), timeout=timeout).raise_for_status()


def set_faults(url: str, timeout: float = 10.0, **settings: Any) -> dict[str, Any]:
    """Replace the fault settings; call with no settings to switch every fault off."""
    resp = requests.post(_admin(url, "faults"), json=settings, timeout=timeout)
    resp.raise_for_status()
    return resp.json()


def wait_ready(url: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if requests.get(_admin(url, "health"), timeout=1.0).ok:
                return
        except requests.ConnectionError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"localsink at {url} not ready after {timeout}s")
        time.sleep(0.05)
