"""Opening a document with a million operations behind it vs opening a fresh one.

Writes a document of ``--ops`` single-character edits through the SQLite
store's real ``append`` path (batches, with snapshots as the hub takes them;
the log keeps every op, a load reads only those after the last snapshot), then
starts a real server on that data directory and times ``join`` → ``welcome``
over a WebSocket for the long document and for a fresh one holding the same text in one edit.
Each open is a cold load (the server unloads idle documents; each round uses
a new server process).

    python benchmarks/long_history_bench.py                # 1,000,000 ops, about a minute
    python benchmarks/long_history_bench.py --ops 100000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time

from _common import REPO, free_port, machine, median, table, wait_healthy

import websockets

from collab.store import StoredOp
from collab.store.sqlite import SqliteStore


async def build(path: str, ops: int, depth: int, batch: int = 10_000) -> float:
    store = SqliteStore(path, history_depth=depth)
    await store.open()
    t0 = time.perf_counter()
    length = 0
    pending: list[StoredOp] = []
    for rev in range(1, ops + 1):
        pending.append(StoredOp(rev, ([length] if length else []) + ["x"], "gen", f"op{rev}"))
        length += 1
        if len(pending) == batch or rev == ops:
            # The hub snapshots every max(snapshot_every, len // 256) ops (about 3,900 at the end here);
            # one snapshot per 10,000-op batch is of the same order.
            await store.append("long", pending, length, (rev, "x" * length))
            pending = []
    # The baseline: the same text written in one op, so only the history differs.
    await store.append("fresh", [StoredOp(1, ["x" * length], "gen", "fresh1")], length)
    await store.close()
    return time.perf_counter() - t0


async def time_welcome(port: int, doc: str) -> tuple[float, int]:
    t0 = time.perf_counter()
    async with websockets.connect(f"ws://127.0.0.1:{port}/ws/{doc}", max_size=None) as ws:
        await ws.send(json.dumps({"type": "join"}))
        while True:
            msg = json.loads(await ws.recv())
            if msg["type"] == "welcome":
                return time.perf_counter() - t0, msg["rev"]


def open_times(data_dir: str, doc: str, rounds: int) -> tuple[list[float], int]:
    times = []
    rev = 0
    for _ in range(rounds):
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "collab", "serve", "--port", str(port), "--data-dir", data_dir, "--log-level", "warning"],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            wait_healthy(proc, port)
            elapsed, rev = asyncio.run(time_welcome(port, doc))
            times.append(elapsed)
        finally:
            proc.terminate()
            proc.wait(15)
    return times, rev


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", type=int, default=1_000_000)
    parser.add_argument("--depth", type=int, default=1000, help="kept history depth (COLLAB_HISTORY_DEPTH)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as data:
        path = os.path.join(data, "collab.sqlite3")
        build_s = asyncio.run(build(path, args.ops, args.depth))
        db = sqlite3.connect(path)
        kept = db.execute("SELECT coalesce(sum(rev - first + 1), 0) FROM log WHERE doc = 'long'").fetchone()[0]
        db.close()
        fresh, _ = open_times(data, "fresh", args.rounds)
        long, rev = open_times(data, "long", args.rounds)
    assert rev == args.ops, f"the long document opened at rev {rev}, expected {args.ops}"
    print(f"long history: {args.ops:,} ops written in {build_s:.1f} s; {kept:,} kept in the log (depth {args.depth})")
    print(machine())
    print()
    base = median(fresh)
    print(table(
        ["document", "ops in history", "open (join→welcome) median ms", "min ms", "vs fresh"],
        [[f"fresh (same {args.ops:,}-char text, 1 op)", 1, base * 1000, min(fresh) * 1000, 1.0],
         [f"long ({args.ops:,} ops)", args.ops, median(long) * 1000, min(long) * 1000, median(long) / base]],
    ))


if __name__ == "__main__":
    main()
