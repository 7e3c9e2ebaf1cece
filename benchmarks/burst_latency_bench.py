"""How long another process takes to show the last operation of a burst.

Two ``collab`` processes on one PostgreSQL and one Redis. Each round, writers
on both processes send a burst of operations to one document (so it is
contended: both processes commit to it), then the burst's last operation is
sent on process A alone. An observer connected to process B records when
that revision reaches it; the delay is measured from A's acknowledgement of
it. Prints the delays' median, 90th percentile and maximum, and how many
exceeded 1 s (a commit left to the periodic check rather than announced).

    python benchmarks/burst_latency_bench.py --database-url postgresql://postgres@127.0.0.1:5432/test \\
        --redis-url redis://127.0.0.1:6379/0 [--rounds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics

import websockets
from scaleout_bench import Server


class Observer:
    """A client that only reads: records when each revision reached it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.seen: dict[int, float] = {}
        self.rev = 0
        self.changed = asyncio.Event()

    async def run(self, ready: asyncio.Event) -> None:
        async with websockets.connect(self.url, max_size=None) as ws:
            await ws.send(json.dumps({"type": "join"}))
            loop = asyncio.get_running_loop()
            async for raw in ws:
                msg = json.loads(raw)
                if msg["type"] == "welcome":
                    self.rev = msg["rev"]
                    ready.set()
                elif msg["type"] == "op":
                    self.rev = msg["rev"]
                    self.seen[msg["rev"]] = loop.time()
                    self.changed.set()


class Writer:
    """A client with one operation in flight; :meth:`send` returns the revision and when it was acknowledged."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.rev = 0
        self.length = 0

    @classmethod
    async def connect(cls, url: str) -> "Writer":
        ws = await websockets.connect(url, max_size=None)
        await ws.send(json.dumps({"type": "join"}))
        w = cls(ws)
        while True:
            msg = json.loads(await ws.recv())
            if msg["type"] == "welcome":
                w.rev, w.length = msg["rev"], len(msg["text"])
                return w

    async def send(self) -> tuple[int, float]:
        op = ["🌍", self.length] if self.length else ["🌍"]
        await self.ws.send(json.dumps({"type": "op", "rev": self.rev, "op": op, "id": secrets.token_hex(6)}))
        while True:
            msg = json.loads(await self.ws.recv())
            if msg["type"] == "op":
                self.rev = msg["rev"]
                self.length += sum(len(c) for c in msg["op"] if isinstance(c, str))
            elif msg["type"] == "ack":
                self.rev = msg["rev"]
                self.length += 1
                return self.rev, asyncio.get_running_loop().time()
            elif msg["type"] == "error":
                raise RuntimeError(f"the server refused an op: {msg}")


async def drop_redis_keys(url: str, prefix: str) -> None:
    """Remove a run's Redis keys (presence left behind by a killed process, owner records)."""
    import redis.asyncio as aioredis

    r = aioredis.from_url(url)
    keys = [k async for k in r.scan_iter(match=f"{prefix}:*")]
    if keys:
        await r.delete(*keys)
    await r.aclose()


async def burst(writer: Writer, n: int) -> None:
    for _ in range(n):
        await writer.send()


async def bench(args: argparse.Namespace) -> None:
    tag = secrets.token_hex(4)
    schema = f"collab_burst_{tag}"
    sep = "&" if "?" in args.database_url else "?"
    rsep = "&" if "?" in args.redis_url else "?"
    env = {"DATABASE_URL": f"{args.database_url}{sep}schema={schema}",
           "REDIS_URL": f"{args.redis_url}{rsep}prefix=collab-burst-{tag}"}
    servers = [Server(env).start() for _ in range(2)]
    delays: list[float] = []
    try:
        a, b = (f"ws://127.0.0.1:{s.port}/ws/burst" for s in servers)
        writers_a = [await Writer.connect(a) for _ in range(args.writers)]
        writers_b = [await Writer.connect(b) for _ in range(args.writers)]
        observer = Observer(b)
        ready = asyncio.Event()
        watch = asyncio.create_task(observer.run(ready))
        await ready.wait()
        for _ in range(args.rounds):
            await asyncio.gather(*(burst(w, args.burst) for w in writers_a + writers_b))
            rev, acked = await writers_a[0].send()
            while rev not in observer.seen and observer.rev < rev:
                observer.changed.clear()
                await asyncio.wait_for(observer.changed.wait(), 60)
            delays.append(observer.seen.get(rev, acked) - acked)
            await asyncio.sleep(args.pause)
        watch.cancel()
    finally:
        for s in servers:
            s.stop()
        import asyncpg

        conn = await asyncpg.connect(args.database_url)
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()
        await drop_redis_keys(args.redis_url, f"collab-burst-{tag}")
    delays.sort()
    ms = [d * 1000 for d in delays]
    print(f"{args.rounds} bursts of {args.burst} ops x {2 * args.writers} writers on 2 processes; "
          f"the last op of each on process A, seen on process B (ms after A's ack):")
    print(f"median {statistics.median(ms):.1f}, p90 {ms[int(len(ms) * 0.9)]:.1f}, max {ms[-1]:.1f}, "
          f"over 1 s: {sum(1 for d in delays if d > 1)} of {len(delays)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=os.environ.get("COLLAB_TEST_DATABASE_URL", ""))
    parser.add_argument("--redis-url", default=os.environ.get("COLLAB_TEST_REDIS_URL", ""))
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--burst", type=int, default=10, help="ops per writer per burst (default 10)")
    parser.add_argument("--writers", type=int, default=2, help="writers per process (default 2)")
    parser.add_argument("--pause", type=float, default=0.2, help="seconds between bursts (default 0.2)")
    asyncio.run(bench(parser.parse_args()))


if __name__ == "__main__":
    main()
