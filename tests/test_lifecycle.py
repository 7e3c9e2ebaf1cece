"""A document's life: deleted into the trash, restored, purged after COLLAB_TRASH_DAYS.

Real servers (in-process on SQLite and the memory store; two processes on
one PostgreSQL and one Redis), real WebSockets, the real ``collab`` command.
"""

from __future__ import annotations

import asyncio
import secrets
import time

import pytest

from collab import ot
from collab.store.base import StoredOp
from collab.store.memory import MemoryStore
from collab.store.sqlite import SqliteStore
from test_revocation import SECRET, api, closed, connect, mint, refused, two_processes  # noqa: F401 (fixture)
from test_cli import run_cli
from test_scaleout import PG_URL, _unavailable

TEXT = "# Fox notes 🦊\n\nGrüße 👋🏽"
DAY = 86400.0


# -- the store -----------------------------------------------------------------------------------


async def _open_store(kind: str, tmp_path, **options):
    """A fresh store of ``kind`` (PostgreSQL in a schema of its own), opened; skips without PostgreSQL."""
    if kind == "postgres":
        reason = await _unavailable()
        if reason:
            pytest.skip(reason)
        from collab.store.postgres import PostgresStore

        s = PostgresStore(PG_URL, history_depth=5, schema=f"collab_trash_{secrets.token_hex(5)}", **options)
    elif kind == "sqlite":
        s = SqliteStore(str(tmp_path / "t.sqlite3"), history_depth=5, **options)
    else:
        s = MemoryStore(history_depth=5, **options)
    await s.open()
    return s


async def _close_store(kind: str, s) -> None:
    if kind == "postgres":
        await s.drop_schema()
    await s.close()


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def store(request, tmp_path):
    s = await _open_store(request.param, tmp_path)
    yield s
    await _close_store(request.param, s)


async def test_the_store_moves_documents_in_and_out_of_the_trash_and_purges_them(store):
    await store.append("fox", [StoredOp(1, ["🦊"], "c", "f1")], 1)
    await store.append("bee", [StoredOp(1, ["🐝"], "c", "b1")], 1)
    assert await store.set_deleted("nobody", 5.0) is False, "a name without edits has nothing to delete"
    assert await store.set_deleted("fox", 5.0) is True
    assert await store.set_deleted("fox", 6.0) is False, "already in the trash"
    assert [d.id for d in await store.list_docs()] == ["bee"]
    assert [(d.id, d.deleted, d.rev) for d in await store.trash()] == [("fox", 5.0, 1)]
    assert await store.set_deleted("fox", None) is True
    assert await store.set_deleted("fox", None) is False
    assert sorted(d.id for d in await store.list_docs()) == ["bee", "fox"]

    await store.set_deleted("fox", 5.0)
    await store.set_deleted("bee", 50.0)
    assert await store.purge(10.0, keep=set()) == ["fox"]
    assert await store.purge(100.0, keep={"bee"}) == [], "a document open in this process is kept"
    assert [d.id for d in await store.trash()] == ["bee"]
    state = await store.load("fox", 5)
    assert (state.rev, state.text) == (0, ""), "purged for good: the name is free again"
    await store.append("fox", [StoredOp(1, ["new 🦊"], "c", "f1")], 5)
    assert (await store.load("fox", 5)).text == "new 🦊", "and a purged op id does not haunt the new document"


async def test_every_change_to_the_trash_or_the_names_moves_the_shared_stores_version(tmp_path):
    """PostgreSQL: a deletion, a restore, a rename and a purge each move the version (in their own
    transaction), and nothing else does, so that other processes re-read the trash only then."""
    store = await _open_store("postgres", tmp_path)
    try:
        seen = [await store.lifecycle_version()]

        async def moved() -> bool:
            seen.append(await store.lifecycle_version())
            return seen[-1] != seen[-2]

        await store.append("fox 🦊", [StoredOp(1, ["🦊"], "c", "f1")], 1)
        assert not await moved(), "an edit is not a change to the trash"
        assert await store.set_deleted("fox 🦊", 5.0) and await moved()
        assert not await store.set_deleted("fox 🦊", 6.0) and not await moved(), "already in: nothing changed"
        assert not await store.set_deleted("nobody", 6.0) and not await moved()
        assert await store.set_deleted("fox 🦊", None) and await moved()
        assert await store.rename("fox 🦊", "den 🦊") == "ok" and await moved()
        assert await store.rename("fox 🦊", "den 🦊") == "missing" and not await moved()
        await store.set_deleted("den 🦊", 5.0)
        await moved()
        assert await store.purge(1.0, keep=set()) == [] and not await moved()
        assert await store.purge(10.0, keep=set()) == ["den 🦊"] and await moved()
    finally:
        await _close_store("postgres", store)


async def test_a_process_reads_the_shared_trash_only_when_it_changed(tmp_path, monkeypatch):
    """Two stores on one schema stand for two processes. Polling an unchanged trash reads only its
    version; a deletion, a restore or a rename by the other is seen at the next poll. A change made
    without moving the version (a process of an older collab) is still seen, at the next full read."""
    from collab import lifecycle
    from collab.lifecycle import Trash
    from collab.store.postgres import PostgresStore

    here = await _open_store("postgres", tmp_path)
    there = PostgresStore(PG_URL, history_depth=5, schema=here.schema)
    await there.open()
    try:
        reads = []
        real_trash = here.trash

        async def counted_trash():
            reads.append(1)
            return await real_trash()

        here.trash = counted_trash  # counts the reads of the real store, which answers them
        monkeypatch.setattr(lifecycle, "REREAD_SECONDS", float("inf"))  # no full read falls due meanwhile
        deleted, renamed = [], []
        trash = Trash(here, 30, deleted.append, lambda old, new: renamed.append((old, new)))
        await trash.refresh()
        assert len(reads) == 1
        for _ in range(3):
            await trash.refresh()
        assert len(reads) == 1, "nothing changed: only the version was read"

        await there.append("fox 🦊", [StoredOp(1, ["🦊"], "c", "f1")], 1)
        await trash.refresh()
        assert len(reads) == 1, "an edit is no change to the trash"
        await there.set_deleted("fox 🦊", 5.0)
        await trash.refresh()
        assert len(reads) == 2 and deleted == ["fox 🦊"] and trash.is_deleted("fox 🦊")
        await there.set_deleted("fox 🦊", None)
        await trash.refresh()
        assert not trash.is_deleted("fox 🦊")
        await there.rename("fox 🦊", "den 🦊")
        await trash.refresh()
        assert renamed == [("fox 🦊", "den 🦊")] and trash.renamed == {"fox 🦊": "den 🦊"}
        await trash.refresh()
        assert len(reads) == 4

        async with there.pool.acquire() as conn:  # as an older collab deletes: the version stays
            await conn.execute("UPDATE collab_docs SET deleted = 7 WHERE id = 'den 🦊'")
        await trash.refresh()
        assert not trash.is_deleted("den 🦊") and len(reads) == 4
        monkeypatch.setattr(lifecycle, "REREAD_SECONDS", 0.0)  # the next full read is due
        await trash.refresh()
        assert trash.is_deleted("den 🦊") and deleted == ["fox 🦊", "den 🦊"]
    finally:
        await there.close()
        await _close_store("postgres", here)


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def gapless(request, tmp_path):
    """A store where every append starts an editing session (so sessions close into their table)."""
    s = await _open_store(request.param, tmp_path, session_gap=0)
    yield s
    await _close_store(request.param, s)


async def _write(store, doc: str, edits: list[tuple[list, str]]) -> list[str]:
    """Append ``edits`` (op, author) one revision at a time, each with a snapshot (so checkpoints); the texts."""
    texts, text = [], ""
    for rev, (op, who) in enumerate(edits, start=1):
        text = ot.apply(text, op)
        await store.append(doc, [StoredOp(rev, op, f"c-{who}", f"{doc}-{rev}", who)], len(text), (rev, text))
        texts.append(text)
    return texts


async def test_rename_and_purge_take_the_history_with_them(gapless):
    """Every revision, the sessions and the authorship move with a rename and go with a purge."""
    store = gapless
    await _write(store, "den", [(["🦊"], "ana"), ([1, " fox"], "bo"), (["# ", 5], "ana")])
    assert await store.rename("den", "lair 🦊") == "ok"
    assert await store.text_at("lair 🦊", 2) == "🦊 fox"
    assert len(await store.sessions("lair 🦊")) == 3
    # A new document under the old name has only its own history.
    texts = await _write(store, "den", [(["🐝"], "cy"), ([1, "!"], "cy")])
    assert [await store.text_at("den", rev) for rev in (1, 2)] == texts
    assert {a["author"] for a in await store.authorship("den")} == {"cy"}
    assert {tuple(s.authors) for s in await store.sessions("den")} == {("cy",)}
    await store.set_deleted("lair 🦊", 5.0)
    assert await store.purge(10.0, keep=set()) == ["lair 🦊"]
    texts = await _write(store, "lair 🦊", [(["new"], "cy"), ([3, " 👋🏽"], "cy")])
    assert [await store.text_at("lair 🦊", rev) for rev in (1, 2)] == texts
    assert {tuple(s.authors) for s in await store.sessions("lair 🦊")} == {("cy",)}, "nothing left from before"


# -- one process -------------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "memory"])
async def secured(request, server_factory):
    extra = {"database_url": "memory:"} if request.param == "memory" else {}
    return await server_factory(secret=SECRET, **extra)


async def test_deleting_closes_the_editors_and_the_trash_restores_it(secured):
    s, owner = secured, mint(["notes", "other", "never-edited"])
    await api("PUT", f"{s.base_url}/api/docs/notes/text", owner, content=TEXT.encode())
    await api("PUT", f"{s.base_url}/api/docs/other/text", owner, content="🐝".encode())
    first, _ = await connect(s.ws_url, "notes", owner)
    second, _ = await connect(s.ws_url, "notes", owner)
    bystander, _ = await connect(s.ws_url, "other", owner)

    reader = mint(["notes"], role="read")
    assert (await api("DELETE", f"{s.base_url}/api/docs/notes", reader)).status_code == 403
    assert (await api("DELETE", f"{s.base_url}/api/docs/notes", mint(["other"]))).status_code == 403
    before = time.time()
    r = await api("DELETE", f"{s.base_url}/api/docs/notes", owner)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == "notes" and body["deleted"] >= before - 1
    assert body["purge_at"] == pytest.approx(body["deleted"] + 30 * DAY)
    for conn in (first, second):
        assert await closed(conn) == (4004, "document deleted: it is in the trash; restore it to open it")
    assert await refused(s.ws_url, "notes", owner) == (4004, "document deleted: it is in the trash; restore it to open it")
    assert [d["id"] for d in (await api("GET", f"{s.base_url}/api/docs", owner)).json()] == ["other"]
    for method, path in (("GET", "/api/docs/notes"), ("GET", "/api/docs/notes/text"), ("PUT", "/api/docs/notes/text")):
        r = await api(method, s.base_url + path, owner, content=b"x" if method == "PUT" else None)
        assert r.status_code == 404 and "trash" in r.text, (method, path)
    assert (await api("DELETE", f"{s.base_url}/api/docs/notes", owner)).status_code == 404
    assert await refused(s.ws_url, "notes", "") == (4001, "missing token"), "the trash is told only to whom the token lets in"
    assert (await api("GET", f"{s.base_url}/api/docs/notes", mint(["other"]))).status_code == 403
    assert (await api("DELETE", f"{s.base_url}/api/docs/never-edited", owner)).status_code == 404

    trash = (await api("GET", f"{s.base_url}/api/trash", owner)).json()
    assert [(t["id"], t["deleted"], t["purge_at"]) for t in trash] == [("notes", body["deleted"], body["purge_at"])]
    assert (await api("GET", f"{s.base_url}/api/trash", mint(["other"]))).json() == [], "only what the token reaches"

    assert (await api("POST", f"{s.base_url}/api/trash/notes/restore", reader)).status_code == 403
    r = await api("POST", f"{s.base_url}/api/trash/notes/restore", owner)
    assert r.status_code == 200 and r.json()["id"] == "notes"
    assert (await api("POST", f"{s.base_url}/api/trash/notes/restore", owner)).status_code == 404
    assert (await api("GET", f"{s.base_url}/api/docs/notes", owner)).json()["text"] == TEXT
    conn, welcome = await connect(s.ws_url, "notes", owner)
    assert welcome["rev"] == 1
    await conn.close()
    await bystander.send('{"type":"presence","rev":1,"cursor":{"anchor":0,"head":1}}')
    await bystander.close()
    assert (await api("GET", f"{s.base_url}/api/trash", owner)).json() == []


async def test_the_trash_is_purged_when_its_time_is_up(server_factory, tmp_path):
    data = str(tmp_path / "purge")
    s = await server_factory(data_dir=data)
    await api("PUT", f"{s.base_url}/api/docs/old/text", content=TEXT.encode())
    await api("PUT", f"{s.base_url}/api/docs/kept/text", content="🐝".encode())
    assert (await api("DELETE", f"{s.base_url}/api/docs/old")).status_code == 200
    await s.stop()
    s = await server_factory(data_dir=data)  # 30 days: kept
    assert [t["id"] for t in (await api("GET", f"{s.base_url}/api/trash")).json()] == ["old"]
    assert await s.app.state.collab.trash.purge(now=time.time() + 29 * DAY) == []
    assert await s.app.state.collab.trash.purge(now=time.time() + 31 * DAY) == ["old"]
    assert (await api("GET", f"{s.base_url}/api/trash")).json() == []
    assert (await api("POST", f"{s.base_url}/api/trash/old/restore")).status_code == 404
    assert (await api("GET", f"{s.base_url}/api/docs/old")).json() == {"id": "old", "rev": 0, "text": ""}
    assert (await api("DELETE", f"{s.base_url}/api/docs/kept")).status_code == 200
    await s.stop()
    s = await server_factory(data_dir=data, trash_days=1e-9)  # COLLAB_TRASH_DAYS tiny: purged at start
    assert (await api("GET", f"{s.base_url}/api/trash")).json() == []
    assert (await api("GET", f"{s.base_url}/api/docs")).json() == []


async def test_cli_rm_trash_restore(server_factory):
    s = await server_factory(secret=SECRET)
    owner = mint(["*"])
    await api("PUT", f"{s.base_url}/api/docs/notes-1/text", owner, content=TEXT.encode())
    code, out, err = await run_cli("rm", s.base_url, "notes-1", "--token", owner)
    assert code == 0 and "in the trash until" in err, err
    code, out, err = await run_cli("trash", s.base_url, COLLAB_SECRET=SECRET)
    assert code == 0 and out.startswith("notes-1  deleted "), out
    code, out, err = await run_cli("rm", s.base_url, "notes-1", COLLAB_SECRET=SECRET)
    assert code == 1 and "HTTP 404" in err and "already in the trash" in err
    code, out, err = await run_cli("restore", s.base_url, "notes-1", COLLAB_SECRET=SECRET)
    assert code == 0 and "is back, at rev 1" in err, err
    code, out, err = await run_cli("trash", s.base_url, COLLAB_SECRET=SECRET)
    assert code == 0 and out == "" and "empty" in err
    code, out, err = await run_cli("rm", s.base_url, "notes-1", "--token", mint(["notes-1"], role="read"))
    assert code == 1 and "HTTP 403" in err


# -- two processes ----------------------------------------------------------------------------------


async def test_deleting_through_one_process_closes_the_editors_of_the_other(two_processes):  # noqa: F811
    a, b = two_processes
    owner = mint(["notes"])
    await api("PUT", f"{a.base_url}/api/docs/notes/text", owner, content=TEXT.encode())
    on_b, _ = await connect(b.ws_url, "notes", owner)
    assert (await api("DELETE", f"{a.base_url}/api/docs/notes", owner)).status_code == 200
    assert (await closed(on_b))[0] == 4004
    assert (await refused(b.ws_url, "notes", owner))[0] == 4004
    assert (await api("POST", f"{b.base_url}/api/trash/notes/restore", owner)).status_code == 200
    conn, welcome = await connect(b.ws_url, "notes", owner)
    assert welcome["rev"] == 1
    await conn.close()
    for p in (a, b):  # restored everywhere: the other process's copy of the trash follows
        await asyncio.wait_for(_until_open(p, owner), 10)


async def _until_open(proc, token: str) -> None:
    while (await api("GET", f"{proc.base_url}/api/docs/notes", token)).status_code != 200:
        await asyncio.sleep(0.05)


async def test_a_chore_that_fails_logs_one_line_and_runs_again(caplog):
    import logging

    from collab.chores import Chores

    calls = []
    second = asyncio.Event()

    async def flaky() -> None:
        calls.append(len(calls))
        if len(calls) == 1:
            raise OSError("the store is away 🦊")
        second.set()

    chores = Chores(logging.getLogger("collab.test"))
    chores.every(0, flaky, "reading the trash", "collab-test-chore")
    await asyncio.wait_for(second.wait(), 10)
    await chores.close()
    assert calls[:2] == [0, 1]
    assert [r.getMessage() for r in caplog.records if r.name == "collab.test"] == [
        "reading the trash failed (the store is away 🦊); retrying"]
