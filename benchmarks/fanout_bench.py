"""Fan-out to many editors of one document: one frame per op vs coalesced batch frames.

200 clients join one document; 20 of them type (each edit waits for its
ack, as a real client does). Every client records when each edit reaches
it. The same load runs twice against the same kind of fresh server: once
with clients that take one frame per message, once with clients that join
with ``"batch": true`` so the server coalesces what is queued for them.
Reported: frames the server sent (from ``/metrics``), deliveries, and
send-to-arrival latency at the other clients.

    python benchmarks/fanout_bench.py            # about 30 s
    python benchmarks/fanout_bench.py --clients 100 --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

from _common import REPO, free_port, machine, percentile, raise_nofile, read_metrics, table, wait_healthy

import websockets


def start_server(port: int, data_dir: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "collab", "serve", "--port", str(port), "--data-dir", data_dir,
           "--conn-rate", "10000", "--conn-burst", "10000", "--conn-per-ip", "100000",
           "--max-connections", "100000", "--msg-rate", "10000", "--msg-burst", "10000", "--log-level", "warning"]
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        cmd = ["taskset", "-c", "0", *cmd]
    # Every client comes from 127.0.0.1: open the per-address budgets as wide as the per-connection ones.
    env = dict(os.environ, COLLAB_ADDR_MSG_RATE="1000000", COLLAB_ADDR_MSG_BURST="1000000")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_healthy(proc, port)
    return proc


def frames_sent(port: int) -> int:
    return int(read_metrics(port)["collab_frames_sent_total"])


async def run_load(port: int, clients: int, writers: int, seconds: float, rate: float, batch: bool) -> dict:
    url = f"ws://127.0.0.1:{port}/ws/fanout"
    sent_at: dict[str, float] = {}
    latencies: list[float] = []
    deliveries = 0
    conns = []
    for _ in range(clients):
        conns.append(await websockets.connect(url, max_size=None, max_queue=None, ping_interval=None))
    welcomes = []
    for c in conns:
        await c.send(json.dumps({"type": "join", "batch": batch}))
    for c in conns:
        while len(welcomes) < len(conns) and not (welcomes and welcomes[-1][0] is c):
            frame = json.loads(await c.recv())
            for msg in frame["messages"] if frame["type"] == "batch" else [frame]:
                if msg["type"] == "welcome":
                    welcomes.append((c, msg))
    welcomes = [w for _, w in welcomes]
    stop = time.monotonic() + seconds
    marker = re.compile(r"\[w\d+-\d+\]")

    async def reader(i: int, conn, state: dict) -> None:
        nonlocal deliveries
        async for raw in conn:
            frame = json.loads(raw)
            for msg in frame["messages"] if frame["type"] == "batch" else [frame]:
                if msg["type"] == "op":
                    now = time.perf_counter()
                    state["rev"] = msg["rev"]
                    for comp in msg["op"]:
                        if isinstance(comp, str):
                            state["len"] += len(comp)
                            for token in marker.findall(comp):
                                if token in sent_at:
                                    latencies.append(now - sent_at[token])
                                    deliveries += 1
                        elif comp < 0:
                            state["len"] += comp
                elif msg["type"] == "error":
                    raise SystemExit(f"the server refused an edit: {msg}")
                elif msg["type"] == "ack":
                    state["rev"] = msg["rev"]
                    state["len"] += state.pop("pending")
                    state["acked"].set()

    async def writer(i: int, conn, state: dict) -> None:
        n = 0
        while time.monotonic() < stop:
            token = f"[w{i}-{n}]"
            op = [token, state["len"]] if state["len"] else [token]
            state["pending"] = len(token)
            state["acked"].clear()
            sent_at[token] = time.perf_counter()
            await conn.send(json.dumps({"type": "op", "rev": state["rev"], "op": op, "id": token}))
            await state["acked"].wait()
            n += 1
            await asyncio.sleep(1 / rate)

    states = [{"rev": w["rev"], "len": len(w.get("text", "")), "acked": asyncio.Event()} for w in welcomes]
    readers = [asyncio.create_task(reader(i, c, s)) for i, (c, s) in enumerate(zip(conns, states))]
    await asyncio.gather(*(writer(i, conns[i], states[i]) for i in range(writers)))
    await asyncio.sleep(1.0)  # let the last broadcasts arrive
    for c in conns:
        await c.close()
    for r in readers:
        r.cancel()
    return {"edits": len(sent_at), "deliveries": deliveries, "lat": latencies}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--writers", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rate", type=float, default=5, help="edits per second per writer")
    args = parser.parse_args()
    raise_nofile()
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})
    rows = []
    results = {}
    for batch in (False, True):
        with tempfile.TemporaryDirectory() as data:
            port = free_port()
            proc = start_server(port, data)
            try:
                before = frames_sent(port)
                res = asyncio.run(run_load(port, args.clients, args.writers, args.seconds, args.rate, batch))
                res["frames"] = frames_sent(port) - before
            finally:
                proc.terminate()
                proc.wait(15)
        results[batch] = res
        lat = [x * 1000 for x in res["lat"]]
        rows.append([
            "batch frames" if batch else "one frame per message",
            res["edits"], res["deliveries"], res["frames"],
            res["frames"] / max(1, res["deliveries"]),
            percentile(lat, 50), percentile(lat, 99), max(lat) if lat else 0.0,
        ])
    base = results[False]
    print(f"fan-out: {args.clients} clients on one document, {args.writers} typing {args.rate:g} edits/s for {args.seconds:g} s")
    print(machine())
    print()
    print(table(["mode", "edits", "deliveries", "frames sent", "frames/delivery", "p50 ms", "p99 ms", "max ms"], rows))
    p99 = lambda r: percentile([x * 1000 for x in r["lat"]], 99)  # noqa: E731
    print()
    print(f"batch / one-per-message: frames {results[True]['frames'] / max(1, base['frames']):.2f}x, "
          f"p99 latency {p99(results[True]) / max(1e-9, p99(base)):.2f}x")


if __name__ == "__main__":
    main()
