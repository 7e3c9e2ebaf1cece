"""Attacks against a real collab server while a polite client edits at 10 ops/s.

One server (the real app, SQLite, default limits; ``--max-connections`` changes the cap)
and one polite client (127.0.0.2, its own document, one edit every 100 ms,
waiting for each ack) run throughout. Each attack runs in its own process
(``nice 10``: on a real network the attacker's CPU is not ours), from its own
loopback addresses, after a quiet window that gives the polite client's p99
without it:

* ``reconnect flood``: one address floods ops and reconnects at once when closed;
* ``reconnect flood, 700 behind``: the same, with ops based on a revision 700 old;
* ``oversized frames``: frames announcing 64 MiB, payload sent until the server closes;
* ``unfinished fragments``: 40 connections each send 7.5 MiB of a fragmented message, never the end;
* ``50 MB PUTs``: 8 concurrent ``PUT /api/docs/{doc}/text`` with 50 MB bodies, repeated;
* ``connection flood``: 200 addresses open WebSockets up to the global cap and hold them;
* ``slow readers``: 20 addresses join a busy document and never read.

During each attack a quiet address (127.0.0.3) connects, joins and edits once.
A first round without an attack shows how much the p99 moves by itself (noise).
Reported per attack: polite p99 before and during (target: at most 2x), the
server's RSS above its level before the attack, peak during and after
(target: at most 100 MB), whether the quiet address got in, the CPU the
server and the attacker used (% of one core; on one machine the attacker's
and the kernel's loopback work compete with the server), and what the
attacker achieved. Loopback only; every loop is bounded; it stops by itself.

Usage::

    python benchmarks/guard_bench.py [--attack SECONDS] [--quiet SECONDS] [--warmup SECONDS]
        [--max-connections N] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import math
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import read_metrics

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

POLITE, QUIET = "127.0.0.2", "127.0.0.3"
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


# --------------------------------------------------------------------------
# Raw WebSocket client pieces (the attackers write frames by hand)


def frame(opcode: int, payload: bytes, fin: bool = True, length: int | None = None) -> bytes:
    """A masked client frame; ``length`` may announce more payload than is given."""
    n = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    mask = os.urandom(4)
    if not payload:
        return head + mask
    reps = (len(payload) + 3) // 4
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes((mask * reps)[:len(payload)], "big"))
    return head + mask + masked.to_bytes(len(payload), "big")


def text_frame(obj: Any) -> bytes:
    return frame(1, json.dumps(obj).encode())


async def open_from(port: int, src: str, rcvbuf: int = 0) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP connection to the server from loopback address ``src``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.bind((src, 0))
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock, limit=1 << 20)


async def ws_open(port: int, src: str, doc: str, rcvbuf: int = 0,
                  timeout: float = 5.0) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    """A WebSocket handshake by hand; None if the server refused or closed the connection."""
    try:
        r, w = await open_from(port, src, rcvbuf)
    except OSError:
        return None
    key = base64.b64encode(os.urandom(16)).decode()
    w.write((f"GET /ws/{doc} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    try:
        head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), timeout)
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError):
        w.close()
        return None
    if not head.startswith(b"HTTP/1.1 101"):
        w.close()
        return None
    return r, w


async def read_frame(r: asyncio.StreamReader) -> tuple[int, bytes]:
    """One server frame (unmasked): (opcode, payload)."""
    b0, b1 = await r.readexactly(2)
    n = b1 & 0x7F
    if n == 126:
        n = int.from_bytes(await r.readexactly(2), "big")
    elif n == 127:
        n = int.from_bytes(await r.readexactly(8), "big")
    return b0 & 0x0F, await r.readexactly(n)


async def messages(r: asyncio.StreamReader) -> Any:
    """Server messages as dicts (a ``batch`` frame expanded); ends at close or EOF."""
    while True:
        try:
            op, data = await read_frame(r)
        except (OSError, asyncio.IncompleteReadError):
            return
        if op == 8:
            yield {"type": "close", "code": int.from_bytes(data[:2], "big") if len(data) >= 2 else None}
            return
        if op == 1:
            msg = json.loads(data)
            if msg.get("type") == "batch":
                for m in msg.get("messages", []):
                    yield m
            else:
                yield msg


# --------------------------------------------------------------------------
# The polite client and the quiet address


async def polite(port: int) -> None:
    """Edit at 10 ops/s, forever (until killed); print ``t latency_ms`` or ``t ERR why`` per edit."""
    from websockets.asyncio.client import connect

    def out(line: str) -> None:
        print(f"{time.time():.3f} {line}", flush=True)

    while True:
        try:
            async with connect(f"ws://127.0.0.1:{port}/ws/polite", local_addr=(POLITE, 0),
                               open_timeout=5, max_size=None) as ws:
                await ws.send(json.dumps({"type": "join"}))
                welcome = json.loads(await ws.recv())
                rev = welcome["rev"]
                length = len(welcome.get("text", "")) if "text" in welcome else None
                if length is None:
                    raise RuntimeError("polite document must start empty")
                nxt = time.perf_counter()
                for i in range(10**9):
                    nxt += 0.1
                    op: list = ["p", length] if length else ["p"]
                    op_id = f"p{time.time_ns()}-{i}"
                    t0 = time.perf_counter()
                    await ws.send(json.dumps({"type": "op", "rev": rev, "op": op, "id": op_id}))
                    while True:
                        msg = json.loads(await ws.recv())
                        if msg.get("type") == "ack" and msg.get("id") == op_id:
                            break
                        if msg.get("type") == "error":
                            raise RuntimeError(f"error {msg}")
                    out(f"{(time.perf_counter() - t0) * 1e3:.3f}")
                    rev, length = msg["rev"], length + 1
                    await asyncio.sleep(max(0.0, nxt - time.perf_counter()))
        except Exception as exc:  # noqa: BLE001 - reported, then reconnect
            out(f"ERR {type(exc).__name__}: {str(exc)[:80]}")
            await asyncio.sleep(0.2)


async def quiet_join(port: int) -> str:
    """A new client from the quiet address: connect, join, one edit. Returns "yes" or why not."""
    from websockets.asyncio.client import connect

    try:
        async with connect(f"ws://127.0.0.1:{port}/ws/quiet", local_addr=(QUIET, 0), open_timeout=10) as ws:
            await ws.send(json.dumps({"type": "join"}))
            welcome = json.loads(await asyncio.wait_for(ws.recv(), 10))
            n = len(welcome.get("text", ""))
            await ws.send(json.dumps({"type": "op", "rev": welcome["rev"], "op": ["q", n] if n else ["q"], "id": f"q{time.time_ns()}"}))
            while True:
                msg = json.loads(await asyncio.wait_for(ws.recv(), 10))
                if msg.get("type") == "ack":
                    return "yes"
                if msg.get("type") == "error":
                    return f"no ({msg.get('code')})"
    except Exception as exc:  # noqa: BLE001
        return f"no ({type(exc).__name__})"


# --------------------------------------------------------------------------
# Attacks (each runs in its own process until its deadline; prints one JSON line)


async def reconnect_flood(port: int, seconds: float, behind: int) -> dict:
    """Flood ops from one address, reconnecting at once when closed or refused."""
    doc = "deep" if behind else "flood"
    src = "127.0.0.5" if behind else "127.0.0.4"
    stats = {"connections": 0, "refused": 0, "sent": 0, "closes": {}}
    state = {"rev": 0, "open": True}
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        conn = await ws_open(port, src, doc, timeout=2)
        if conn is None:
            stats["refused"] += 1
            await asyncio.sleep(0.01)
            continue
        stats["connections"] += 1
        r, w = conn
        state["open"] = True
        w.write(text_frame({"type": "join"}))
        welcomed = asyncio.Event()

        async def reader() -> None:
            async for msg in messages(r):
                kind = msg.get("type")
                if kind in ("welcome", "ack", "op"):
                    state["rev"] = max(state["rev"], msg.get("rev", 0))
                    welcomed.set()
                elif kind == "close":
                    stats["closes"][str(msg["code"])] = stats["closes"].get(str(msg["code"]), 0) + 1
            state["open"] = False

        task = asyncio.create_task(reader())
        try:  # ops based on the welcome's revision; without one in 0.5 s, on the last one known
            await asyncio.wait_for(welcomed.wait(), min(0.5, max(0.01, end - time.monotonic())))
        except asyncio.TimeoutError:
            pass
        try:
            while state["open"] and time.monotonic() < end:
                for _ in range(32):
                    base = max(state["rev"] - behind, 0)
                    w.write(text_frame({"type": "op", "rev": base, "op": ["f", base] if base else ["f"],
                                        "id": f"f{stats['sent']}"}))
                    stats["sent"] += 1
                await w.drain()
                await asyncio.sleep(0)
        except OSError:
            pass
        w.transport.abort()
        task.cancel()
    return stats


async def seed(port: int, doc: str, n: int) -> int:
    """Give ``doc`` ``n`` one-character revisions, from several seeding addresses; returns its revision."""
    async def one(k: int, count: int) -> int:
        conn = await ws_open(port, f"127.0.3.{k + 1}", doc)
        assert conn is not None, "seeding connection refused"
        r, w = conn
        w.write(text_frame({"type": "join"}))
        it = messages(r).__aiter__()
        rev = (await it.__anext__())["rev"]
        last = rev
        for i in range(count):
            w.write(text_frame({"type": "op", "rev": rev, "op": ["s", rev] if rev else ["s"], "id": f"s{k}-{i}"}))
            while True:
                msg = await it.__anext__()
                if msg.get("type") in ("ack", "op"):
                    rev = last = max(last, msg["rev"])
                    if msg.get("type") == "ack":
                        break
        w.close()
        return last

    revs = [await one(k, n // 4) for k in range(4)]
    return max(revs)


async def oversized(port: int, seconds: float) -> dict:
    """Frames announcing 64 MiB; payload sent in 256 KiB chunks until the server closes (4 at a time)."""
    stats = {"connections": 0, "refused": 0, "bytes_sent_before_close": []}
    end = time.monotonic() + seconds
    chunk = os.urandom(256 * 1024)

    async def loop() -> None:
        while time.monotonic() < end:
            conn = await ws_open(port, "127.0.0.6", "big", timeout=2)
            if conn is None:
                stats["refused"] += 1
                await asyncio.sleep(0.1)
                continue
            stats["connections"] += 1
            r, w = conn
            closed = asyncio.ensure_future(r.read(1 << 16))  # the server's close frame, or EOF
            sent = 0
            try:
                w.write(frame(1, b"", length=64 << 20))
                while sent < (64 << 20) and time.monotonic() < end and not closed.done():
                    w.write(chunk)
                    await asyncio.wait_for(w.drain(), 5)
                    sent += len(chunk)
            except (OSError, RuntimeError, asyncio.TimeoutError):
                pass
            stats["bytes_sent_before_close"].append(sent)
            closed.cancel()
            w.transport.abort()

    await asyncio.gather(*(loop() for _ in range(4)))
    sizes = sorted(stats.pop("bytes_sent_before_close"))
    stats["median_mib_sent_before_close"] = round(sizes[len(sizes) // 2] / 2**20, 2) if sizes else None
    return stats


async def fragments(port: int, seconds: float) -> dict:
    """40 connections, each 7.5 MiB of a fragmented text message and never the final fragment."""
    stats = {"connections": 0, "refused": 0, "closed_by_server": 0}
    end = time.monotonic() + seconds
    piece = b"x" * (512 * 1024)
    held = []

    async def one(i: int) -> None:
        conn = await ws_open(port, f"127.0.0.{20 + i % 4}", "frag", timeout=5)
        if conn is None:
            stats["refused"] += 1
            return
        stats["connections"] += 1
        r, w = conn
        held.append(w)
        try:
            for k in range(15):  # 15 x 512 KiB = 7.5 MiB, FIN never set
                w.write(frame(1 if k == 0 else 0, piece, fin=False))
                await asyncio.wait_for(w.drain(), 10)
        except (OSError, RuntimeError, asyncio.TimeoutError):
            pass
        try:
            await asyncio.wait_for(r.read(1 << 16), max(0.1, end - time.monotonic()))
            stats["closed_by_server"] += 1  # the server sends nothing but its close frame (or EOF)
        except (ConnectionResetError, BrokenPipeError):  # it stopped reading what followed its close
            stats["closed_by_server"] += 1
        except (OSError, asyncio.TimeoutError):
            pass

    await asyncio.gather(*(one(i) for i in range(40)))
    for w in held:
        w.transport.abort()
    return stats


async def puts(port: int, seconds: float) -> dict:
    """8 concurrent 50 MB PUTs, repeated until the deadline."""
    stats = {"requests": 0, "statuses": {}, "mb_sent": 0.0}
    end = time.monotonic() + seconds
    size = 50 * 1000 * 1000
    chunk = b"a" * (1 << 20)

    async def loop(i: int) -> None:
        while time.monotonic() < end:
            try:
                r, w = await open_from(port, "127.0.0.9")
            except OSError:
                await asyncio.sleep(0.05)
                continue
            stats["requests"] += 1
            w.write(f"PUT /api/docs/put{i}/text HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
                    f"Content-Length: {size}\r\n\r\n".encode())
            sent = 0
            try:  # the whole body, unless the server closes the connection first
                while sent < size and time.monotonic() < end:
                    w.write(chunk[:min(len(chunk), size - sent)])
                    await asyncio.wait_for(w.drain(), 5)
                    sent += min(len(chunk), size - sent)
            except (OSError, RuntimeError, asyncio.TimeoutError):
                pass
            try:  # a response sent before the connection closed is still there to read
                status = (await asyncio.wait_for(r.readline(), max(0.5, end - time.monotonic()))).split(b" ")[1:2]
                code = status[0].decode() if status else "none"
            except (OSError, RuntimeError, asyncio.TimeoutError):
                code = "reset"
            stats["statuses"][code] = stats["statuses"].get(code, 0) + 1
            stats["mb_sent"] += sent / 1e6
            w.transport.abort()
            await asyncio.sleep(0.5)  # 16 requests/s in all: a body attack, not a connection flood

    await asyncio.gather(*(loop(i) for i in range(8)))
    stats["mb_sent"] = round(stats["mb_sent"])
    return stats


async def connection_flood(port: int, seconds: float, cap: int) -> dict:
    """200 addresses open WebSockets (ceil(cap/200)+10 each, round robin) and hold them."""
    per = -(-cap // 200) + 10
    stats = {"held": 0, "refused": 0, "addresses": 200}
    end = time.monotonic() + seconds
    held: list[asyncio.StreamWriter] = []
    sem = asyncio.Semaphore(256)

    async def one(src: str) -> None:
        async with sem:
            if time.monotonic() >= end:
                return
            conn = await ws_open(port, src, "crowd", timeout=10)
        if conn is None:
            stats["refused"] += 1
        else:
            stats["held"] += 1
            held.append(conn[1])

    srcs = [f"127.0.{1 + a // 200}.{10 + a % 200}" for a in range(200)]
    await asyncio.gather(*(one(s) for _ in range(per) for s in srcs))
    print(json.dumps({"event": "flood_up", **stats}), flush=True)
    await asyncio.sleep(max(0.0, end - time.monotonic()))
    for w in held:
        w.transport.abort()
    return stats


async def slow_readers(port: int, seconds: float) -> dict:
    """20 addresses join a busy document and never read; a writer sends 60 KB ops to it."""
    stats = {"readers": 0, "writer_acks": 0, "writer_waits_over_1s": 0}
    end = time.monotonic() + seconds
    readers = []
    for i in range(20):
        conn = await ws_open(port, f"127.0.4.{i + 1}", "busy", rcvbuf=4096)
        if conn is not None:
            conn[1].write(text_frame({"type": "join"}))
            readers.append(conn)
    stats["readers"] = len(readers)
    conn = await ws_open(port, "127.0.0.10", "busy")
    assert conn is not None, "writer refused"
    r, w = conn
    w.write(text_frame({"type": "join"}))
    it = messages(r).__aiter__()
    rev = (await it.__anext__())["rev"]
    length = 0
    chunk = "y" * 60_000
    acked = asyncio.Event()

    async def writer_reader() -> None:
        nonlocal rev, length
        async for msg in it:
            if msg.get("type") == "ack":
                rev, length = msg["rev"], len(chunk)
                stats["writer_acks"] += 1
                acked.set()
            elif msg.get("type") in ("error", "close"):
                stats.setdefault("writer_got", []).append(msg.get("code"))

    task = asyncio.create_task(writer_reader())
    while time.monotonic() < end and not task.done():  # 60 KB every 40 ms: 1.5 MB/s, within the byte budget
        acked.clear()
        # Each op replaces the document's 60 KB, so it stays under max_doc_chars.
        w.write(text_frame({"type": "op", "rev": rev, "op": [-length, chunk] if length else [chunk], "id": f"w{rev}"}))
        t0 = time.monotonic()
        try:
            await asyncio.wait_for(acked.wait(), max(0.1, end - t0))
        except asyncio.TimeoutError:
            pass
        stats["writer_waits_over_1s"] += time.monotonic() - t0 > 1.0
        await asyncio.sleep(0.04)
    task.cancel()
    for _, ww in readers:
        ww.transport.abort()
    w.transport.abort()
    return stats


def run_attack(name: str, port: int, seconds: float, cap: int) -> None:
    """Attack process entry: run ``name`` and print its stats as one JSON line."""
    import uvloop

    async def main() -> dict:
        if name == "none":
            await asyncio.sleep(seconds)
            return {}
        if name == "flood":
            return await reconnect_flood(port, seconds, 0)
        if name == "flood700":
            return await reconnect_flood(port, seconds, 700)
        if name == "oversized":
            return await oversized(port, seconds)
        if name == "fragments":
            return await fragments(port, seconds)
        if name == "puts":
            return await puts(port, seconds)
        if name == "connections":
            return await connection_flood(port, seconds, cap)
        if name == "slow":
            return await slow_readers(port, seconds)
        raise SystemExit(f"unknown attack {name}")

    print(json.dumps({"event": "done", **uvloop.run(main())}), flush=True)


# --------------------------------------------------------------------------
# Server process


def serve(spec: dict) -> None:
    """Server process entry: the real app on an ephemeral port; prints ``PORT n``."""
    import uvloop

    from collab import server
    from collab.config import Settings

    settings = Settings(**spec)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(4096)
    server.tune_gc()

    async def main() -> None:
        if os.environ.get("GUARD_BENCH_LAG"):
            _watch_lag(float(os.environ["GUARD_BENCH_LAG"]))
        started = asyncio.Event()
        task = asyncio.create_task(server.serve(settings, sockets=[sock], started=started))
        await started.wait()
        print(f"PORT {sock.getsockname()[1]}", flush=True)
        await task

    uvloop.run(main())


def _watch_lag(threshold_ms: float) -> None:
    """Print (to stderr) every loop turn, garbage collection and commit fsync longer than ``threshold_ms``."""
    import gc

    from collab.store.sqlite import SqliteStore

    synced = SqliteStore._synced

    def timed_synced(store: SqliteStore, *args: Any) -> None:  # diagnostics only: the store's own method, timed
        since = store._sync_since
        if since is not None and (ms := (time.monotonic() - since) * 1e3) > threshold_ms:
            print(f"lag {time.time():.3f} fsync took {ms:.1f} ms", file=sys.stderr, flush=True)
        synced(store, *args)

    SqliteStore._synced = timed_synced  # type: ignore[method-assign]

    loop = asyncio.get_running_loop()
    gc_start = [0.0]

    def on_gc(phase: str, info: dict) -> None:
        if phase == "start":
            gc_start[0] = time.perf_counter()
        elif (ms := (time.perf_counter() - gc_start[0]) * 1e3) > threshold_ms:
            print(f"lag {time.time():.3f} gc gen{info['generation']} {ms:.1f} ms collected={info['collected']}",
                  file=sys.stderr, flush=True)

    gc.callbacks.append(on_gc)

    from collab.metrics import COUNTERS

    last = [0, 0, 0]

    def tick(due: float) -> None:  # a timer every 2 ms: how late it runs is how long the loop was busy
        now = time.perf_counter()
        seen = [COUNTERS.accepted_connections, COUNTERS.refused_crowded, COUNTERS.deferred_handshakes]
        if (ms := (now - due) * 1e3) > threshold_ms:
            print(f"lag {time.time():.3f} turn late by {ms:.1f} ms; since the last tick: accepted "
                  f"{seen[0] - last[0]}, refused {seen[1] - last[1]}, deferred {seen[2] - last[2]}",
                  file=sys.stderr, flush=True)
        last[:] = seen
        loop.call_later(0.002, tick, now + 0.002)

    loop.call_later(0.002, tick, time.perf_counter() + 0.002)


def sink() -> None:
    """Control server: answers any request with 413 and reads and drops everything; prints ``PORT n``."""
    import uvloop

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 413 Request Entity Too Large\r\ncontent-length: 0\r\n\r\n")
        try:
            while await r.read(1 << 16):
                pass
        except OSError:
            pass
        w.close()

    async def main() -> None:
        srv = await asyncio.start_server(handle, "127.0.0.1", 0)
        print(f"PORT {srv.sockets[0].getsockname()[1]}", flush=True)
        await srv.serve_forever()

    uvloop.run(main())


# --------------------------------------------------------------------------
# The orchestration


ATTACKS = [
    ("none", "(control: no attack)"),
    ("flood", "reconnect flood (1 address)"),
    ("flood700", "reconnect flood, ops 700 revs behind"),
    ("oversized", "oversized frames (64 MiB announced)"),
    ("fragments", "40 unfinished 7.5 MiB fragmented messages"),
    ("puts", "8 concurrent 50 MB PUTs"),
    ("connections", "200-address connection flood to the cap"),
    ("slow", "slow-reader crowd (20 addresses)"),
]


@dataclass
class Row:
    name: str
    p50_before: float = 0.0
    p50_during: float = 0.0
    p99_before: float = 0.0
    p99_during: float = 0.0
    polite_errors: int = 0
    rss_during: float = 0.0
    rss_after: float = 0.0
    server_cpu: float = 0.0
    attacker_cpu: float = 0.0
    quiet: str = ""
    attacker: dict = field(default_factory=dict)
    ops_per_s: float = 0.0
    guard: dict = field(default_factory=dict)
    #: The server's commit fsyncs during the attack: how many, how many over 50 ms, and the slowest's bucket.
    syncs: tuple[int, int, float] = (0, 0, 0.0)


class Bench:
    """The server, the polite client and the RSS sampler, with time-stamped records."""

    def __init__(self, cap: int) -> None:
        import psutil

        self.data = tempfile.TemporaryDirectory(prefix="guard-bench-")
        spec = {"data_dir": self.data.name, "max_connections": cap, "log_level": "error"}
        self.server = subprocess.Popen([sys.executable, __file__, "--serve", json.dumps(spec)],
                                       stdout=subprocess.PIPE, text=True)
        line = self.server.stdout.readline()
        if not line.startswith("PORT "):
            self.server.kill()
            raise SystemExit(f"benchmark server did not start (got {line!r})")
        self.port = int(line.split()[1])
        self.ps = psutil.Process(self.server.pid)
        self.server_cpu = lambda: sum(self.ps.cpu_times()[:2])
        self.polite_lines: list[tuple[float, str]] = []
        self.rss: list[tuple[float, int]] = []
        self.stop = threading.Event()
        self.polite = subprocess.Popen([sys.executable, __file__, "--polite", str(self.port)],
                                       stdout=subprocess.PIPE, text=True)
        threading.Thread(target=self._read_polite, daemon=True).start()
        threading.Thread(target=self._sample_rss, daemon=True).start()

    def _read_polite(self) -> None:
        for line in self.polite.stdout:
            t, _, rest = line.strip().partition(" ")
            self.polite_lines.append((float(t), rest))

    def _sample_rss(self) -> None:
        while not self.stop.wait(0.05):
            try:
                self.rss.append((time.time(), self.ps.memory_info().rss))
            except Exception:  # noqa: BLE001 - the server is gone
                return

    def latency(self, t0: float, t1: float) -> tuple[float, float, int]:
        """The polite client's (p50, p99) ack latency in ms between ``t0`` and ``t1``, and its errors."""
        lats = sorted(float(x) for t, x in self.polite_lines if t0 <= t < t1 and not x.startswith("ERR"))
        errors = sum(1 for t, x in self.polite_lines if t0 <= t < t1 and x.startswith("ERR"))
        if not lats:
            return float("nan"), float("nan"), errors

        def rank(q: float) -> float:  # nearest rank
            return lats[max(0, math.ceil(len(lats) * q) - 1)]

        return rank(0.5), rank(0.99), errors

    def rss_at(self, t: float) -> int:
        before = [v for ts, v in self.rss if ts <= t]
        return before[-1] if before else self.ps.memory_info().rss

    def rss_max(self, t0: float, t1: float) -> int:
        vals = [v for ts, v in self.rss if t0 <= ts <= t1]
        return max(vals) if vals else 0

    def counters(self) -> dict[str, float]:
        """The server's ``*_total`` counters and its commit-fsync histogram buckets, from ``GET /metrics``."""
        return {name: value for name, value in read_metrics(self.port).items()
                if name.endswith("_total") or name.startswith("collab_store_sync_seconds_bucket")}

    def close(self) -> None:
        self.stop.set()
        for proc in (self.polite, self.server):
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.data.cleanup()


def attack_round(bench: Bench, name: str, label: str, args: argparse.Namespace) -> Row:
    """A quiet window, the attack (with the quiet address's join half-way) and an after window."""
    row = Row(label)
    time.sleep(args.warmup)  # the server's and the polite client's first edits are not the baseline
    t_quiet = time.time()
    time.sleep(args.quiet)
    t0 = time.time()
    c0 = bench.counters()
    rss0 = bench.rss_at(t0)
    server_cpu0, attacker_cpu0 = bench.server_cpu(), _children_cpu()
    target = bench.port if args.sink is None else args.sink
    proc = subprocess.Popen(["nice", "-n", "10", sys.executable, __file__, "--run-attack", name, str(target),
                             str(args.attack), str(args.max_connections)], stdout=subprocess.PIPE, text=True)
    lines: list[dict] = []
    up = threading.Event()

    def read() -> None:
        for line in proc.stdout:
            msg = json.loads(line)
            lines.append(msg)
            if msg.get("event") == "flood_up":
                up.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    if name == "connections":
        up.wait(args.attack)
    else:
        time.sleep(args.attack / 2)
    row.quiet = asyncio.run(quiet_join(bench.port))
    try:
        proc.wait(args.attack + 60)
    except subprocess.TimeoutExpired:
        proc.kill()
    reader.join(5)
    t1 = time.time()
    c1 = bench.counters()
    row.server_cpu = (bench.server_cpu() - server_cpu0) / (t1 - t0) * 100
    row.attacker_cpu = (_children_cpu() - attacker_cpu0) / (t1 - t0) * 100
    time.sleep(args.after)
    t2 = time.time()
    row.p50_before, row.p99_before, _ = bench.latency(t_quiet, t0)
    row.p50_during, row.p99_during, row.polite_errors = bench.latency(t0, t1)
    if args.worst:
        worst = sorted(((float(x), t - t0) for t, x in bench.polite_lines
                        if t0 <= t < t1 and not x.startswith("ERR")), reverse=True)[:args.worst]
        print(f"{name}: attack ran {t1 - t0:.1f} s from {t0:.3f}; slowest polite edits (ms at +s): "
              + ", ".join(f"{ms:.1f} at +{at:.1f}" for ms, at in worst), file=sys.stderr, flush=True)
    row.rss_during = (bench.rss_max(t0, t1) - rss0) / 1e6
    row.rss_after = (bench.rss_at(t2) - rss0) / 1e6
    row.attacker = next((m for m in lines if m.get("event") == "done"), {})
    row.attacker.pop("event", None)
    ops = "collab_ops_applied_total"
    row.ops_per_s = max(0.0, (c1.get(ops, 0) - c0.get(ops, 0)) / (t1 - t0) - 10)  # minus the polite client's 10/s
    row.guard = {k.removeprefix("collab_guard_").removesuffix("_total"): int(v - c0.get(k, 0))
                 for k, v in c1.items() if k.startswith("collab_guard_") and v != c0.get(k, 0)}
    row.syncs = _syncs(c0, c1)
    return row


def _syncs(c0: dict[str, float], c1: dict[str, float]) -> tuple[int, int, float]:
    """Fsyncs between two scrapes: how many, how many over 50 ms, and the upper bound of the slowest's bucket."""
    prefix = 'collab_store_sync_seconds_bucket{le="'
    cumulative = sorted((float(k[len(prefix):-2]), v - c0.get(k, 0)) for k, v in c1.items() if k.startswith(prefix))
    if not cumulative:
        return 0, 0, 0.0
    total = int(cumulative[-1][1])
    under_50ms = int(next((n for le, n in cumulative if le >= 0.05), total))
    slowest = next((le for le, n in cumulative if n >= total), 0.0)
    return total, total - under_50ms, slowest


def table(rows: list[Row], args: argparse.Namespace, load: tuple[float, float], cpu: float) -> str:
    cmd = "python benchmarks/guard_bench.py" + "".join(
        f" --{k.replace('_', '-')} {v:g}" for k, v in (("attack", args.attack), ("quiet", args.quiet))) + \
        f" --max-connections {args.max_connections}"
    lines = [
        f"`{cmd}` on {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load average {load[0]:.1f} before, {load[1]:.1f} "
        f"after; other processes used {cpu:.0f}% of the machine's CPU during the run (noise).",
        "",
        "| attack | polite p50, p99 before → during (ms) | p99 ratio | RSS +MB during / after | quiet address got in "
        "| CPU % server / attacker | attacker ops/s applied | fsyncs, > 50 ms, slowest ≤ ms | server counters "
        "| attacker saw |",
        "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | --- | --- |",
    ]
    for r in rows:
        ratio = r.p99_during / r.p99_before if r.p99_before else float("nan")
        errs = f", {r.polite_errors} polite errors" if r.polite_errors else ""
        lines.append(f"| {r.name} | {r.p50_before:.1f}, {r.p99_before:.1f} → {r.p50_during:.1f}, "
                     f"{r.p99_during:.1f}{errs} | {ratio:.1f}x | "
                     f"{r.rss_during:+.0f} / {r.rss_after:+.0f} | {r.quiet} | "
                     f"{r.server_cpu:.0f} / {r.attacker_cpu:.0f} | {r.ops_per_s:.0f} | "
                     f"{r.syncs[0]}, {r.syncs[1]}, {r.syncs[2] * 1000:g} | "
                     f"{_brief(r.guard)} | {_brief(r.attacker)} |")
    return "\n".join(lines)


def _brief(d: dict) -> str:
    return " ".join(f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in d.items()) or "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--attack", type=float, default=30.0, help="seconds each attack runs (10 polite edits a "
                        "second: the p99 of 300 edits is their 3rd slowest)")
    parser.add_argument("--quiet", type=float, default=15.0, help="seconds of quiet before each attack (the "
                        "baseline: 150 edits)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds after each server starts that "
                        "belong to neither window")
    parser.add_argument("--after", type=float, default=3.0, help="seconds after each attack before RSS is read")
    from collab.config import Settings

    parser.add_argument("--max-connections", type=int, default=Settings().max_connections,
                        help="the server's global connection cap (default: the server's default)")
    parser.add_argument("--worst", type=int, default=0, help="also print this many slowest polite edits "
                        "of each attack, with when they happened (to stderr)")
    parser.add_argument("--only", nargs="*", help="run only these attacks: " + " ".join(n for n, _ in ATTACKS))
    parser.add_argument("--sink", type=int, help="send the attacks to this port instead (a control: the "
                        "machine's contention without the server's work), e.g. a `--sink-serve` process")
    parser.add_argument("--sink-serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--polite", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve(json.loads(args.serve))
    if args.sink_serve:
        return sink()
    if args.polite:
        import uvloop

        return uvloop.run(polite(int(args.polite)))
    import psutil

    load0 = os.getloadavg()[0]
    cpu0, own0, t_start = psutil.cpu_times(), _own_cpu(), time.time()
    rows = []
    for name, label in ATTACKS:  # each attack against a fresh server, so none inherits another's memory
        if args.only and name not in args.only:
            continue
        bench = Bench(args.max_connections)
        try:
            if name == "flood700":
                asyncio.run(seed(bench.port, "deep", 800))
            rows.append(attack_round(bench, name, label, args))
        finally:
            bench.close()
        print(table(rows[-1:], args, (load0, os.getloadavg()[0]), 0.0).splitlines()[-1], file=sys.stderr)
    cpu1, own1, t_end = psutil.cpu_times(), _own_cpu(), time.time()
    busy = (sum(cpu1) - cpu1.idle - cpu1.iowait) - (sum(cpu0) - cpu0.idle - cpu0.iowait)
    others = max(0.0, busy - (own1 - own0)) / ((t_end - t_start) * (os.cpu_count() or 1)) * 100
    print(table(rows, args, (load0, os.getloadavg()[0]), others))


def _children_cpu() -> float:
    """CPU seconds of this process's finished (waited-for) children."""
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _own_cpu() -> float:
    """CPU seconds used so far by this process and its finished children (servers, polite clients, attackers)."""
    import psutil

    t = psutil.Process().cpu_times()
    return t.user + t.system + t.children_user + t.children_system


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--run-attack":
        run_attack(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]))
    else:
        main()
