"""``/metrics`` for worker processes that share one port: each worker's values in a shared directory.

The kernel hands each scrape to any worker, so a worker's own counters
would jump between workers and go backwards. The supervisor
(:mod:`collab.supervisor`) makes a directory and tells each worker with
:func:`share` after the fork. A worker writes its values to ``PID.json``
every :data:`WRITE_INTERVAL` seconds and before it answers a scrape
(:func:`exchange`), each time replacing the file at once; the scrape sums
every file. Whatever a scrape reported was in a file first, and each file
only grows, so the next scrape, whichever worker takes it, never reports
less. When a worker dies the supervisor renames its file (:func:`retire`):
its counters stay in the totals, its gauges no longer count.

prometheus-client's multiprocess mode keeps the same promises with a memory
mapped file per worker, written on every increment under a lock, in a mode
chosen by an environment variable when it is first imported. collab's
counters are plain integers bumped on the hot paths, so a small write
every second (and one per scrape) costs less and keeps them as they are.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

log = logging.getLogger("collab.metrics")

#: Seconds between two writes of a worker's values (a scrape also writes the answering worker's).
WRITE_INTERVAL = 1.0
#: Times a read starts again when a file went away under it (a worker's file retired meanwhile).
READ_TRIES = 5

_shared: str | None = None


def share(path: str | None) -> None:
    """Report this process's metrics through ``path`` (``None``: this process answers for itself only)."""
    global _shared
    _shared = path


def shared() -> str | None:
    """The directory set by :func:`share`, if any."""
    return _shared


def write(path: str, values: dict[str, Any]) -> None:
    """Replace this process's file in ``path`` with ``values`` (a reader sees the old file or the new one)."""
    pid = os.getpid()
    tmp = os.path.join(path, f".{pid}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(values, f, separators=(",", ":"))
    os.replace(tmp, os.path.join(path, f"{pid}.json"))


def read(path: str) -> list[tuple[dict[str, Any], bool]]:
    """Every worker's values in ``path``, each with whether that worker is alive (not retired).

    A file renamed between listing and opening (a worker retired meanwhile)
    makes the read start again, so a dead worker's counts are never missed.
    """
    for _ in range(READ_TRIES):
        reports, vanished = _read_once(path)
        if not vanished:
            return reports
    return reports


def _read_once(path: str) -> tuple[list[tuple[dict[str, Any], bool]], bool]:
    reports = []
    for name in sorted(os.listdir(path)):
        if not name.endswith(".json"):
            continue
        try:
            with open(os.path.join(path, name), encoding="utf-8") as f:
                values = json.load(f)
        except FileNotFoundError:
            return reports, True
        except (OSError, ValueError) as exc:  # not ours, or damaged: leave it out, say so
            log.warning("metrics file %s skipped (%s)", name, exc)
            continue
        reports.append((values, not name.startswith("dead-")))
    return reports, False


def exchange(path: str, values: dict[str, Any]) -> list[tuple[dict[str, Any], bool]]:
    """Write this process's ``values``, then read everyone's (for a scrape)."""
    write(path, values)
    return read(path)


def retire(path: str, pid: int) -> None:
    """Keep a dead worker's counts under a name no later worker takes (its pid may come back)."""
    src = os.path.join(path, f"{pid}.json")
    try:
        os.replace(src, os.path.join(path, f"dead-{pid}-{time.time_ns()}.json"))
    except FileNotFoundError:  # it died before its first write
        pass
    try:
        os.remove(os.path.join(path, f".{pid}.tmp"))
    except FileNotFoundError:
        pass
