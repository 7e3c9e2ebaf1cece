"""History in every store: every revision kept, text and authorship at any revision, sessions, thinning, migration.

Each store (memory, SQLite, PostgreSQL) runs the same cases; PostgreSQL
comes from ``COLLAB_TEST_DATABASE_URL`` as in ``test_store.py``.
"""

from __future__ import annotations

import random
import secrets
import sqlite3
import time
from typing import AsyncIterator

import pytest
from test_store import PG_URL, Opener, _pg_reason, drop_schema

from collab import ot
from collab.store import Store, StoredOp, sqlite_schema
from collab.store import history as h
from collab.store.memory import MemoryStore
from collab.store.sqlite import SqliteStore

EMOJI = ["😀", "🦊", "é", "a", "🐝", "\n", "z"]
#: Writers' (name, client); "" names fall back to the client id.
WRITERS = [("ana", "c1"), ("bo😀", "c2"), ("", "c3")]


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def hstores(request, tmp_path) -> AsyncIterator[Opener]:
    """``await hstores(gap)`` opens a handle on one shared store with that session gap; the first call makes it."""
    kind = request.param
    opened: list[Store] = []
    schema = f"collab_test_{secrets.token_hex(6)}"
    if kind == "postgres":
        reason = await _pg_reason()
        if reason:
            pytest.skip(reason)

    async def open_one(gap: float = h.SESSION_GAP) -> Store:
        if kind == "memory":
            if opened:
                return opened[0]
            store: Store = MemoryStore(history_depth=5, session_gap=gap)
        elif kind == "sqlite":
            store = SqliteStore(str(tmp_path / "h.sqlite3"), history_depth=5, session_gap=gap)
        else:
            from collab.store.postgres import PostgresStore

            store = PostgresStore(PG_URL, history_depth=5, schema=schema, session_gap=gap)
        await store.open()
        opened.append(store)
        return store

    open_one.kind = kind  # type: ignore[attr-defined]
    yield open_one
    for store in opened:
        await store.close()
    if kind == "postgres":
        await drop_schema(schema)


def random_op(rng: random.Random, text: str) -> ot.Operation:
    """A random edit of ``text``: a retain, a delete and/or an insert of emoji and letters."""
    n = len(text)
    pos = rng.randint(0, n)
    delete = rng.randint(0, min(3, n - pos)) if rng.random() < 0.4 else 0
    insert = "".join(rng.choice(EMOJI) for _ in range(rng.randint(0 if delete else 1, 4)))
    return ot.from_splice(n, pos, delete, insert)


async def write_random(store: Store, doc: str, rng: random.Random, appends: int, snapshot_every: int = 7):
    """Random appends of 1-3 ops by random writers, with snapshots now and then; every text, by revision."""
    texts = [""]
    rev = 0
    for k in range(appends):
        batch = []
        for _ in range(rng.randint(1, 3)):
            op = random_op(rng, texts[-1])
            name, client = rng.choice(WRITERS)
            rev += 1
            batch.append(StoredOp(rev, op, client, f"{doc}-{rev}", name))
            texts.append(ot.apply(texts[-1], op))
        snapshot = (rev, texts[-1]) if k % snapshot_every == snapshot_every - 1 else None
        await store.append(doc, batch, len(texts[-1]), snapshot)
    return texts


async def test_the_text_at_every_revision_is_a_replay_from_the_start(hstores):
    store = await hstores()
    texts = await write_random(store, "d😀", random.Random(1), 60)
    for rev, text in enumerate(texts):
        assert await store.text_at("d😀", rev) == text, f"revision {rev}"
    assert len(await store.ops_since("d😀", 0)) == len(texts) - 1, "every op is kept"
    if hstores.kind != "memory":  # and after reopening
        await store.close()
        again = await hstores()
        for rev in (0, 1, len(texts) // 2, len(texts) - 1):
            assert await again.text_at("d😀", rev) == texts[rev]


async def test_history_reads_refuse_unknown_documents_and_revisions_beyond_the_head(hstores):
    store = await hstores()
    await store.append("d", [StoredOp(1, ["🦊"], "c1", "x1")], 1)
    with pytest.raises(h.NoSuchDocument):
        await store.text_at("nope", 0)
    with pytest.raises(h.NoSuchDocument):
        await store.sessions("nope")
    with pytest.raises(h.RevisionAhead):
        await store.text_at("d", 2)
    with pytest.raises(h.RevisionAhead):
        await store.authorship("d", 2)
    assert await store.text_at("d", 0) == "" and await store.text_at("d", 1) == "🦊"


def naive_authorship(ops: list[StoredOp]) -> list[dict]:
    """Per-character authors, replayed the slow and obvious way, as spans."""
    chars: list[str] = []
    for o in ops:
        out, i = [], 0
        for c in o.op:
            if isinstance(c, str):
                out.extend([h.label(o.name, o.client)] * len(c))
            elif c > 0:
                out.extend(chars[i : i + c])
                i += c
            else:
                i -= c
        chars = out
    spans: list[dict] = []
    for k, who in enumerate(chars):
        if spans and spans[-1]["author"] == who:
            spans[-1]["end"] = k + 1
        else:
            spans.append({"start": k, "end": k + 1, "author": who})
    return spans


async def test_authorship_matches_a_per_character_replay_at_every_revision(hstores):
    store = await hstores()
    rng = random.Random(7)
    await write_random(store, "a", rng, 50)
    ops = await store.ops_since("a", 0)
    for rev in [*range(0, len(ops) + 1, 5), len(ops)]:
        assert await store.authorship("a", rev) == naive_authorship(ops[:rev]), f"revision {rev}"
    assert await store.authorship("a") == naive_authorship(ops)


async def test_ops_carry_their_author_and_commit_time(hstores):
    store = await hstores()
    before = time.time()
    await store.append("t", [StoredOp(1, ["a"], "c1", "t1", "ana"), StoredOp(2, [1, "😀"], "c2", "t2", "")], 2)
    after = time.time()
    got = await store.ops_since("t", 0)
    assert [(o.name, o.client) for o in got] == [("ana", "c1"), ("", "c2")]
    assert all(before <= o.time <= after for o in got)


async def test_sessions_group_commits_without_a_long_pause_newest_first(hstores):
    store = await hstores(-1.0)  # every commit its own session
    await store.append("s", [StoredOp(1, ["ab"], "c1", "s1", "ana")], 2)
    await store.append("s", [StoredOp(2, [2, "😀😀"], "c2", "s2", "bo😀"), StoredOp(3, [-1, 3], "c3", "s3")], 3)
    await store.append("s", [StoredOp(4, [3, "!"], "c1", "s4", "ana")], 4)
    got = await store.sessions("s")
    assert [(s.first, s.last, s.authors, s.inserted, s.deleted) for s in got] == [
        (4, 4, ["ana"], 1, 0), (2, 3, ["bo😀", "c3"], 2, 1), (1, 1, ["ana"], 2, 0)]
    assert all(s.start <= s.end for s in got) and got[0].start >= got[1].end
    assert [s.first for s in await store.sessions("s", before=4, limit=1)] == [2]
    assert [s.first for s in await store.sessions("s", before=2)] == [1]
    assert got[1].to_json() == {"from": 2, "to": 3, "start": got[1].start, "end": got[1].end,
                                "authors": ["bo😀", "c3"], "inserted": 2, "deleted": 1}


async def test_commits_without_a_pause_are_one_session(hstores):
    store = await hstores()
    for rev in range(1, 5):
        await store.append("one", [StoredOp(rev, [rev - 1, "🐝"] if rev > 1 else ["🐝"], f"c{rev % 2}", f"o{rev}", "")],
                           rev)
    assert [(s.first, s.last, s.authors, s.inserted) for s in await store.sessions("one")] == [(1, 4, ["c1", "c0"], 4)]


async def test_thinning_keeps_one_checkpoint_per_session_and_never_what_loading_needs(hstores):
    store = await hstores(-1.0)
    rng = random.Random(3)
    texts = await write_random(store, "th", rng, 40, snapshot_every=5)
    ops = await store.ops_since("th", 0)
    sessions = await store.sessions("th", limit=100)
    assert await store.thin(time.time() + 60) > 0
    after = await store.sessions("th", limit=100)
    assert [s.to_json() for s in after] == [s.to_json() for s in sessions], "thinned sessions are still listed"
    kept = {s.last for s in after} | {r for r in range(len(ops) - 5, len(ops) + 1)}  # history_depth=5
    gone = 0
    for rev, text in enumerate(texts):
        try:
            assert await store.text_at("th", rev) == text
        except h.RevisionGone:
            assert rev not in kept, f"revision {rev} must survive thinning"
            gone += 1
    assert gone, "nothing was thinned"
    assert await store.authorship("th") == naive_authorship(ops)
    state = await store.load("th", 5)
    assert (state.rev, state.text) == (len(texts) - 1, texts[-1])
    assert await store.find_op("th", "th-1") == 1
    assert await store.thin(time.time() + 60) == 0, "thinning twice thins nothing more"


async def test_sqlite_opens_a_schema_2_file_and_keeps_history_from_its_snapshot(tmp_path):
    """A file of schema 2 (compacted log, no authors or times) migrates: its snapshot is where history starts."""
    path = tmp_path / "v2.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(SCHEMA_2)
    db.execute("INSERT INTO docs VALUES ('a😀', 5, 6, 0, 1)")
    db.execute("INSERT INTO snapshots VALUES ('a😀', 3, 'h🦊llo')")
    db.execute("INSERT INTO op_ids VALUES ('a😀', 'a1', 1), ('a😀', 'a2', 2)")
    db.execute("""INSERT INTO log VALUES ('a😀', 4, 3, '[[[1,"🦊",-1,3],"c1","a3"],[[5,"!"],"c2","a4"]]'), """
               """('a😀', 5, 5, '[[[6,"?"],"c1","a5"]]')""")
    db.execute("PRAGMA user_version = 2")
    db.commit()
    db.close()
    async with _sqlite(path) as store:
        assert await store.text_at("a😀", 3) == "h🦊llo"
        assert await store.text_at("a😀", 5) == "h🦊llo!?"
        with pytest.raises(h.RevisionGone):
            await store.text_at("a😀", 1)
        assert await store.find_ops("a😀", ["a1", "a3", "a5"]) == {"a1": 1, "a3": 3, "a5": 5}
        assert await store.authorship("a😀", 5) == [  # text from before the upgrade has no known author
            {"start": 0, "end": 5, "author": ""}, {"start": 5, "end": 6, "author": "c2"}, {"start": 6, "end": 7, "author": "c1"}]
        await store.append("a😀", [StoredOp(6, [7, "🐝"], "c9", "a6", "ana")], 7)
        assert await store.text_at("a😀", 6) == "h🦊llo!?🐝"
        assert [(s.first, s.last, s.authors) for s in await store.sessions("a😀")] == [(6, 6, ["ana"])]
        assert [(o.rev, o.client, o.name) for o in await store.ops_since("a😀", 3)] == [
            (4, "c2", ""), (5, "c1", ""), (6, "c9", "ana")]
        state = await store.load("a😀", 5)
        assert (state.rev, state.text) == (6, "h🦊llo!?🐝")
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == sqlite_schema.VERSION
    finally:
        db.close()


async def test_postgres_migrates_a_schema_2_database_and_keeps_history_from_its_snapshot():
    reason = await _pg_reason()
    if reason:
        pytest.skip(reason)
    import asyncpg

    from collab.store.postgres import MIGRATIONS, PostgresStore

    schema = f"collab_test_{secrets.token_hex(6)}"
    conn = await asyncpg.connect(PG_URL, timeout=5)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
        await conn.execute(f'SET search_path TO "{schema}"')
        for statement in MIGRATIONS[1] + MIGRATIONS[2]:
            await conn.execute(statement)
        await conn.execute("CREATE TABLE collab_schema (version INTEGER NOT NULL)")
        await conn.execute("INSERT INTO collab_schema (version) VALUES (1), (2)")
        await conn.execute("INSERT INTO collab_docs VALUES ('old', 3, 4, 0, 0)")
        await conn.execute("INSERT INTO collab_snapshots VALUES ('old', 2, convert_to('ab😀', 'UTF8'))")
        await conn.execute("INSERT INTO collab_op_ids VALUES ('old', 'o1', 1), ('old', 'o2', 2), ('old', 'o3', 3)")
        await conn.execute("""INSERT INTO collab_ops VALUES ('old', 3, '[3,"c"]', 'c1', 'o3')""")
    finally:
        await conn.close()
    store = PostgresStore(PG_URL, history_depth=5, schema=schema)
    try:
        await store.open()
        assert await store.text_at("old", 2) == "ab😀"
        assert await store.text_at("old", 3) == "ab😀c"
        with pytest.raises(h.RevisionGone):
            await store.text_at("old", 1)
        await store.append("old", [StoredOp(4, [4, "🦊"], "c2", "o4", "bo")], 5)
        assert await store.text_at("old", 4) == "ab😀c🦊"
        assert [(s.first, s.last, s.authors) for s in await store.sessions("old")] == [(4, 4, ["bo"])]
        assert await store.authorship("old", 3) == [  # text from before the upgrade has no known author
            {"start": 0, "end": 3, "author": ""}, {"start": 3, "end": 4, "author": "c1"}]
    finally:
        await store.close()
        await drop_schema(schema)


def _sqlite(path):
    from test_store import sqlite_store

    return sqlite_store(path, 5)


SCHEMA_2 = """
CREATE TABLE IF NOT EXISTS docs (
    id TEXT PRIMARY KEY,
    rev INTEGER NOT NULL,
    size INTEGER NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
-- The log: one row per append (a batch of ops with consecutive revisions),
-- which costs much less to insert than a row per op. ``ops`` is JSON,
-- [[op, client, op_id], ...], for the revisions ``first`` .. ``rev``.
CREATE TABLE IF NOT EXISTS log (
    doc TEXT NOT NULL,
    rev INTEGER NOT NULL,
    first INTEGER NOT NULL,
    ops TEXT NOT NULL,
    PRIMARY KEY (doc, rev)
) WITHOUT ROWID;
-- Op ids outlive the ops they name (the log is compacted), so that a client
-- resending an operation from long ago is still told it was applied. An id is
-- copied here when its op leaves the log, not when it is written: ids are
-- random, so one row per op here would dirty one more page per op in every
-- commit (the log is appended in revision order and shares its pages).
CREATE TABLE IF NOT EXISTS op_ids (
    doc TEXT NOT NULL,
    op_id TEXT NOT NULL,
    rev INTEGER NOT NULL,
    PRIMARY KEY (doc, op_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS snapshots (
    doc TEXT NOT NULL,
    rev INTEGER NOT NULL,
    text TEXT NOT NULL,
    PRIMARY KEY (doc, rev)
) WITHOUT ROWID;
"""


async def test_sqlite_a_large_append_is_split_into_log_rows_that_read_back_whole(tmp_path):
    """Log rows stay under ROW_MAX (a large row would spill into overflow pages); an op larger than that
    is a row of its own. Appends are cut by the size of the previous one's ops: one that follows much
    smaller or much larger ops is cut right all the same."""
    from collab.store.sqlite_write import ROW_MAX

    async with _sqlite(tmp_path / "rows.sqlite3") as store:
        texts = [""]
        ops: list[StoredOp] = []

        def append_ops(count: int, insert: str) -> list[StoredOp]:
            batch = []
            for _ in range(count):
                rev = len(texts)
                op = [len(texts[-1]), insert] if texts[-1] else [insert]
                batch.append(StoredOp(rev, op, "c1", f"id-{rev}-{'x' * 20}", "ana"))
                texts.append(ot.apply(texts[-1], op))
            ops.extend(batch)
            return batch

        # Small ops with one larger than a row; then small ops after it (the estimate is too large),
        # then large ones after small ones (too small), then small ones again.
        batch = append_ops(200, "🦊é") + append_ops(1, "😀" * (2 * ROW_MAX))
        await store.append("r", batch, len(texts[-1]))
        for count, insert in ((200, "🦊é"), (60, "🐍" * 100), (100, "ab")):
            await store.append("r", append_ops(count, insert), len(texts[-1]))
        rows = store._writer.execute("SELECT first, rev, length(CAST(ops AS BLOB)) FROM log WHERE doc = 'r' ORDER BY rev").fetchall()
        assert (201, 201) in [row[:2] for row in rows]
        assert all(length <= ROW_MAX for first, rev, length in rows if first != 201)
        assert [first for first, _, _ in rows] == [1] + [rev + 1 for _, rev, _ in rows[:-1]], "consecutive runs"
        assert rows[-1][1] == len(ops)
        assert [o.id for o in await store.ops_since("r", 0)] == [o.id for o in ops]
        for rev in (0, 57, 200, 201, 202, 401, 402, 461, 462, len(ops)):
            assert await store.text_at("r", rev) == texts[rev]
