"""Helpers shared by the benchmarks: traces, machine description, tables.

Benchmarks are scripts, not tests: they print Markdown tables of absolute
numbers *and* of ratios against a baseline measured in the same run, on the
same (shared, noisy) machine, because only the ratio is comparable between
runs.
"""

from __future__ import annotations

import gzip
import json
import os
import platform
import resource
import socket
import subprocess
import statistics
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

REPO = Path(__file__).resolve().parent.parent
SRC = REPO / "src"
if str(SRC) not in sys.path:  # run as `python benchmarks/x.py` from a checkout: this checkout's collab
    sys.path.insert(0, str(SRC))

TRACE_NAMES = ("automerge-paper", "seph-blog1", "friendsforever_flat", "json-crdt-patch")

Patch = tuple[int, int, str]


def traces_dir() -> Path:
    """``$COLLAB_TRACES``, else the traces kept in the repository (``benchmarks/traces``)."""
    env = os.environ.get("COLLAB_TRACES")
    return Path(env) if env else REPO / "benchmarks" / "traces"


@dataclass
class Trace:
    """One editing trace, flattened to patches (code point positions)."""

    name: str
    start: str
    end: str
    patches: list[Patch]

    def limited(self, limit: int | None) -> "Trace":
        """The first ``limit`` patches, with the end text recomputed by slicing."""
        if limit is None or limit >= len(self.patches):
            return self
        patches = self.patches[:limit]
        return Trace(self.name, self.start, slice_replay(self.start, patches), patches)


def load_trace(name: str) -> Trace:
    path = traces_dir() / f"{name}.json.gz"
    if not path.is_file():
        raise SystemExit(f"trace {path} not found: set COLLAB_TRACES to the folder holding {name}.json.gz")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        data = json.load(f)
    patches = [(p[0], p[1], p[2]) for txn in data["txns"] for p in txn["patches"]]
    return Trace(name, data.get("startContent", ""), data["endContent"], patches)


def slice_replay(start: str, patches: Sequence[Patch]) -> str:
    """The baseline: plain ``str`` slicing, one patch at a time."""
    s = start
    for pos, dl, ins in patches:
        s = s[:pos] + ins + s[pos + dl :]
    return s


def filler(size: int) -> str:
    """A deterministic ASCII text of ``size`` code points, in lines of prose."""
    line = "The quick brown fox jumps over the lazy dog; pack my box with five dozen liquor jugs.\n"
    return (line * (size // len(line) + 1))[:size]


def raise_nofile(want: int = 65536) -> int:
    """Raise the soft open-files limit as far as allowed; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft
        return target
    return soft


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(proc: subprocess.Popen, port: int, timeout: float = 30.0) -> None:
    """Return once the collab server ``proc`` answers ``GET /healthz``; exit saying why if it dies or never does."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode()[-2000:] if proc.stderr else ""
            raise SystemExit(f"the collab server exited with {proc.returncode}: {err}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"the collab server did not become healthy on port {port} within {timeout:g} s")


def read_metrics(port: int, host: str = "127.0.0.1", timeout: float = 10) -> dict[str, float]:
    """Every sample of the collab server's ``GET /metrics``, by name as written (labels included).

    One parser for the Prometheus text the benchmarks read their counters from,
    e.g. ``collab_frames_sent_total`` or ``collab_store_sync_seconds_bucket{le="0.005"}``.
    Synchronous: from a coroutine, call it with ``asyncio.to_thread``.
    """
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=timeout) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        # name{labels} value [timestamp]; a label value may hold spaces, so the name ends at its last brace
        end = line.rindex("}") + 1 if "{" in line else len(line.split(None, 1)[0])
        out[line[:end]] = float(line[end:].split()[0])
    return out


def machine() -> str:
    """One line describing where the numbers came from."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = []
    for mod in ("uvicorn", "starlette", "websockets", "orjson", "uvloop"):
        try:
            versions.append(f"{mod} {__import__(mod).__version__}")
        except (ImportError, AttributeError):
            pass
    return (
        f"{cpu}, {os.cpu_count()} CPUs, Linux {platform.release()}, "
        f"Python {platform.python_version()}; " + ", ".join(versions)
    )


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A Markdown table; numbers right-aligned."""
    rows = [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    out = ["| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |"]
    out.append("| " + " | ".join("-" * (w - 1) + (":" if i else "-") for i, w in enumerate(widths)) + " |")
    for r in rows:
        out.append("| " + " | ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) + " |")
    return "\n".join(out)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        if value >= 100:
            return f"{value:,.0f}"
        if value >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by nearest rank; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else 0.0


def summarize_collapsed(path: str | Path, top: int = 20) -> str:
    """Top functions of a py-spy ``--format raw`` (collapsed stacks) profile.

    *self* counts samples whose innermost frame is the function, *total*
    samples with the function anywhere on the stack (counted once per stack).
    """
    self_counts: dict[str, int] = {}
    total_counts: dict[str, int] = {}
    samples = 0
    for line in Path(path).read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        samples += n
        frames = [_short_frame(f) for f in stack.split(";")]
        self_counts[frames[-1]] = self_counts.get(frames[-1], 0) + n
        for f in set(frames):
            total_counts[f] = total_counts.get(f, 0) + n
    if not samples:
        return "(no samples)"
    rows = [[f, self_counts[f] / samples * 100, total_counts[f] / samples * 100]
            for f in sorted(self_counts, key=self_counts.get, reverse=True)[:top]]  # type: ignore[arg-type]
    out = table(["function (innermost frame)", "self %", "total %"], rows)
    rows = [[f, total_counts[f] / samples * 100] for f in sorted(total_counts, key=total_counts.get, reverse=True)[:top]]  # type: ignore[arg-type]
    return f"{samples} samples\n\n{out}\n\n" + table(["function (anywhere on the stack)", "total %"], rows)


def _short_frame(frame: str) -> str:
    """``func (/long/path/pkg/mod.py:12)`` -> ``func (pkg/mod.py)``: one entry per function."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    file = where.rsplit(":", 1)[0]
    parts = file.replace("\\", "/").split("/")
    return f"{name} ({'/'.join(parts[-2:])})" if file else name
