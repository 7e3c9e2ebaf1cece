"""History (issue 23): what recording every revision with its author and time costs, and reading it back.

In one command:

1. **Per-edit cost, with vs without.** The automerge-paper trace (259,778
   edits) through the hub's submit path (``trace_replay.hub_replay``: a
   named writer, two watchers), on the memory store and on SQLite
   (``synchronous=FULL``), by the code of ``--base`` (default: the commit
   before history, whose log is compacted behind snapshots) and by this
   tree (every op kept with author and commit time, checkpoints, sessions).
   Each tree runs in its own process (``git archive`` of the base, as
   ``compare_commits.py`` does), alternating for ``--rounds``; the best of
   each is kept, and the ratio is this tree / base.
2. **Storage.** Bytes per edit once the trace's ops are appended to the
   store as the hub commits them (batches, snapshots at its pace): the
   SQLite file's pages in use, and the PostgreSQL tables with their indexes
   and TOAST (``--database-url`` or ``COLLAB_TEST_DATABASE_URL``), base vs
   this tree.
3. **Reading history** on the replayed document (this tree), with every
   commit its own editing session (the most sessions the replay can make):
   the text at random revisions, pages of the revision list, and
   authorship. SQLite's history upkeep (packing, authorship at checkpoints),
   which a store runs by itself once idle, is run to the end first and
   timed; storage is given as written and after it.

    python benchmarks/history_bench.py --database-url ""    # about 2 minutes
    python benchmarks/history_bench.py                      # with PostgreSQL storage (COLLAB_TEST_DATABASE_URL):
                                                            # about 20 minutes, 10 of them the base's appends
    python benchmarks/history_bench.py --limit 50000 --rounds 1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
VARIANTS = [("memory", 1), ("memory", 64), ("sqlite", 64), ("sqlite", 256)]


# -- one tree's replays, in a process of its own -------------------------------------------------


def worker(tree: str, limit: int | None, database_url: str) -> dict:
    """Time each variant with ``tree``'s code; measure its SQLite and PostgreSQL storage."""
    sys.path.insert(0, str(Path(tree) / "benchmarks"))
    import trace_replay as tr  # noqa: E402  (tree's, which puts tree/src first on sys.path)
    from _common import load_trace  # noqa: E402

    from collab.server import tune_gc
    from collab.store.memory import MemoryStore
    from collab.store.sqlite import SqliteStore

    tune_gc()
    p = tr.prepare(load_trace("automerge-paper").limited(limit))
    out: dict = {"edits": len(p.ops), "seconds": {}}
    with tempfile.TemporaryDirectory(prefix="collab-hist-") as tmp:
        for kind, window in VARIANTS:
            path = str(Path(tmp) / f"{window}.sqlite3")

            async def one() -> tuple[float, str, int]:
                store = MemoryStore() if kind == "memory" else SqliteStore(path)
                await store.open()
                try:
                    return await tr.hub_replay(store, p, window, 2)
                finally:
                    await store.close()

            seconds, text, _ = tr.run_async(one)
            tr.check(f"{kind} w={window}", text, p.end)
            out["seconds"][f"{kind} w={window}"] = seconds
        path = str(Path(tmp) / "stored.sqlite3")
        tr.run_async(lambda: _stored(SqliteStore(path), p))
        out["sqlite_bytes_written"], out["sqlite_tables_written"] = _sqlite_size(path)
        upkeep = tr.run_async(lambda: _upkeep(SqliteStore(path)))
        out["upkeep_seconds"], out["upkeep_ops"] = upkeep[0], upkeep[2]
        out["sqlite_bytes"], out["sqlite_tables"] = _sqlite_size(path)
        if database_url:
            out["postgres_bytes"] = tr.run_async(lambda: _postgres(p, database_url))[0]
    return out


def _sqlite_size(path: str) -> tuple[int, dict[str, int]]:
    """The file's pages in use, in bytes, and bytes per table (with its indexes) where SQLite can tell."""
    db = sqlite3.connect(path)
    try:
        (pages,), (free,), (size,) = (db.execute(f"PRAGMA {q}").fetchone() for q in ("page_count", "freelist_count", "page_size"))
        try:
            tables = dict(db.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name").fetchall())
        except sqlite3.OperationalError:  # built without dbstat
            tables = {}
    finally:
        db.close()
    return (pages - free) * size, tables


async def _upkeep(store) -> tuple[float, str, int]:
    """The store's history upkeep run to the end (what an idle store does by itself), timed; a tree
    without it (the base) does nothing."""
    await store.open()
    try:
        if not hasattr(store, "maintain"):
            return 0.0, "", 0
        t0 = time.perf_counter()
        packed = await store.maintain()
        return time.perf_counter() - t0, "", packed
    finally:
        await store.close()


async def _stored(store, p, batch: int = 64) -> tuple[float, str, int]:
    """Append the trace's ops to ``store`` as the hub would commit them (batches, snapshots at its pace)."""
    from collab.doctext import DocText
    from collab.store import StoredOp

    await store.open()
    try:
        text, last_snapshot, ops = DocText(p.start), 0, []
        client = secrets.token_hex(6)
        for i, op in enumerate(p.ops):
            text.apply(op)
            ops.append(StoredOp(i + 1, op, client, p.ids[i]))
            if len(ops) == batch or i + 1 == len(p.ops):
                due = i + 1 - last_snapshot >= max(1000, len(text) // 256)
                if due:
                    last_snapshot = i + 1
                await store.append("bench", ops, len(text), (i + 1, str(text)) if due else None)
                ops = []
    finally:
        await store.close()
    return 0.0, "", 0


async def _postgres(p, url: str) -> tuple[float, str, int]:
    from collab.store.postgres import PostgresStore

    schema = f"collab_bench_{secrets.token_hex(4)}"
    await _stored(PostgresStore(url, schema=schema), p, batch=1024)  # fewer round trips: rows are per op anyway
    store = PostgresStore(url, schema=schema)
    await store.open()
    try:
        if hasattr(store, "maintain"):
            await store.maintain()
        async with store.pool.acquire() as conn:
            await conn.execute("VACUUM ANALYZE")
            size = await conn.fetchval(
                "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = $1 AND c.relkind = 'r' AND c.relname LIKE 'collab_%'", schema)
        return float(size), "", 0
    finally:
        await store.drop_schema()
        await store.close()


def _before_history(repo: Path) -> str:
    """The commit before the one that added ``src/collab/store/history.py``."""
    added = subprocess.run(["git", "-C", str(repo), "log", "--diff-filter=A", "--format=%H", "--",
                            "src/collab/store/history.py"], check=True, capture_output=True, text=True).stdout.split()
    if not added:
        raise SystemExit("no commit adds src/collab/store/history.py here: pass --base")
    return added[-1] + "^"


def run_worker(tree: Path, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, str(HERE / "history_bench.py"), "--worker", str(tree)]
    if args.limit:
        cmd += ["--limit", str(args.limit)]
    if args.database_url:
        cmd += ["--database-url", args.database_url]
    env = {**os.environ}
    env.setdefault("COLLAB_TRACES", str(_traces()))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(tree))
    if proc.returncode != 0:
        raise SystemExit(f"the replay of {tree} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _traces() -> Path:
    sys.path.insert(0, str(HERE))
    from _common import traces_dir

    return traces_dir()


# -- reading history back (this tree) ------------------------------------------------------------


def reads(limit: int | None, samples: int) -> list[list]:
    """Latency of text_at, sessions and authorship on the replayed document, memory and SQLite."""
    sys.path.insert(0, str(HERE))
    import trace_replay as tr
    from _common import load_trace

    from collab.server import tune_gc

    p = tr.prepare(load_trace("automerge-paper").limited(limit))
    tune_gc()  # as the server does after starting: the trace held here is not traversed by every collection
    rows: list[list] = []
    with tempfile.TemporaryDirectory(prefix="collab-hist-") as tmp:
        for kind in ("memory", "sqlite"):
            rows.extend(asyncio.run(_reads(kind, str(Path(tmp) / "h.sqlite3"), tr, p, samples)))
    return rows


async def _reads(kind: str, path: str, tr, p, samples: int) -> list[list]:
    from _common import median, percentile

    from collab.store.memory import MemoryStore
    from collab.store.sqlite import SqliteStore

    n = len(p.ops)
    revs = [random.Random(23 + k).randint(0, n) for k in range(samples)]
    store = MemoryStore(session_gap=-1) if kind == "memory" else SqliteStore(path, session_gap=-1)
    await store.open()
    await tr.hub_replay(store, p, 256, 0)
    rows = []
    if kind == "sqlite":  # upkeep as when idle, then reopened: nothing cached
        t0 = time.perf_counter()
        await store.maintain()
        rows.append([kind, "upkeep after the replay (pack, runs), whole", 1, (time.perf_counter() - t0) * 1000, 0, 0])
        await store.close()
        store = SqliteStore(path)
        await store.open()

    async def timed(label: str, calls: list) -> None:
        ms = []
        for call in calls:
            t0 = time.perf_counter()
            await call()
            ms.append((time.perf_counter() - t0) * 1000)
        rows.append([kind, label, len(ms), median(ms), percentile(ms, 95), max(ms)])

    try:
        await timed("text at a random revision", [lambda r=r: store.text_at(tr.DOC, r) for r in revs])
        sessions = len(await store.sessions(tr.DOC, None, 1000))
        await timed(f"revisions, 50 before a random revision ({sessions:,}+ sessions)",
                    [lambda r=r: store.sessions(tr.DOC, r, 50) for r in revs])
        await timed("authorship at the head, first call", [lambda: store.authorship(tr.DOC, n)])
        await timed("authorship at a random revision, after it", [lambda r=r: store.authorship(tr.DOC, r) for r in revs])
    finally:
        await store.close()
    return rows


# -- the command -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default=None,
                    help="the commit without history (default: the parent of the commit that added store/history.py)")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds; the best of each tree is kept")
    ap.add_argument("--limit", type=int, default=None, help="replay only the first N edits")
    ap.add_argument("--samples", type=int, default=30, help="random revisions read per measure")
    ap.add_argument("--database-url", default=os.environ.get("COLLAB_TEST_DATABASE_URL", ""),
                    help="PostgreSQL for the storage measure (default: COLLAB_TEST_DATABASE_URL; empty: skipped)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.limit, args.database_url)))
        return
    sys.path.insert(0, str(HERE))
    from _common import REPO, machine, table

    base = args.base or _before_history(REPO)
    print(f"machine: {machine()}")
    print(f"command: python benchmarks/history_bench.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    base = subprocess.run(["git", "-C", str(REPO), "rev-parse", base], check=True, capture_output=True,
                          text=True).stdout.strip()
    print(f"base: {base[:10]}\n")
    with tempfile.TemporaryDirectory(prefix="collab-base-") as tmp:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", base], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        results: dict[str, list[dict]] = {"base": [], "history": []}
        for _ in range(args.rounds):
            results["base"].append(run_worker(Path(tmp), args))
            results["history"].append(run_worker(REPO, args))
    edits = results["history"][0]["edits"]
    rows = []
    for kind, window in VARIANTS:
        label = f"{kind} w={window}"
        best = {t: min(r["seconds"][label] for r in runs) / edits * 1e6 for t, runs in results.items()}
        rows.append([label, best["base"], best["history"], best["history"] / best["base"]])
    print(f"Per-edit cost, automerge-paper ({edits:,} edits), µs per edit, best of {args.rounds}:\n")
    print(table(["store, writer window", "base", "with history", "× base"], rows))
    rows = []
    for key, label in (("sqlite_bytes_written", "SQLite (pages in use), as written"),
                       ("sqlite_bytes", "SQLite (pages in use), after upkeep"),
                       ("postgres_bytes", "PostgreSQL (tables, indexes, TOAST)")):
        if key in results["history"][0]:
            b = results["base"][0].get(key, results["base"][0].get("sqlite_bytes", 0)) / edits
            h = results["history"][0][key] / edits
            rows.append([label, b, h, h / b])
    print("\nStorage after the replay, bytes per edit:\n")
    print(table(["store", "base", "with history", "× base"], rows))
    for key in ("sqlite_tables_written", "sqlite_tables"):
        tables = results["history"][0].get(key) or {}
        print(f"\n{key}, bytes per edit: " + ", ".join(f"{t} {v / edits:.1f}" for t, v in sorted(tables.items())
                                                        if v / edits >= 0.5))
    h0 = results["history"][0]
    if h0.get("upkeep_ops"):
        print(f"\nupkeep: {h0['upkeep_ops']:,} ops packed in {h0['upkeep_seconds']:.2f} s "
              f"({h0['upkeep_seconds'] / h0['upkeep_ops'] * 1e6:.2f} µs per op)")
    print(f"\nReading history back (this tree), ms, {args.samples} random revisions:\n")
    print(table(["store", "read", "calls", "median", "p95", "max"], reads(args.limit, args.samples)))


if __name__ == "__main__":
    main()
