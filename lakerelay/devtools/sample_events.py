"""Generate a landing zone of security and operations events as JSON-lines files."""

import argparse
import os
import random
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

ACTIONS = [
    "login",
    "logout",
    "file_read",
    "file_write",
    "dns_query",
    "http_request",
    "process_start",
    "firewall_drop",
]
SEVERITIES = ["debug", "info", "notice", "warning", "error", "critical"]
CATEGORIES = ["auth", "network", "endpoint", "application"]
USERS = [f"user{i:03d}" for i in range(200)]


def generate_event(rng: random.Random, when: datetime, seq: int) -> dict:
    action = rng.choice(ACTIONS)
    return {
        "event_id": f"evt-{seq:09d}",
        "ts": when.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "host": f"srv-{rng.randrange(64):02d}.corp.example",
        "source_ip": f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}",
        "dest_ip": f"{rng.choice(['10', '172', '203'])}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}",
        "user": rng.choice(USERS),
        "action": action,
        "category": rng.choice(CATEGORIES),
        "severity": rng.choices(SEVERITIES, weights=[5, 50, 20, 15, 8, 2])[0],
        "status_code": rng.choice([200, 200, 200, 201, 204, 301, 401, 403, 404, 500]),
        "bytes_in": rng.randrange(0, 1 << 20),
        "bytes_out": rng.randrange(0, 1 << 20),
        "message": f"{action} by {rng.choice(USERS)} on port {rng.randrange(1, 65535)}",
    }


def write_landing_zone(
    root: Path,
    files: int,
    records_per_file: int,
    seed: int = 7,
    start_seq: int = 0,
    prefix: str = "events",
    start_file: int | None = None,
) -> int:
    """Write ``files`` JSON-lines files under ``root``; returns the number of records written.

    Each file is written under a hidden temporary name and renamed into place, so a landing sensor
    never sees half a file.
    """
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    start = datetime(2026, 11, 1, tzinfo=UTC)
    seq = start_seq
    for f in range(files):
        lines = []
        for _ in range(records_per_file):
            lines.append(orjson.dumps(generate_event(rng, start + timedelta(seconds=seq * 0.37), seq)))
            seq += 1
        first = start_seq // max(records_per_file, 1) if start_file is None else start_file
        final = root / f"{prefix}-{first + f:05d}.json"
        tmp = root / f".{final.name}.tmp"
        tmp.write_bytes(b"\n".join(lines) + b"\n")
        os.replace(tmp, final)
    return seq - start_seq


def next_free(root: Path, prefix: str = "events") -> tuple[int, int]:
    """(file number, event number) after what ``root`` already holds, so a new drop never overwrites one.

    A landing zone ingests a name once: writing ``events-00000.json`` again would be a changed file,
    not new events. Numbers continue after the highest ``<prefix>-NNNNN.json`` and its last event.
    """
    numbered = [
        (int(match.group(1)), path)
        for path in root.glob(f"{prefix}-*.json")
        if (match := re.fullmatch(rf"{re.escape(prefix)}-(\d+)\.json", path.name))
    ]
    if not numbered:
        return 0, 0
    number, last = max(numbered)
    tail = last.read_bytes().rstrip(b"\n").rsplit(b"\n", 1)[-1]
    event_id = orjson.loads(tail)["event_id"] if tail else "evt--1"
    return number + 1, int(event_id.rsplit("-", 1)[-1]) + 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("root", type=Path, help="landing folder to write into")
    parser.add_argument("--files", type=int, default=40)
    parser.add_argument("--records-per-file", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    start_file, start_seq = next_free(args.root)
    n = write_landing_zone(
        args.root, args.files, args.records_per_file, args.seed + start_file, start_seq, start_file=start_file
    )
    last = start_file + args.files - 1
    print(
        f"wrote {n} events in {args.files} files (events-{start_file:05d} … events-{last:05d}) under {args.root}"
    )


if __name__ == "__main__":
    main()
