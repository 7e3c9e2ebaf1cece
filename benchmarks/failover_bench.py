"""How long edits wait when a document's owner is killed: SIGKILL the owner, time the gap in acks.

Two ``collab`` processes on one PostgreSQL and one Redis. A writer on
process A opens the document first, so A owns it; a writer on process B
edits continuously (one operation in flight, each sent when the previous is
acknowledged), so its edits are forwarded to A. A is killed with SIGKILL;
B's writer keeps going. Reported per round: the longest wait between two
acks from the last one before the kill on, and that the document's text on
B has every acknowledged edit exactly once.

    python benchmarks/failover_bench.py --database-url postgresql://postgres@127.0.0.1:5432/test \\
        --redis-url redis://127.0.0.1:6379/0 [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import urllib.request

from burst_latency_bench import Writer, drop_redis_keys
from scaleout_bench import Server


async def one_round(args: argparse.Namespace, n: int) -> float:
    tag = secrets.token_hex(4)
    schema = f"collab_failover_{tag}"
    sep = "&" if "?" in args.database_url else "?"
    rsep = "&" if "?" in args.redis_url else "?"
    env = {"DATABASE_URL": f"{args.database_url}{sep}schema={schema}",
           "REDIS_URL": f"{args.redis_url}{rsep}prefix=collab-failover-{tag}"}
    a, b = Server(env).start(), Server(env).start()
    try:
        owner = await Writer.connect(f"ws://127.0.0.1:{a.port}/ws/fo")
        await owner.send()  # process A loads the document first: it owns it
        writer = await Writer.connect(f"ws://127.0.0.1:{b.port}/ws/fo")
        loop = asyncio.get_running_loop()
        acks: list[float] = []
        killed_at = 0.0

        async def write() -> None:
            while not killed_at or loop.time() < killed_at + args.after:
                acks.append((await writer.send())[1])

        task = asyncio.create_task(write())
        await asyncio.sleep(args.before)
        a.proc.kill()
        killed_at = loop.time()
        await asyncio.wait_for(task, 60)
        # The edit in flight at the kill may have been committed just before it; the wait can fall on a later one.
        around = [max(t for t in acks if t <= killed_at)] + [t for t in acks if t > killed_at]
        gap, after = max((later - earlier, later) for earlier, later in zip(around, around[1:]))
        with urllib.request.urlopen(f"http://127.0.0.1:{b.port}/api/docs/fo", timeout=10) as resp:
            body = json.loads(resp.read())
        # Every writer inserts one 🌍 per acknowledged edit: the text counts them.
        assert body["text"] == "🌍" * (len(acks) + 1), (len(body["text"]), len(acks) + 1)
        print(f"round {n}: {len(acks)} edits on B, longest wait for an ack from the kill on {gap * 1000:.0f} ms "
              f"(ending {1000 * (after - killed_at):.0f} ms after the kill); text exact")
        await writer.ws.close()
        return gap
    finally:
        a.stop()
        b.stop()
        import asyncpg

        conn = await asyncpg.connect(args.database_url)
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()
        await drop_redis_keys(args.redis_url, f"collab-failover-{tag}")


async def bench(args: argparse.Namespace) -> None:
    gaps = [await one_round(args, n + 1) for n in range(args.rounds)]
    ms = sorted(g * 1000 for g in gaps)
    print(f"longest wait for an ack from the kill on: median {statistics.median(ms):.0f} ms, max {ms[-1]:.0f} ms "
          f"over {args.rounds} rounds")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=os.environ.get("COLLAB_TEST_DATABASE_URL", ""))
    parser.add_argument("--redis-url", default=os.environ.get("COLLAB_TEST_REDIS_URL", ""))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--before", type=float, default=2.0, help="seconds of editing before the kill")
    parser.add_argument("--after", type=float, default=3.0, help="seconds of editing after the kill")
    asyncio.run(bench(parser.parse_args()))


if __name__ == "__main__":
    main()
