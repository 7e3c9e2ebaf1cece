"""What one poll of the trash and the renamed names costs a process sharing PostgreSQL, by their size.

Every ``collab.revocation.POLL_SECONDS`` (4 times a second) each process of
a PostgreSQL deployment looks for what the others deleted, restored or
renamed (``collab.lifecycle.Trash.refresh``). The baseline is the read of
the whole trash and every renamed name, which every poll did before the
store kept a version of them; the measured row is a poll that finds that
version unchanged (the usual case: nothing was deleted or renamed since).
For each size, in one schema seeded with that many documents in the trash,
that many renamed names and ten times as many live documents, both are
timed in turn, in this process (its CPU and the wall time of the round
trips), and the poll's CPU per second of a process is derived.

    python benchmarks/trash_poll_bench.py --database-url postgresql://postgres@127.0.0.1:5432/test \\
        [--sizes 0,1000,10000] [--polls 200]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import time

import _common  # noqa: F401 (puts this checkout's collab first on sys.path)
from collab.lifecycle import Trash
from collab.revocation import POLL_SECONDS
from collab.store.postgres import PostgresStore


async def timed(fn, polls: int) -> tuple[float, float]:
    """Wall and CPU milliseconds per call of ``fn``, over ``polls`` calls (after a few to warm up)."""
    for _ in range(5):
        await fn()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(polls):
        await fn()
    return (time.perf_counter() - wall) / polls * 1000, (time.process_time() - cpu) / polls * 1000


async def measure(url: str, size: int, polls: int) -> dict:
    store = PostgresStore(url, schema=f"collab_bench_trash_{secrets.token_hex(4)}")
    await store.open()
    try:
        async with store.pool.acquire() as conn:
            await conn.execute("INSERT INTO collab_docs (id, rev, size, created, updated, deleted) "
                               "SELECT 'gone ' || g, 1, 10, 0, 0, g FROM generate_series(1, $1) g", size)
            await conn.execute("INSERT INTO collab_docs (id, rev, size, created, updated) "
                               "SELECT 'live ' || g, 1, 10, 0, 0 FROM generate_series(1, $1) g", 10 * size)
            await conn.execute("INSERT INTO collab_renames (old, new, renamed) "
                               "SELECT 'old ' || g, 'new ' || g, 0 FROM generate_series(1, $1) g", size)
            await conn.execute("ANALYZE")
        trash = Trash(store, 30, lambda doc: None)
        await trash.refresh()

        async def full_read() -> None:
            await store.trash()
            await store.renames()

        base_wall, base_cpu = await timed(full_read, polls)
        wall, cpu = await timed(trash.refresh, polls)
        return {"size": size, "base_wall": base_wall, "base_cpu": base_cpu, "wall": wall, "cpu": cpu}
    finally:
        await store.drop_schema()
        await store.close()


async def bench(args: argparse.Namespace) -> None:
    rows = [await measure(args.database_url, int(n), args.polls) for n in args.sizes.split(",")]
    per_second = 1 / POLL_SECONDS
    print(f"\n{args.polls} polls each; a process polls {per_second:g} times a second\n")
    print("| in the trash, and renamed | read everything: ms wall / CPU | poll, unchanged: ms wall / CPU "
          "| CPU ratio | a process's CPU at the poll's rate: before → after |")
    print("| ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        print(f"| {r['size']:,} | {r['base_wall']:.2f} / {r['base_cpu']:.2f} | {r['wall']:.2f} / {r['cpu']:.2f} "
              f"| {r['cpu'] / r['base_cpu']:.3f}x | {r['base_cpu'] * per_second / 10:.1f}% → "
              f"{r['cpu'] * per_second / 10:.2f}% of a core |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=os.environ.get("COLLAB_TEST_DATABASE_URL", ""))
    parser.add_argument("--sizes", default="0,1000,10000",
                        help="documents in the trash (and renamed names) to measure with, comma-separated")
    parser.add_argument("--polls", type=int, default=200, help="polls timed for each (default 200)")
    args = parser.parse_args()
    if not args.database_url:
        parser.error("pass --database-url (or set COLLAB_TEST_DATABASE_URL)")
    asyncio.run(bench(args))


if __name__ == "__main__":
    main()
