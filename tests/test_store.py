"""One suite for every store: memory, SQLite and PostgreSQL behave alike.

PostgreSQL comes from ``COLLAB_TEST_DATABASE_URL`` (e.g.
``postgresql://postgres@127.0.0.1:5432/test``); each test gets a schema of
its own, dropped afterwards, so parallel runs and stale data cannot meet.
When the variable is unset or the server unreachable, the postgres cases
are skipped with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
from typing import AsyncIterator, Awaitable, Callable, Iterator

import pytest

from collab.store import ListPosition, RevisionConflict, Store, StoredOp, sqlite_schema
from collab.store.idfilter import IdFilter
from collab.store.memory import MemoryStore
from collab.store.opindex import lookup
from collab.store.sqlite import SqliteStore

PG_URL = os.environ.get("COLLAB_TEST_DATABASE_URL", "")


async def _pg_reason() -> str | None:
    """Why the PostgreSQL cases cannot run here, or ``None`` if they can."""
    if not PG_URL:
        return "COLLAB_TEST_DATABASE_URL is not set (e.g. postgresql://postgres@127.0.0.1:5432/test)"
    try:
        import asyncpg
    except ImportError:
        return "asyncpg is not installed (pip install 'collab[postgres]')"
    try:
        conn = await asyncpg.connect(PG_URL, timeout=5)
        await conn.close()
    except Exception as exc:
        return f"PostgreSQL at COLLAB_TEST_DATABASE_URL is unreachable: {exc}"
    return None


Opener = Callable[[], Awaitable[Store]]


async def test_an_append_overlapping_another_handles_is_refused(stores):
    """A handle that last wrote revision 3 must not take 4-5 after another handle took 4:
    SQLite keeps a log row per append, keyed by its last revision (5, not 4)."""
    first = await stores()
    second = await stores()
    await first.append("d", ops(1, 1), 1)
    await first.append("d", ops(2, 2, doc_len=1), 3)
    await second.append("d", [StoredOp(4, [3, "😀"], "p2", "p2-4")], 4)
    with pytest.raises(RevisionConflict):
        await first.append("d", ops(4, 2, doc_len=3), 5)
    for handle in (first, second):
        assert [(o.rev, o.id) for o in await handle.ops_since("d", 0)] == [
            (1, "op1"), (2, "op2"), (3, "op3"), (4, "p2-4")]
        assert (await handle.load("d", 10)).text == "xxx😀"


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def stores(request, tmp_path) -> AsyncIterator[Opener]:
    """``await stores()`` opens a handle on one shared store; the first call makes it.

    Memory hands out the same object (it cannot be shared otherwise); SQLite
    opens the same file; PostgreSQL the same schema.
    """
    kind = request.param
    opened: list[Store] = []
    schema = f"collab_test_{secrets.token_hex(6)}"
    if kind == "postgres":
        reason = await _pg_reason()
        if reason:
            pytest.skip(reason)

    async def open_one() -> Store:
        if kind == "memory":
            if opened:
                return opened[0]
            store: Store = MemoryStore(history_depth=5)
        elif kind == "sqlite":
            store = SqliteStore(str(tmp_path / "s.sqlite3"), history_depth=5)
        else:
            from collab.store.postgres import PostgresStore

            store = PostgresStore(PG_URL, history_depth=5, schema=schema)
        await store.open()
        opened.append(store)
        return store

    open_one.kind = kind  # type: ignore[attr-defined]
    yield open_one
    for store in opened:
        await store.close()
    if kind == "postgres":
        await drop_schema(schema)


async def drop_schema(schema: str) -> None:
    """Remove a test schema and everything in it."""
    import asyncpg

    conn = await asyncpg.connect(PG_URL, timeout=5)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


def ops(start: int, n: int, prefix: str = "op", doc_len: int = 0) -> list[StoredOp]:
    """``n`` consecutive appends of one character each, from revision ``start``."""
    out = []
    for i in range(n):
        length = doc_len + i
        op: list = [length, "x"] if length else ["x"]
        out.append(StoredOp(start + i, op, "c1", f"{prefix}{start + i}"))
    return out


@contextlib.asynccontextmanager
async def sqlite_store(path, history_depth: int, **attrs: int) -> AsyncIterator[SqliteStore]:
    """An open SQLite store at ``path`` with class limits overridden by ``attrs``; closed at the end."""
    store = SqliteStore(str(path), history_depth=history_depth)
    for name, value in attrs.items():
        setattr(store, name, value)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def append_snapshotted(store: Store, doc: str, starts: range, prefix: str, text: str = "") -> str:
    """Append 4 ops from each of ``starts`` to ``doc`` (on ``text``), each 4 with a snapshot; the new text."""
    for start in starts:
        text += "xxxx"
        await store.append(doc, ops(start, 4, prefix=prefix, doc_len=len(text) - 4), len(text), (start + 3, text))
    return text


async def test_new_document_is_empty(stores):
    store = await stores()
    state = await store.load("nothing", 10)
    assert (state.rev, state.text, state.history) == (0, "", [])
    assert await store.find_op("nothing", "x") is None
    assert await store.ops_since("nothing", 0) == []
    assert await store.list_docs() == []


async def test_append_then_load_round_trips_text_and_history(stores):
    store = await stores()
    await store.append("d", [StoredOp(1, ["héllo 😀 wörld"], "c1", "a")], 13)
    await store.append("d", [StoredOp(2, [6, "👍🏽 ", 7], "c2", "b"), StoredOp(3, [-1, 15], "c1", "c")], 15)
    state = await store.load("d", 10)
    assert state.rev == 3
    assert state.text == "éllo 👍🏽 😀 wörld"
    assert [(o.rev, o.op, o.client, o.id) for o in state.history] == [
        (1, ["héllo 😀 wörld"], "c1", "a"), (2, [6, "👍🏽 ", 7], "c2", "b"), (3, [-1, 15], "c1", "c")
    ]
    assert await store.find_op("d", "b") == 2
    assert await store.find_op("other", "b") is None
    assert [o.rev for o in await store.ops_since("d", 1)] == [2, 3]


async def test_a_taken_revision_is_a_conflict_and_changes_nothing(stores):
    store = await stores()
    await store.append("d", ops(1, 3), 3)
    with pytest.raises(RevisionConflict):
        await store.append("d", [StoredOp(3, [2, "y"], "c2", "other3")], 3)
    with pytest.raises(RevisionConflict):  # a gap too
        await store.append("d", [StoredOp(5, [3, "y"], "c2", "other5")], 4)
    state = await store.load("d", 10)
    assert (state.rev, state.text) == (3, "xxx")
    assert await store.find_op("d", "other3") is None
    await store.append("d", [StoredOp(4, [3, "y"], "c2", "y4")], 4)
    assert (await store.load("d", 10)).text == "xxxy"


async def test_an_append_queued_behind_a_refused_one_is_refused_too(stores):
    """The hub queues a document's next batch before the previous one is written (pipelining):
    if that one is refused, the next must not land and leave a hole in the log."""
    store = await stores()
    await store.append("d", ops(1, 3), 3)
    first, second, other = await asyncio.gather(
        store.append("d", [StoredOp(5, [3, "😀"], "c2", "gap5")], 4),
        store.append("d", [StoredOp(6, [4, "y"], "c2", "gap6")], 5),
        store.append("e", ops(1, 2, "e"), 2),
        return_exceptions=True,
    )
    assert isinstance(first, RevisionConflict) and isinstance(second, RevisionConflict), (first, second)
    assert other is None  # another document in the same group commit is not held back
    state = await store.load("d", 10)
    assert (state.rev, state.text) == (3, "xxx")
    assert await store.find_op("d", "gap6") is None
    await store.append("d", [StoredOp(4, [3, "😀"], "c2", "ok4")], 4)  # and the log goes on from where it was
    assert (await store.load("d", 10)).text == "xxx😀"
    assert (await store.load("e", 10)).text == "xx"


async def test_snapshots_keep_every_op_and_loading_stays_exact(stores):
    store = await stores()  # history_depth=5
    text = ""
    for start in range(1, 31, 3):
        batch = ops(start, 3, doc_len=len(text))
        text += "xxx"
        await store.append("d", batch, len(text), (batch[-1].rev, text) if start % 9 == 1 else None)
    state = await store.load("d", 5)
    assert (state.rev, state.text) == (30, "x" * 30)
    assert [o.rev for o in state.history] == [26, 27, 28, 29, 30]
    kept = await store.ops_since("d", 0)
    assert [o.rev for o in kept] == list(range(1, 31)), "the history behind a snapshot must be kept"
    assert await store.find_op("d", "op1") == 1


async def test_find_ops_sees_ids_in_the_log_compacted_and_after_reopening(stores):
    """The hub's per-batch lookup: every applied id, wherever the store keeps it, and nothing else."""
    store = await stores()  # history_depth=5
    await store.append("d", ops(1, 3, prefix="a"), 3)
    await store.append("other", ops(1, 1, prefix="z"), 1)
    assert await store.find_ops("d", ["a1", "a3", "new", "z1"]) == {"a1": 1, "a3": 3}
    text = await append_snapshotted(store, "d", range(4, 16, 4), "b", "xxx")  # snapshots at 7, 11 and 15 move ids through 10 to op_ids
    # Every id: those compacted, those of a log row that straddles the compaction point (b8-b11
    # through 10: SQLite keeps a row per append), and those after it.
    every = {f"a{r}": r for r in range(1, 4)} | {f"b{r}": r for r in range(4, 16)}
    wanted = [*every, "new"]
    assert await store.find_ops("d", wanted) == every
    assert [await store.find_op("d", i) for i in wanted] == [*every.values(), None]
    if stores.kind == "memory":
        return
    await store.close()
    again = await stores()
    assert await again.find_ops("d", wanted) == every
    await again.append("d", ops(16, 1, prefix="c", doc_len=len(text)), len(text) + 1)
    assert await again.find_ops("d", ["a1", "b15", "c16", "new"]) == {"a1": 1, "b15": 15, "c16": 16}


async def test_list_docs_most_recent_first_with_size(stores):
    store = await stores()
    await store.append("a", ops(1, 1), 1)
    await asyncio.sleep(0.01)
    await store.append("b", ops(1, 2), 2)
    listed = await store.list_docs()
    assert [(d.id, d.rev, d.size) for d in listed] == [("b", 2, 2), ("a", 1, 1)]
    assert listed[0].updated >= listed[1].updated
    assert await store.revisions(["a", "b", "c"]) == {"a": 1, "b": 2}


async def test_the_listed_title_is_the_one_set_by_hand_else_the_recorded_heading(stores):
    store = await stores()
    await store.append("t", [StoredOp(1, ["# Füchse 🦊\n"], "c1", "a")], 10)
    assert (await store.heading("t"), await store.title("t")) == (None, None)
    await store.set_heading("t", "Füchse 🦊")
    assert await store.set_title("t", "Bau 🦊")
    assert (await store.heading("t"), await store.title("t")) == ("Füchse 🦊", "Bau 🦊")
    assert [d.title for d in await store.list_docs()] == ["Bau 🦊"]
    assert await store.set_title("t", None)
    assert [d.title for d in await store.list_docs()] == [await store.heading("t")] == ["Füchse 🦊"]
    assert await store.heading("none") is None


async def test_the_document_list_reads_in_pages_that_meet_exactly(stores):
    store = await stores()
    names = ["a", "b😀", "c", "d", "e", "f🎉", "g"]
    for i, name in enumerate(names):
        await store.append(name, ops(1, i + 1), 1)
    whole = await store.list_docs()
    assert sorted(d.id for d in whole) == sorted(names)
    assert [(d.updated, d.id) for d in whole] == sorted(((d.updated, d.id) for d in whole),
                                                        key=lambda k: (-k[0], k[1]))
    pages, after = [], None
    while page := await store.list_docs(limit=3, after=after):
        assert len(page) <= 3
        pages.append(page)
        after = ListPosition.of(page[-1])
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [d for p in pages for d in p] == whole
    assert await store.list_docs(limit=0) == []


async def test_two_handles_on_one_store_keep_one_order(stores):
    """Two processes (handles) racing for the same revisions: exactly one wins each."""
    first = await stores()
    second = await stores()
    await first.append("d", ops(1, 1), 1)
    results = await asyncio.gather(
        first.append("d", [StoredOp(2, [1, "a"], "p1", "p1-2")], 2),
        second.append("d", [StoredOp(2, [1, "b"], "p2", "p2-2")], 2),
        return_exceptions=True,
    )
    assert sorted(type(r).__name__ for r in results) == ["NoneType", "RevisionConflict"]
    for handle in (first, second):
        state = await handle.load("d", 10)
        assert state.rev == 2 and state.text in ("xa", "xb")
    winner = "p1-2" if results[0] is None else "p2-2"
    assert await second.find_op("d", winner) == 2


async def test_shared_store_refuses_an_op_id_applied_before(stores):
    """The unique (doc, op_id) guard: a resend can never be committed at a second revision."""
    store = await stores()
    if not store.may_conflict:
        pytest.skip("only stores shared by processes (may_conflict) guard op ids in the store")
    await store.append("d", [StoredOp(1, ["a"], "c", "same")], 1)
    with pytest.raises(RevisionConflict):
        await store.append("d", [StoredOp(2, [1, "a"], "c", "same")], 2)
    state = await store.load("d", 10)
    assert (state.rev, state.text) == (1, "a")


async def test_a_pipelined_append_is_refused_with_its_refused_predecessor(stores):
    """Two appends queued back to back; another process takes the first one's revision: the
    second is refused too, although the row is now at the revision it continues from."""
    first = await stores()
    if not (first.may_conflict and first.pipelined):
        pytest.skip("only a store shared by processes that pipelines appends needs a fence between them")
    second = await stores()
    await first.append("d", ops(1, 1), 1)
    await second.append("d", [StoredOp(2, [1, "🙂"], "p2", "theirs")], 2)  # first has not read it yet
    # The first is by an author this process has not stored yet (its id takes a round trip), the
    # second by one it has: they must still be written in the order they were started.
    mine = first.start_append("d", [StoredOp(2, [1, "a"], "p1", "mine-2", name="Zoë 👩‍💻")], 2)
    built_on_it = first.start_append("d", [StoredOp(3, [2, "b"], "c1", "mine-3")], 3)
    results = await asyncio.gather(mine, built_on_it, return_exceptions=True)
    assert [type(r).__name__ for r in results] == ["RevisionConflict", "RevisionConflict"]
    state = await first.load("d", 10)
    assert (state.rev, state.text) == (2, "x🙂")
    assert await first.find_op("d", "mine-3") is None


async def test_reopening_keeps_everything(stores):
    store = await stores()
    if stores.kind == "memory":
        pytest.skip("the memory store keeps nothing across processes by design")
    await store.append("d", ops(1, 4), 4, (4, "xxxx"))
    await store.close()
    again = await stores()
    assert (await again.load("d", 10)).text == "xxxx"
    assert await again.find_op("d", "op3") == 3


async def test_concurrent_appends_to_many_documents_all_land(stores):
    """Appends of many documents at once (group commit where the store has it), one conflicting."""
    store = await stores()
    await asyncio.gather(*(store.append(f"doc{i}", ops(1, 2), 2) for i in range(20)))
    results = await asyncio.gather(
        *(store.append(f"doc{i}", [StoredOp(3, [2, "y"], "c", f"y{i}")], 3) for i in range(20)),
        store.append("doc0", [StoredOp(3, [2, "z"], "c", "z0")], 3),
        return_exceptions=True,
    )
    assert [r for r in results if r is not None] and all(isinstance(r, RevisionConflict) for r in results if r is not None)
    assert sum(r is None for r in results) == 20
    for i in range(20):
        state = await store.load(f"doc{i}", 10)
        assert state.rev == 3 and state.text in ("xxy", "xxz")


async def test_a_commit_of_more_ops_than_one_insert_statement_holds_them_all(stores):
    """SQLite writes a batch's ops 64 rows per statement: a batch of 3 x 70 ops, in one
    loop turn, lands whole and in order, the last partial statement included."""
    store = await stores()
    commits = getattr(store, "commits", 0)
    texts = {}
    appends = []
    for d in ("a", "b😀", "c"):
        text, batch = "", []
        for i in range(70):
            op: list = [len(text), "😀" if i % 3 else d] if text else [d]
            text += "😀" if text and i % 3 else d
            batch.append(StoredOp(i + 1, op, "c1", f"{d}-{i + 1}"))
        texts[d] = text
        appends.append(store.append(d, batch, len(text)))
    await asyncio.gather(*appends)
    if isinstance(store, SqliteStore):
        assert store.commits == commits + 1, "the appends of one loop turn share one transaction"
    for d, text in texts.items():
        state = await store.load(d, 100)
        assert (state.rev, state.text) == (70, text)
        assert [o.rev for o in state.history] == list(range(1, 71))
        assert await store.find_ops(d, [f"{d}-1", f"{d}-64", f"{d}-65", f"{d}-70"]) == {
            f"{d}-1": 1, f"{d}-64": 64, f"{d}-65": 65, f"{d}-70": 70}


async def test_exclusive_turn_holds_other_writers_back(stores):
    """Inside ``exclusive`` this handle reads the latest ops and appends; another handle's append of the same revision fails."""
    first = await stores()
    second = await stores()
    if not first.may_conflict:
        pytest.skip("a store with one writer has no turn to hold (exclusive holds nothing)")
    await first.append("d", ops(1, 1), 1)
    async with first.exclusive("d"):
        assert [o.rev for o in await first.ops_since("d", 0)] == [1]
        # The other writer waits or is refused at once; it cannot get in first.
        other = asyncio.create_task(second.append("d", [StoredOp(2, [1, "b"], "p2", "b2")], 2))
        await asyncio.sleep(0.3)  # give it every chance to
        await first.append("d", [StoredOp(2, [1, "a"], "p1", "a2")], 2)
    with pytest.raises(RevisionConflict):
        await other
    assert (await second.load("d", 10)).text == "xa"
    assert [d.id for d in await second.list_docs()] == ["d"]


async def test_exclusive_on_a_new_document_does_not_list_it(stores):
    store = await stores()
    async with store.exclusive("fresh"):
        assert await store.ops_since("fresh", 0) == []
    assert await store.list_docs() == []
    assert (await store.load("fresh", 10)).rev == 0
    await store.append("fresh", ops(1, 1), 1)
    assert [d.id for d in await store.list_docs()] == ["fresh"]


async def test_sqlite_lookups_without_the_in_memory_log_ids_scan_the_log(tmp_path):
    """Documents whose log ids were dropped from memory (cap reached) are still looked up right."""
    async with sqlite_store(tmp_path / "ids.sqlite3", 5, LOG_IDS_MAX=3) as store:  # room for one document's ids
        await store.append("a", ops(1, 3, prefix="a"), 3)
        await store.append("b", ops(1, 3, prefix="b"), 3)
        assert list(store._index.log_ids) == ["b"], "the test needs 'a' dropped from memory"
        for doc, other in (("a", "b"), ("b", "a")):
            assert await store.find_ops(doc, [f"{doc}1", f"{doc}3", f"{other}1", "🦄"]) == {f"{doc}1": 1, f"{doc}3": 3}
        await store.append("a", ops(4, 1, prefix="a", doc_len=3), 4)  # read back from the log, with the new one
        assert list(store._index.log_ids) == ["a"] and store._index.log_ids["a"] == {"a1": 1, "a2": 2, "a3": 3, "a4": 4}


@pytest.mark.parametrize("in_memory", [True, False], ids=["ids-in-memory", "ids-from-the-log"])
async def test_sqlite_compaction_moves_exactly_the_compacted_ids_to_op_ids(tmp_path, in_memory):
    """A compaction copies every id through its point into ``op_ids``: from the log ids it
    keeps in memory, or, for a document it holds none for, from the log itself. Two
    appends of one document in one transaction, the second with a snapshot and longer
    than the kept history, so that the first one's ops are compacted by the second."""
    async with sqlite_store(tmp_path / "c.sqlite3", 3, **({} if in_memory else {"LOG_IDS_MAX": 0})) as store:
        await store.append("d", ops(1, 4, prefix="a"), 4)
        await store.append("other", ops(1, 1, prefix="o"), 1)  # with no room, "d"'s ids leave memory
        assert ("d" in store._index.log_ids) is in_memory
        text = "x" * 4
        first, second = ops(5, 2, prefix="b", doc_len=4), ops(7, 6, prefix="😀", doc_len=6)
        text += "x" * 8
        await asyncio.gather(store.append("d", first, 6), store.append("d", second, 12, (12, text)))
        assert store.commits == 3, "the two appends must share a transaction"
        # Compacted through 12 - 3 = 9: a1-a4, b5, b6, 😀7-😀9; 😀10-😀12 stay in the log only.
        rows = store._writer.execute("SELECT op_id, rev FROM op_ids WHERE doc = 'd'").fetchall()
        assert sorted(rows, key=lambda r: r[1]) == [(f"a{r}", r) for r in range(1, 5)] + [
            ("b5", 5), ("b6", 6), ("😀7", 7), ("😀8", 8), ("😀9", 9)]
        every = {f"a{r}": r for r in range(1, 5)} | {"b5": 5, "b6": 6} | {f"😀{r}": r for r in range(7, 13)}
        assert await store.find_ops("d", [*every, "new"]) == every
        state = await store.load("d", 3)
        assert (state.rev, state.text, [o.id for o in state.history]) == (12, text, ["😀10", "😀11", "😀12"])


async def test_sqlite_appends_of_one_loop_turn_share_a_commit_and_close_waits_for_it(tmp_path):
    path = str(tmp_path / "turn.sqlite3")
    store = SqliteStore(path, history_depth=5)
    await store.open()
    seen: list[tuple[str, bool]] = []
    futures = [
        store.start_append(doc, ops(1, 2, prefix=doc), 2, on_done=lambda f, doc=doc: seen.append((doc, f.done())))
        for doc in ("a", "b", "c")
    ]
    assert not any(f.done() for f in futures), "an append returned before its commit"
    await store.close()  # waits for the commit in progress
    assert [f.result() for f in futures] == [None, None, None]
    assert seen == [("a", True), ("b", True), ("c", True)], "on_done runs once per append, after it is settled"
    assert store.commits == 1 and store.ops_written == 6
    again = SqliteStore(path, history_depth=5)
    await again.open()
    try:
        assert {d.id: d.rev for d in await again.list_docs()} == {"a": 2, "b": 2, "c": 2}
        assert await again.find_ops("b", ["b1", "b2", "a1"]) == {"b1": 1, "b2": 2}
    finally:
        await again.close()


async def _wait_done(fut: asyncio.Future, seconds: float) -> bool:
    """Whether ``fut`` finishes within ``seconds`` (it is left running otherwise)."""
    done, _ = await asyncio.wait([fut], timeout=seconds)
    return bool(done)


@contextlib.contextmanager
def _fsync_stopped(store: SqliteStore) -> Iterator[None]:
    """The store's fsync helper stopped (SIGSTOP), as a disk that does not answer, until the block ends."""
    pid = store.fsync_helper_pid
    assert pid is not None, "a FULL SQLite store fsyncs in a helper process"
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def _committed_rev(path: str, doc: str) -> int:
    """The document's revision as another connection sees the file (committed, durable or not)."""
    import sqlite3

    db = sqlite3.connect(path)
    try:
        row = db.execute("SELECT rev FROM docs WHERE id = ?", (doc,)).fetchone()
        return row[0] if row else 0
    finally:
        db.close()


async def test_sqlite_full_finishes_an_append_only_once_the_wal_is_fsynced(tmp_path):
    """``COLLAB_SQLITE_SYNC=full``: a commit reaches the file at once, but its append (so its ack)
    waits for the fsync helper; stopping the helper, as a disk that does not answer, holds it."""
    from collab.config import Settings
    from collab.store import open_store

    store = await open_store(Settings.from_env({"COLLAB_DATA_DIR": str(tmp_path), "COLLAB_SQLITE_SYNC": "full"}))
    assert isinstance(store, SqliteStore)
    try:
        await store.append("d", ops(1, 1), 1)
        with _fsync_stopped(store):
            pending = asyncio.ensure_future(store.append("d", ops(2, 1, doc_len=1), 2))
            assert not await _wait_done(pending, 0.5)
            assert _committed_rev(store.path, "d") == 2  # written, not yet known to be on disk
        assert await _wait_done(pending, 10)
        await pending
    finally:
        await store.close()


async def test_sqlite_document_list_never_shows_a_revision_before_it_is_durable(tmp_path):
    """The list is read on another connection, which sees a commit before its fsync; it answers after."""
    store = SqliteStore(str(tmp_path / "l.sqlite3"), history_depth=5)
    await store.open()
    try:
        await store.append("d", ops(1, 1), 1)
        with _fsync_stopped(store):
            pending = asyncio.ensure_future(store.append("d", ops(2, 1, doc_len=1), 2))
            await asyncio.sleep(0.05)
            listing = asyncio.ensure_future(store.list_docs())
            assert not await _wait_done(listing, 0.5)
        assert await _wait_done(listing, 10) and pending.done()
        assert [(d.id, d.rev) for d in listing.result()] == [("d", 2)]
    finally:
        await store.close()


async def test_sqlite_normal_finishes_an_append_at_its_commit_with_no_fsync_helper(tmp_path):
    from collab.config import Settings
    from collab.store import open_store

    store = await open_store(Settings.from_env({"COLLAB_DATA_DIR": str(tmp_path), "COLLAB_SQLITE_SYNC": "normal"}))
    try:
        assert isinstance(store, SqliteStore) and store.fsync_helper_pid is None
        await asyncio.wait_for(store.append("d", ops(1, 2), 2), 10)
        assert _committed_rev(store.path, "d") == 2
    finally:
        await store.close()
    with pytest.raises(ValueError, match="use one of FULL, NORMAL"):
        SqliteStore(str(tmp_path / "x.sqlite3"), synchronous="OFF")


async def test_sqlite_appends_go_on_when_the_fsync_helper_dies(tmp_path, caplog):
    """A killed helper, even with an fsync owed: the store fsyncs on its thread from then on, and says so."""
    store = SqliteStore(str(tmp_path / "h.sqlite3"), history_depth=5)
    await store.open()
    try:
        await store.append("d", ops(1, 1), 1)
        pid = store.fsync_helper_pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        pending = asyncio.ensure_future(store.append("d", ops(2, 1, doc_len=1), 2))
        assert not await _wait_done(pending, 0.3)
        os.kill(pid, signal.SIGKILL)  # dies owing that fsync
        assert await _wait_done(pending, 10)
        await pending
        assert store.fsync_helper_pid is None
        await asyncio.wait_for(store.append("d", ops(3, 2, doc_len=2), 4), 10)
        assert (await store.load("d", 10)).rev == 4
        assert "fsync helper process stopped" in caplog.text
    finally:
        await store.close()


async def test_sqlite_commits_on_the_loop_except_those_with_a_large_snapshot(tmp_path):
    """A commit is a few dozen microseconds on the event loop; one carrying a large snapshot
    (about 10 ms per MB to write) runs on the store's thread, so the loop serves on meanwhile."""
    import threading

    async with sqlite_store(tmp_path / "t.sqlite3", 5, SNAPSHOT_ON_LOOP_MAX=1000) as store:
        where: list[str] = []
        real = store._commit_sync

        def spy(batch):  # records where each transaction runs, and runs it
            where.append(threading.current_thread().name)
            return real(batch)

        store._commit_sync = spy  # type: ignore[method-assign]
        small, large = "😀" * 10, "😀" * 1001
        await store.append("d", [StoredOp(1, [small], "c1", "a")], 10, (1, small))
        await store.append("d", [StoredOp(2, [10, large], "c1", "b")], 1011, (2, small + large))
        await store.append("d", [StoredOp(3, [1011, "x"], "c1", "c")], 1012)
        assert where[0] == where[2] == threading.current_thread().name
        assert where[1].startswith("collab-sqlite")
        state = await store.load("d", 5)
        assert (state.rev, state.text) == (3, small + large + "x")
        assert await store.find_ops("d", ["a", "b", "c"]) == {"a": 1, "b": 2, "c": 3}


async def test_sqlite_checkpoints_keep_the_wal_small(tmp_path):
    """The writer never checkpoints itself: the store's thread does, between commits, or the WAL
    would grow with every commit for as long as the server runs."""
    async with sqlite_store(tmp_path / "w.sqlite3", 5, CHECKPOINT_BYTES=64 << 10) as store:
        text = "😀" * 1000
        for rev in range(1, 301):  # about 1.2 MB of log rows, plus their snapshots
            op: list = [(rev - 1) * 1000, text] if rev > 1 else [text]
            await store.append("d", [StoredOp(rev, op, "c1", f"op{rev}")], rev * 1000)
        assert os.path.getsize(store.path + "-wal") < (1 << 20)
        assert (await store.load("d", 5)).text == text * 300


def test_id_filter_holds_every_id_it_was_given_and_few_others():
    """No false negatives (a resend must never be applied twice), through growth; few false positives."""
    given = [f"op-{i}-😀" for i in range(60_000)]
    f = IdFilter(given[:100], capacity=1000)
    for i in given[100:30_000]:
        f.add(i)
    for start in range(30_000, 60_000, 7_777):  # many at once, across growths
        f.update(given[start : min(start + 7_777, 60_000)])
    assert f.count == len(given) and len(f._parts) > 2, "the test needs the filter to have grown"
    assert all(i in f for i in given)
    one_by_one = IdFilter(capacity=1000)
    for i in given:
        one_by_one.add(i)
    bulk = IdFilter(capacity=1000)
    bulk.update(given)
    assert bulk._parts == one_by_one._parts and bulk.count == one_by_one.count, "update is add, many times"
    others = [f"other-{i}" for i in range(20_000)]
    rate = sum(i in f for i in others) / len(others)
    assert rate < 0.03, f"{rate:.2%} of unknown ids pass the filter"
    assert "op-0-😀" in IdFilter(["op-0-😀"]) and "op-1-😀" not in IdFilter()


async def test_sqlite_lookup_asks_the_database_about_ids_the_filter_lets_through(tmp_path):
    """An id the filter wrongly lets through is still not found: the database has the last word."""
    async with sqlite_store(tmp_path / "f.sqlite3", 2) as store:
        await append_snapshotted(store, "d", range(1, 13, 4), "a")  # snapshots compact the log
        log_ids, filters = store._index.log_ids["d"], store._index.filters
        assert "a1" not in log_ids and "a1" in filters["d"], "a1 was compacted after the document was opened"
        assert lookup(store._reader, "d", ["a1", "a12", "new"], log_ids, IdFilter(["new"])) == {"a12": 12}
        assert lookup(store._reader, "d", ["a1", "a12", "new"], log_ids, filters["d"]) == {"a1": 1, "a12": 12}


async def test_sqlite_a_document_with_many_compacted_ids_gets_no_filter_and_is_looked_up_right(tmp_path):
    path = tmp_path / "big.sqlite3"
    async with sqlite_store(path, 2) as store:
        text = await append_snapshotted(store, "d", range(1, 13, 4), "a")  # snapshots compact the log: op_ids gets a1 .. a10
    # Fewer than op_ids holds: building a filter would take too long.
    async with sqlite_store(path, 2, FILTER_BUILD_MAX=5) as again:
        await again.append("d", ops(13, 1, prefix="b", doc_len=len(text)), len(text) + 1)
        assert "d" in again._index.log_ids and "d" not in again._index.filters
        assert await again.find_ops("d", ["a1", "a10", "a12", "b13", "new"]) == {"a1": 1, "a10": 10, "a12": 12, "b13": 13}


#: The schema of collab's first SQLite files (user_version 1): a row per op.
SCHEMA_1 = """
CREATE TABLE docs (id TEXT PRIMARY KEY, rev INTEGER NOT NULL, size INTEGER NOT NULL, created REAL NOT NULL, updated REAL NOT NULL);
CREATE TABLE ops (doc TEXT NOT NULL, rev INTEGER NOT NULL, op TEXT NOT NULL, client TEXT NOT NULL, op_id TEXT NOT NULL,
                  PRIMARY KEY (doc, rev)) WITHOUT ROWID;
CREATE TABLE op_ids (doc TEXT NOT NULL, op_id TEXT NOT NULL, rev INTEGER NOT NULL, PRIMARY KEY (doc, op_id)) WITHOUT ROWID;
CREATE TABLE snapshots (doc TEXT NOT NULL, rev INTEGER NOT NULL, text TEXT NOT NULL, PRIMARY KEY (doc, rev)) WITHOUT ROWID;
PRAGMA user_version = 1;
"""


async def test_sqlite_opens_a_schema_1_file_and_keeps_every_op(tmp_path):
    """A file written by the per-op schema: its log moves into batch rows, nothing lost or renumbered."""
    import sqlite3

    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(SCHEMA_1)
    # "a": snapshot at 3 ("héllo"), log 2..6 with a gap-free run; ids 1 compacted. "b😀": no snapshot.
    db.execute("INSERT INTO docs VALUES ('a', 6, 8, 0, 1), ('b😀', 2, 2, 0, 2)")
    db.execute("INSERT INTO snapshots VALUES ('a', 3, 'héllo')")
    db.execute("INSERT INTO op_ids VALUES ('a', 'a1', 1)")
    rows = [("a", 2, '[1,"é"]', "c1", "a2"), ("a", 3, '[2,"llo"]', "c1", "a3"), ("a", 4, '[5,"😀"]', "c2", "a4"),
            ("a", 5, '[6,"!"]', "c1", "a5"), ("a", 6, '[7,"?"]', "c2", "a6"),
            ("b😀", 1, '["😀"]', "c3", "b1"), ("b😀", 2, '[1,"x"]', "c3", "b2")]
    db.executemany("INSERT INTO ops VALUES (?, ?, ?, ?, ?)", rows)
    db.commit()
    db.close()
    async with sqlite_store(path, 2) as store:
        state = await store.load("a", 2)
        assert (state.rev, state.text) == (6, "héllo😀!?")
        assert [(o.rev, o.op, o.client, o.id) for o in await store.ops_since("a", 3)] == [
            (4, [5, "😀"], "c2", "a4"), (5, [6, "!"], "c1", "a5"), (6, [7, "?"], "c2", "a6")]
        assert await store.find_ops("a", ["a1", "a2", "a6", "nope"]) == {"a1": 1, "a2": 2, "a6": 6}
        assert (await store.load("b😀", 10)).text == "😀x"
        await store.append("b😀", [StoredOp(3, [2, "y"], "c3", "b3")], 3)  # and writing goes on
        assert [o.id for o in await store.ops_since("b😀", 0)] == ["b1", "b2", "b3"]
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == sqlite_schema.VERSION
        assert not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'ops'").fetchone()
        assert db.execute("SELECT doc, first, rev FROM log ORDER BY doc, rev").fetchall() == [
            ("a", 2, 6), ("b😀", 1, 2), ("b😀", 3, 3)], "runs of consecutive revisions share a row"
        db.execute(f"PRAGMA user_version = {sqlite_schema.VERSION + 1}")
        db.commit()
    finally:
        db.close()
    with pytest.raises(SystemExit, match="newer collab"):
        async with sqlite_store(path, 2):
            pass


# -- a failed fsync is fatal (the store stops until restart) ---------------------------------


async def _in_flight(store: SqliteStore) -> None:
    """Return once a commit of ``store`` is written and waits for its fsync (a few loop turns)."""
    for _ in range(100):
        if store._started == store._settled + 1:
            return
        await asyncio.sleep(0)
    raise AssertionError("no commit went in flight")


@contextlib.asynccontextmanager
async def faulty_store(tmp_path, monkeypatch, **kwargs) -> AsyncIterator[tuple[SqliteStore, "os.PathLike"]]:
    """A FULL SQLite store whose fsync helper answers "failed" while the returned fault file exists."""
    from collab.store.walsync import FAULT_ENV

    fault = tmp_path / "fsync-fault"
    monkeypatch.setenv(FAULT_ENV, str(fault))  # the helper reads it when the store starts it
    store = SqliteStore(str(tmp_path / "f.sqlite3"), history_depth=5, **kwargs)
    await store.open()
    try:
        assert store.fsync_helper_pid is not None
        yield store, fault
    finally:
        if fault.exists():
            fault.unlink()
        os.kill(store.fsync_helper_pid or os.getpid(), signal.SIGCONT)
        await store.close()


async def test_sqlite_a_failed_fsync_stops_the_store_and_refuses_what_was_queued_behind_it(tmp_path, monkeypatch):
    from collab.store import StoreFailed

    async with faulty_store(tmp_path, monkeypatch) as (store, fault):
        await store.append("d", ops(1, 1), 1)
        assert store.health() is None
        fault.touch()
        failing = store.start_append("d", ops(2, 1, doc_len=1), 2)
        await asyncio.sleep(0)  # its commit is written and its fsync asked for...
        assert (store._started, store._settled) == (2, 1)
        behind = [store.start_append("d", ops(3, 1, doc_len=2), 3), store.start_append("😀", ops(1, 1), 1)]
        with pytest.raises(StoreFailed, match="fsync of the WAL failed"):
            await failing
        for fut in behind:  # ...and these, queued behind it, are refused, never written
            with pytest.raises(StoreFailed):
                await fut
        assert _committed_rev(store.path, "d") == 2 and _committed_rev(store.path, "😀") == 0
        fault.unlink()  # the disk seems fine again: the store stays stopped all the same
        with pytest.raises(StoreFailed):
            await store.append("other", ops(1, 1), 1)
        for read in (store.load("d", 5), store.find_op("d", "op1"), store.find_ops("d", ["op1"]),
                     store.ops_since("d", 0), store.list_docs(), store.revisions(["d"]), store.ping()):
            with pytest.raises(StoreFailed):
                await read
        assert "fsync of the WAL failed" in (store.health() or "") and "restart" in (store.health() or "")
        assert _committed_rev(store.path, "other") == 0
    again = SqliteStore(str(tmp_path / "f.sqlite3"), history_depth=5)
    await again.open()  # after a restart: whole, the failed commit's rows either there or not, never half
    try:
        state = await again.load("d", 5)
        assert (state.rev, state.text) in ((1, "x"), (2, "xx"))
        assert [o.rev for o in state.history] == list(range(1, state.rev + 1))
        await again.append("d", ops(state.rev + 1, 1, prefix="again", doc_len=state.rev), state.rev + 1)
        assert again.health() is None
    finally:
        await again.close()


@pytest.mark.parametrize("read", ["load", "find_op", "find_ops", "ops_since", "list_docs"])
async def test_sqlite_a_read_that_may_have_seen_an_unsynced_commit_raises_when_its_fsync_fails(tmp_path, monkeypatch, read):
    """A read that could see a commit whose fsync is outstanding answers only once it is durable:
    here the fsync fails, so the read raises instead of returning rows no fsync covered."""
    from collab.store import StoreFailed

    async with faulty_store(tmp_path, monkeypatch) as (store, fault):
        await store.append("d", ops(1, 1), 1)
        fault.touch()
        with _fsync_stopped(store):
            pending = asyncio.ensure_future(store.append("d", ops(2, 1, prefix="new", doc_len=1), 2))
            await _in_flight(store)
            calls = {"load": lambda: store.load("d", 5), "find_op": lambda: store.find_op("d", "new2"),
                     "find_ops": lambda: store.find_ops("d", ["new2"]), "ops_since": lambda: store.ops_since("d", 0),
                     "list_docs": store.list_docs}
            reading = asyncio.ensure_future(calls[read]())
            assert not await _wait_done(reading, 0.3)
        with pytest.raises(StoreFailed):
            await asyncio.wait_for(reading, 10)
        with pytest.raises(StoreFailed):
            await pending


async def test_sqlite_find_ops_answers_at_once_when_nothing_it_found_awaits_an_fsync(tmp_path):
    """The per-batch lookup of the hub does not wait for a commit in flight unless it found one of its ids."""
    store = SqliteStore(str(tmp_path / "n.sqlite3"), history_depth=5)
    await store.open()
    try:
        await store.append("d", ops(1, 2), 2)
        with _fsync_stopped(store):
            pending = asyncio.ensure_future(store.append("d", ops(3, 1, prefix="new", doc_len=2), 3))
            await _in_flight(store)
            assert await asyncio.wait_for(store.find_ops("d", ["op1", "nope"]), 10) == {"op1": 1}
            assert await asyncio.wait_for(store.find_ops("d", ["nope"]), 10) == {}
            waiting = asyncio.ensure_future(store.find_ops("d", ["new3"]))
            assert not await _wait_done(waiting, 0.3)
        assert await asyncio.wait_for(waiting, 10) == {"new3": 3}
        await pending
    finally:
        await store.close()


async def test_sqlite_health_reports_an_fsync_outstanding_longer_than_its_timeout(tmp_path):
    """A disk that does not answer holds every ack: health() says so once the timeout has passed."""
    store = SqliteStore(str(tmp_path / "h.sqlite3"), history_depth=5, fsync_timeout=0.05)
    await store.open()
    try:
        await store.append("d", ops(1, 1), 1)
        assert store.health() is None
        with _fsync_stopped(store):
            pending = asyncio.ensure_future(store.append("d", ops(2, 1, doc_len=1), 2))
            deadline = asyncio.get_running_loop().time() + 10
            while store.health() is None and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.01)  # waiting for the event: the timeout passing
            reason = store.health()
            assert reason is not None and "outstanding" in reason and "-wal" in reason
            with pytest.raises(Exception, match="outstanding"):
                await store.ping()
            assert not pending.done()
        await asyncio.wait_for(pending, 10)
        assert store.health() is None, "a hung fsync that answers is healthy again"
    finally:
        await store.close()


async def test_sqlite_the_ordering_rules_are_asserted(tmp_path):
    """No checkpoint while a commit waits for its fsync, and no second unsynced commit."""
    store = SqliteStore(str(tmp_path / "r.sqlite3"), history_depth=5)
    await store.open()
    try:
        with _fsync_stopped(store):
            pending = asyncio.ensure_future(store.append("d", ops(1, 1), 1))
            await _in_flight(store)
            with pytest.raises(AssertionError, match="rule 2"):
                store._checkpoint()
            with pytest.raises(AssertionError, match="rule 1"):
                store._pending = [pending_append(store)]
                store._commit_pending()
            store._pending = []
        await asyncio.wait_for(pending, 10)
    finally:
        await store.close()


def pending_append(store: SqliteStore):
    from collab.store.sqlite_write import Append

    return Append("x", ops(1, 1), 1, None, asyncio.get_running_loop().create_future(), None)


async def test_sqlite_one_documents_unstorable_append_fails_alone(tmp_path):
    """Appends of several documents share a transaction; one that cannot be stored (a lone
    surrogate, an integer too large for the log's JSON, a name or snapshot SQLite cannot bind)
    fails with its document's later appends, and the others commit."""
    path = str(tmp_path / "iso.sqlite3")
    store = SqliteStore(path, history_depth=5)
    await store.open()
    bad = [("surrogate", [StoredOp(1, ["\ud800"], "c1", "s1")]), ("huge", [StoredOp(1, [10**30, "x"], "c1", "h1")]),
           ("name\ud800", ops(1, 1)), ("id", [StoredOp(1, ["x"], "c1", "\udfff")])]
    try:
        futures = {doc: store.start_append(doc, o, 1) for doc, o in [("good😀", ops(1, 1)), *bad]}
        futures["snapshot"] = store.start_append("snapshot", ops(1, 1), 1, (1, "x\ud800"))  # fails in the write itself
        after = store.start_append("surrogate", ops(2, 1, doc_len=1), 2)  # would follow the refused one
        later_good = store.start_append("good😀", ops(2, 1, doc_len=1), 2)
        await asyncio.wait(list(futures.values()) + [after, later_good])
        assert store.commits == 1, "the test needs them all in one transaction"
        assert futures.pop("good😀").exception() is None and later_good.exception() is None
        for doc, fut in futures.items():
            assert fut.exception() is not None, doc
        assert isinstance(after.exception(), RevisionConflict)
        await store.append("surrogate", [StoredOp(1, ["ok"], "c1", "s1")], 2)  # the document goes on
    finally:
        await store.close()
    again = SqliteStore(path, history_depth=5)
    await again.open()
    try:
        assert {d.id: d.rev for d in await again.list_docs()} == {"good😀": 2, "surrogate": 1}
        assert (await again.load("good😀", 5)).text == "xx"
    finally:
        await again.close()


async def test_sqlite_does_not_open_when_the_disk_refuses_to_make_the_files_durable(tmp_path, monkeypatch):
    """What a run whose fsync failed left with the kernel is made durable, and dropped from the page
    cache (read back from the disk), before serving; if the disk refuses the fsync (a fault no test
    can cause, hence the stand-in), the store does not open."""
    import errno

    from collab.store import sqlite_schema

    path = tmp_path / "o.sqlite3"
    async with sqlite_store(path, 5) as store:
        await store.append("d", ops(1, 1), 1)
    synced: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    dropped: list[int] = []
    monkeypatch.setattr(sqlite_schema.os, "fsync", fsync)
    monkeypatch.setattr(sqlite_schema.os, "posix_fadvise", lambda fd, offset, length, advice: dropped.append(advice))
    async with sqlite_store(path, 5) as store:
        assert (await store.load("d", 5)).rev == 1
    assert len(synced) >= 2, "the database and its directory (and the WAL, if any) are fsynced at open"
    assert dropped and set(dropped) == {os.POSIX_FADV_DONTNEED}, "then read from the disk, not the page cache"

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(sqlite_schema.os, "fsync", failing)
    with pytest.raises(SystemExit, match="refused an fsync"):
        async with sqlite_store(path, 5):
            pass


async def test_postgres_keeps_u0000_and_migrates_schema_1_snapshots(tmp_path):
    """PostgreSQL's text type refuses U+0000, a valid character: snapshots are bytes (schema 2),
    and a database written by schema 1 is migrated on open with its snapshots intact."""
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
        for statement in MIGRATIONS[1]:
            await conn.execute(statement)
        await conn.execute("CREATE TABLE collab_schema (version INTEGER NOT NULL)")
        await conn.execute("INSERT INTO collab_schema (version) VALUES (1)")
        await conn.execute("INSERT INTO collab_docs VALUES ('old', 1, 4, 0, 0)")
        await conn.execute("INSERT INTO collab_ops VALUES ('old', 1, '[\"ab😀c\"]', 'c1', 'o1')")
        await conn.execute("INSERT INTO collab_snapshots VALUES ('old', 1, 'ab😀c')")
    finally:
        await conn.close()
    store = PostgresStore(PG_URL, history_depth=5, schema=schema)
    try:
        await store.open()
        assert (await store.load("old", 5)).text == "ab😀c"
        nul = "🦊\x00🐝"
        await store.append("nul", [StoredOp(1, [nul], "c1", "n1")], 3, (1, nul))
        assert (await store.load("nul", 5)).text == nul
    finally:
        await store.close()
        await drop_schema(schema)


@pytest.fixture
async def two_pg_stores() -> AsyncIterator:
    """Two PostgreSQL stores on one schema, as two processes of one deployment have (skipped without
    PostgreSQL); dropped after."""
    reason = await _pg_reason()
    if reason:
        pytest.skip(reason)
    from collab.store.postgres import PostgresStore

    schema = f"collab_test_{secrets.token_hex(6)}"
    mine, other = (PostgresStore(PG_URL, history_depth=5, schema=schema) for _ in range(2))
    await mine.open()
    await other.open()
    yield mine, other
    await mine.close()
    await other.close()
    await drop_schema(schema)


@pytest.mark.parametrize("together", [False, True], ids=["queued-while-written", "one-group-with-a-snapshot"])
async def test_postgres_an_append_built_on_a_refused_one_is_refused_though_its_predecessor_s_op_is_there(
        together, two_pg_stores):
    """A pipelined append names the op before it (its predecessor's last) and lands only if that op is at
    the revision it continues from. Another process may commit that very op at that very revision, after
    other ops (an edit forwarded to an old owner and ordered by the new one too): the predecessor is
    refused, and the append built on it must be refused with it, not land on a history it was not
    transformed against. Whether it was queued while its predecessor was written, or with it in one
    group that cannot be merged (a snapshot)."""
    mine, other = two_pg_stores
    await mine.append("d", [StoredOp(1, ["🐝"], "c0", "first")], 1)
    async with other.exclusive("d"):  # the other process holds the row while this one's append waits
        first = mine.start_append("d", [StoredOp(2, [1, "🦊"], "c1", "forwarded")], 2,
                                  (2, "🐝🦊") if together else None)
        if not together:
            async with mine.pool.acquire() as conn:  # this one's first append is written, and waits
                while not await conn.fetchval("SELECT count(*) FROM pg_locks WHERE NOT granted"):
                    await asyncio.sleep(0.01)
        second = mine.start_append("d", [StoredOp(3, [2, "!"], "c1", "built-on-it")], 3)
        # The other process orders the forwarded edit too, after another op of its own: same id, same revision.
        await other.append("d", [StoredOp(2, ["🌍", 1], "c2", "forwarded")], 2)
    with pytest.raises(RevisionConflict):
        await first
    with pytest.raises(RevisionConflict):
        await second
    assert (await other.load("d", 5)).text == "🌍🐝" and (await other.load("d", 5)).rev == 2


async def test_postgres_an_append_after_a_turn_that_retried_a_refused_chain_lands(two_pg_stores):
    """A pipelined chain is refused: another process ordered its first op (a forwarded edit) too, at the
    same revision. The document retries holding its row (``exclusive``), its other op now one revision
    later, where the chain ended; then it pipelines again. That next append named the refused chain's
    last op as the one before it (the last queued) and was refused at once, as built on a refused one,
    though the op it named had landed in the turn: a lost race and another turn, again and again."""
    mine, other = two_pg_stores
    await mine.append("d", [StoredOp(1, ["🐝"], "c0", "first")], 1)
    await other.append("d", [StoredOp(2, ["🌍", 1], "c2", "forwarded")], 2)
    chain = [mine.start_append("d", [StoredOp(2, [1, "🦊"], "c1", "forwarded")], 2),
             mine.start_append("d", [StoredOp(3, [2, "!"], "c1", "mine-3")], 3)]
    results = await asyncio.gather(*chain, return_exceptions=True)
    assert all(isinstance(r, RevisionConflict) for r in results)
    async with mine.exclusive("d"):  # the retry: "forwarded" is there already, "mine-3" ends where the chain did
        await mine.append("d", [StoredOp(3, [2, "!"], "c1", "mine-3")], 3)
    await mine.append("d", [StoredOp(4, [3, "?"], "c1", "mine-4")], 4)
    state = await other.load("d", 5)
    assert (state.rev, state.text) == (4, "🌍🐝!?")


async def test_postgres_turns_that_each_need_a_new_author_do_not_take_the_whole_pool():
    """A turn holding a document's row (``exclusive``) may need a second connection: a new author's row
    is written on its own. As many turns as the pool has connections each held one and waited for
    another for ever (in a deployment, until PostgreSQL ended them as idle in transaction and their
    documents failed, their clients disconnected)."""
    reason = await _pg_reason()
    if reason:
        pytest.skip(reason)
    from collab.store.postgres import PostgresStore

    schema = f"collab_test_{secrets.token_hex(6)}"
    store = PostgresStore(PG_URL, history_depth=5, schema=schema, min_connections=1, max_connections=2)
    await store.open()
    try:
        async def turn(i: int) -> None:
            async with store.exclusive(f"d{i}"):
                await store.append(f"d{i}", [StoredOp(1, [f"🐝{i}"], f"newcomer-{i}", f"op-{i}")], 2)

        await asyncio.wait_for(asyncio.gather(*(turn(i) for i in range(4))), 30)
        for i in range(4):
            assert (await store.load(f"d{i}", 5)).text == f"🐝{i}"
        assert store.exclusive_turns == 4
    finally:
        await store.close()
        await drop_schema(schema)


@pytest.mark.parametrize("many", [False, True], ids=["APPEND", "APPEND_MANY"])
async def test_postgres_an_append_reads_only_its_own_ids_however_long_the_history(many):
    """The check that an append's op ids are new probes the index once per id, also under a generic
    plan made while the document was empty (a connection's prepared statement keeps its plan):
    ``op_id = ANY(...)`` read every id of the document instead, so each append cost time in
    proportion to the document's history. So does the fence on the append before it."""
    reason = await _pg_reason()
    if reason:
        pytest.skip(reason)
    import json

    from collab.store import postgres as pg

    schema = f"collab_test_{secrets.token_hex(6)}"
    store = pg.PostgresStore(PG_URL, history_depth=5, schema=schema)
    await store.open()

    async def literals(conn, args: tuple) -> str:  # EXECUTE takes no bind parameters: typed SQL literals
        out = []
        for param, arg in zip((await conn.prepare(statement)).get_parameters(), args):
            sql_type = await conn.fetchval("SELECT format_type($1, NULL)", param.oid)
            out.append(f"{await conn.fetchval(f'SELECT quote_nullable($1::{sql_type})', arg)}::{sql_type}")
        return ", ".join(out)

    def op_id_reads(node: dict) -> list[tuple[str, int]]:
        """Rows each scan of ``collab_op_ids`` (or its index) looked at: returned, or filtered out."""
        scans = node.get("Relation Name") == "collab_op_ids" or node.get("Index Name", "").startswith("collab_op_ids")
        looked = (node["Actual Rows"] + node.get("Rows Removed by Filter", 0)) * node["Actual Loops"]
        own = [(node["Node Type"], looked)] if scans and node["Node Type"] != "ModifyTable" else []
        return own + [r for child in node.get("Plans", []) for r in op_id_reads(child)]

    statement = pg.APPEND_MANY if many else pg.APPEND

    def append_args(rev: int, count: int, prefix: str, after: str | None = None) -> tuple[list[StoredOp], tuple]:
        ops = [StoredOp(rev + k + 1, [rev + k, "😀"] if rev + k else ["😀"], "c1", f"{prefix}-{rev + k}", "ana")
               for k in range(count)]
        args = pg._append_args("long", ops, rev + count, None, [1] * count, store.session_gap, after=after)
        return ops, pg._append_many_args([args]) if many else args

    try:
        await store.append("long", append_args(0, 1, "first")[0], 1)
        async with store.pool.acquire() as conn:  # held: the appends below go through other connections
            await conn.execute("SET plan_cache_mode = force_generic_plan")
            await conn.execute(f"PREPARE append_check AS {statement}")
            first = await literals(conn, append_args(1, 3, "a")[1])
            await conn.fetchval(f"EXPLAIN (FORMAT JSON) EXECUTE append_check({first})")  # plans it, empty
            rev = 1
            for _ in range(5):  # 2,501 ids in the document
                await store.append("long", append_args(rev, 500, "id")[0], rev + 500)
                rev += 500
            new, args = append_args(rev, 3, "new", after=f"id-{rev - 1}")  # the op at revision rev
            explained = conn.transaction()  # EXPLAIN ANALYZE runs the append: rolled back below
            await explained.start()
            try:
                plan = json.loads(await conn.fetchval(
                    f"EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE append_check({await literals(conn, args)})"))
            finally:
                await explained.rollback()
                await conn.execute("DEALLOCATE append_check")
                await conn.execute("RESET plan_cache_mode")  # the pool hands connections on as they are
        reads = op_id_reads(plan[0]["Plan"])
        assert reads, "the plan reads collab_op_ids"
        assert all(rows <= len(new) for _, rows in reads), f"an append read ids not its own: {reads}"
        assert (await store.load("long", 5)).rev == rev, "the explained append was rolled back"
    finally:
        await store.drop_schema()
        await store.close()


async def test_postgres_one_group_commit_writes_many_documents_as_if_each_alone():
    """One group: a document's two pipelined appends (merged into one), another's single append, one
    with a snapshot, a first append, and one that lost its revision. Each lands, or is refused, as if
    written alone; the group is one transaction, and each op keeps its own author and client."""
    reason = await _pg_reason()
    if reason:
        pytest.skip(reason)
    from collab.store.postgres import PostgresStore

    store = PostgresStore(PG_URL, history_depth=5, schema=f"collab_test_{secrets.token_hex(6)}")
    await store.open()
    zoe, ana = "Zoë 👩‍💻", "ana"
    try:
        for doc in ("pair", "single", "snap", "lost"):
            await store.append(doc, [StoredOp(1, ["ab"], "c1", f"{doc}-1", zoe)], 2)
        commits = store.commits
        results = await asyncio.gather(
            store.start_append("pair", [StoredOp(2, [2, "🙂"], "c1", "pair-2", zoe)], 3),
            store.start_append("pair", [StoredOp(3, [3, "!"], "c2", "pair-3", ana),
                                        StoredOp(4, [4, "?"], "c2", "pair-4", ana)], 5),
            store.start_append("single", [StoredOp(2, [1, -1], "c2", "single-2", ana)], 1),
            store.start_append("snap", [StoredOp(2, [2, "é"], "c1", "snap-2", zoe)], 3, (2, "abé")),
            store.start_append("new", [StoredOp(1, ["🌍"], "c1", "new-1", ana)], 1),
            store.start_append("lost", [StoredOp(3, [2, "x"], "c1", "lost-3", ana)], 3),  # rev 2 is not there
            return_exceptions=True,
        )
        assert [type(r).__name__ for r in results] == ["NoneType"] * 5 + ["RevisionConflict"]
        assert store.commits == commits + 1
        loaded = {doc: (s.rev, s.text) for doc in ("pair", "single", "snap", "new", "lost")
                  for s in [await store.load(doc, 5)]}
        assert loaded == {"pair": (4, "ab🙂!?"), "single": (2, "a"), "snap": (2, "abé"), "new": (1, "🌍"),
                          "lost": (1, "ab")}
        pair = await store.ops_since("pair", 0)
        assert [(o.rev, o.op, o.client, o.id, o.name) for o in pair] == [
            (1, ["ab"], "c1", "pair-1", zoe), (2, [2, "🙂"], "c1", "pair-2", zoe),
            (3, [3, "!"], "c2", "pair-3", ana), (4, [4, "?"], "c2", "pair-4", ana)]
        assert await store.find_ops("pair", ["pair-2", "pair-3", "pair-4"]) == {"pair-2": 2, "pair-3": 3, "pair-4": 4}
        assert await store.find_op("lost", "lost-3") is None
        (session,) = await store.sessions("pair")
        assert (session.first, session.last, session.inserted, session.deleted) == (1, 4, 5, 0)
        assert len(session.authors) == 2
        (single,) = await store.sessions("single")
        assert (single.first, single.last, single.inserted, single.deleted) == (1, 2, 2, 1)
    finally:
        await store.drop_schema()
        await store.close()
