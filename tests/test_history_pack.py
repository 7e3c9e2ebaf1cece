"""Packed history: old ops packed between checkpoints read back as they were written, in every store's upkeep.

The SQLite store packs the ops between two checkpoints into one log row and
stores each checkpoint's authorship (``maintain``); PostgreSQL stores the
authorship. Reads must not tell packed history from unpacked, a file of
schema 4 must read the same before and after its upkeep, and ``kill -9``
in the middle of packing must lose nothing.
"""

from __future__ import annotations

import random
import secrets
import sqlite3
import subprocess
import sys
import textwrap

import pytest
from test_history import WRITERS, naive_authorship, random_op
from test_store import PG_URL, _pg_reason, drop_schema

from collab import ot
from collab.store import StoredOp, sqlite_schema
from collab.store.sqlite import SqliteStore


async def write_session(store, doc: str, rng: random.Random, appends: int) -> tuple[list[str], list[StoredOp]]:
    """Several clients typing into ``doc`` in turns of 1-4 ops, a snapshot every few appends;
    every text by revision, and every op as written."""
    texts, ops, rev = [""], [], 0
    for k in range(appends):
        name, client = rng.choice(WRITERS)
        batch = []
        for _ in range(rng.randint(1, 4)):
            rev += 1
            op = random_op(rng, texts[-1])
            batch.append(StoredOp(rev, op, client, f"{client}-{rev}", name))
            texts.append(ot.apply(texts[-1], op))
        ops.extend(batch)
        await store.append(doc, batch, len(texts[-1]), (rev, texts[-1]) if k % 3 == 2 else None)
    return texts, ops


async def check_reads(store, doc: str, texts: list[str], ops: list[StoredOp], every: int = 1) -> None:
    """The text and authorship at every ``every``-th revision (and the head) equal a replay from the start."""
    revs = sorted({*range(0, len(texts), every), len(texts) - 1})
    for rev in revs:
        assert await store.text_at(doc, rev) == texts[rev], f"text at revision {rev}"
        assert await store.authorship(doc, rev) == naive_authorship(ops[:rev]), f"authorship at revision {rev}"


def log_kinds(path) -> tuple[int, int]:
    """How many log rows are packed and how many are not."""
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT count(*) FILTER (WHERE typeof(ops) = 'blob'), "
                          "count(*) FILTER (WHERE typeof(ops) = 'text') FROM log").fetchone()
    finally:
        db.close()


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_sqlite_packed_history_reads_as_unpacked(tmp_path, seed):
    path = tmp_path / "p.sqlite3"
    store = SqliteStore(str(path), history_depth=5, maintain=False)
    await store.open()
    try:
        texts, ops = await write_session(store, "p🦊", random.Random(seed), 80)
        await check_reads(store, "p🦊", texts, ops)
        packed = await store.maintain()
        assert packed > len(ops) // 2, "most of the history is packed"
        assert log_kinds(path)[0] > 0
        await check_reads(store, "p🦊", texts, ops)
        got = await store.ops_since("p🦊", 0)
        assert [(o.rev, o.op, o.client, o.name) for o in got] == [(o.rev, o.op, o.client, o.name) for o in ops]
        assert await store.find_ops("p🦊", [ops[0].id, ops[-1].id]) == {ops[0].id: 1, ops[-1].id: len(ops)}
        assert await store.maintain() == 0, "packing twice packs nothing more"
        # Writing on after packing, then packing again.
        more_texts, more_ops = await write_more(store, "p🦊", texts[-1], len(ops), random.Random(seed + 100), 30)
        texts, ops = texts + more_texts, ops + more_ops
        await store.maintain()
    finally:
        await store.close()
    again = SqliteStore(str(path), history_depth=5, maintain=False)
    await again.open()
    try:
        await check_reads(again, "p🦊", texts, ops, every=3)
        state = await again.load("p🦊", 5)
        assert (state.rev, state.text) == (len(ops), texts[-1])
    finally:
        await again.close()


async def write_more(store, doc: str, text: str, rev: int, rng: random.Random, appends: int):
    texts, ops = [], []
    for k in range(appends):
        name, client = rng.choice(WRITERS)
        rev += 1
        op = random_op(rng, text)
        text = ot.apply(text, op)
        ops.append(StoredOp(rev, op, client, f"more-{rev}", name))
        texts.append(text)
        await store.append(doc, [ops[-1]], len(text), (rev, text) if k % 3 == 2 else None)
    return texts, ops


async def test_sqlite_opens_a_schema_5_file_and_packs_it(tmp_path):
    """A file written before packing (schema 5: no docs.packed_through, checkpoints without runs)
    reads the same when opened, and after its upkeep has packed it."""
    path = tmp_path / "v5.sqlite3"
    store = SqliteStore(str(path), history_depth=5, maintain=False)
    await store.open()
    try:
        texts, ops = await write_session(store, "old", random.Random(9), 60)
    finally:
        await store.close()
    db = sqlite3.connect(path)  # back to schema 5: what the previous version wrote
    db.execute("ALTER TABLE docs DROP COLUMN packed_through")
    db.execute("UPDATE checkpoints SET runs = NULL")
    db.execute("PRAGMA user_version = 5")
    db.commit()
    assert db.execute("SELECT count(*) FROM checkpoints").fetchone()[0] > 3
    db.close()
    store = SqliteStore(str(path), history_depth=5, maintain=False)
    await store.open()
    try:
        await check_reads(store, "old", texts, ops, every=2)
        assert await store.maintain() > 0
        assert log_kinds(path)[0] > 0
        await check_reads(store, "old", texts, ops, every=2)
    finally:
        await store.close()
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == sqlite_schema.VERSION
        assert db.execute("SELECT count(*) FROM checkpoints WHERE runs IS NULL AND rev <= "
                          "(SELECT ids_through FROM docs)").fetchone()[0] == 0, "the newest may wait for the next"
    finally:
        db.close()


async def test_sqlite_packs_by_itself_once_idle(tmp_path):
    """With upkeep on (the default), the store packs once no commit came for MAINTAIN_IDLE."""
    path = tmp_path / "idle.sqlite3"
    store = SqliteStore(str(path), history_depth=5)
    store.MAINTAIN_IDLE = 0.0
    await store.open()
    try:
        texts, ops = await write_session(store, "i", random.Random(4), 40)
        await store.upkept()
        assert log_kinds(path)[0] > 0
        await check_reads(store, "i", texts, ops, every=4)
    finally:
        await store.close()


_PACKER = textwrap.dedent("""
    import sqlite3, sys
    from collab.store.sqlite_history import SqliteHistory
    db = sqlite3.connect(sys.argv[1], isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    history = SqliteHistory(5)
    print("packing", flush=True)
    while history.maintain_step(db) is not None:
        print("step", flush=True)
    print("done", flush=True)
""")


async def test_sqlite_kill_9_while_packing_loses_nothing(tmp_path):
    path = tmp_path / "k.sqlite3"
    store = SqliteStore(str(path), history_depth=5, maintain=False)
    await store.open()
    try:
        texts, ops = await write_session(store, "k", random.Random(5), 400)
    finally:
        await store.close()
    proc = subprocess.Popen([sys.executable, "-c", _PACKER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "packing"
        assert proc.stdout.readline().strip() == "step"  # the next step is under way
    finally:
        proc.kill()
        proc.wait()
    packed, plain = log_kinds(path)
    assert packed > 0 and plain > 0, "killed in the middle"
    store = SqliteStore(str(path), history_depth=5, maintain=False)
    await store.open()
    try:
        await check_reads(store, "k", texts, ops, every=37)
        await store.maintain()
        await check_reads(store, "k", texts, ops, every=37)
        state = await store.load("k", 5)
        assert (state.rev, state.text) == (len(ops), texts[-1])
    finally:
        await store.close()


async def test_postgres_stores_every_checkpoints_authorship():
    reason = await _pg_reason()
    if reason:
        pytest.skip(reason)
    from collab.store.postgres import PostgresStore

    schema = f"collab_test_{secrets.token_hex(6)}"
    store = PostgresStore(PG_URL, history_depth=5, schema=schema)
    await store.open()
    try:
        texts, ops = await write_session(store, "pg", random.Random(6), 60)
        await store.maintain()
        async with store.pool.acquire() as conn:
            counts = await conn.fetchrow("SELECT count(*) AS all, count(runs) AS with_runs FROM collab_checkpoints")
        assert counts["all"] > 3 and counts["with_runs"] == counts["all"]
        store._history.authorship_cache.forget("pg")
        await check_reads(store, "pg", texts, ops, every=3)
    finally:
        await store.close()
        await drop_schema(schema)


async def test_postgres_two_processes_storing_one_checkpoint_s_authorship_at_once_is_no_failure():
    """Every process computes the authorship of new checkpoints; two may take the same one. The second to
    store it (its snapshot older than the first's commit) looks for the next, as if it had found it done:
    it logged a warning and gave up until the next checkpoint."""
    reason = await _pg_reason()
    if reason:
        pytest.skip(reason)
    from collab.store.postgres import PostgresStore

    schema = f"collab_test_{secrets.token_hex(6)}"
    first, second = (PostgresStore(PG_URL, history_depth=5, schema=schema) for _ in range(2))
    first.MAINTAIN_AFTER = second.MAINTAIN_AFTER = 3600.0  # only when the test says
    await first.open()
    await second.open()
    try:
        texts, ops = await write_session(first, "both 🐝", random.Random(7), 60)
        runs_at = second._history._runs_at
        raced = []

        async def first_stores_it_meanwhile(conn, doc, rev):
            runs = await runs_at(conn, doc, rev)
            if not raced:
                raced.append(rev)
                await first.maintain()  # the other process stores every checkpoint, this one among them
            return runs

        second._history._runs_at = first_stores_it_meanwhile
        await second.maintain()
        assert raced
        async with second.pool.acquire() as conn:
            counts = await conn.fetchrow("SELECT count(*) AS all, count(runs) AS with_runs FROM collab_checkpoints")
        assert counts["all"] > 3 and counts["with_runs"] == counts["all"]
        await check_reads(second, "both 🐝", texts, ops, every=3)
    finally:
        await first.close()
        await second.close()
        await drop_schema(schema)
