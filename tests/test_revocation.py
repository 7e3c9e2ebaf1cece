"""Taking access back: share links and tokens are revoked, lowered, or expire, and sessions hear it.

Real servers (in-process on SQLite, the memory store, and two processes on
one PostgreSQL and one Redis), real WebSockets, the real ``collab`` command.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sqlite3
import time

import httpx
import pytest
import websockets

from collab import auth
from collab.store import sqlite_schema
from collab.store.base import Credential
from collab.store.memory import MemoryStore
from collab.store.sqlite import SqliteStore
from conftest import ServerProcess
from test_cli import run_cli
from test_scaleout import PG_URL, REDIS_URL, _drop_test_state, _unavailable, _with_param

SECRET = "r" * 40
TEXT = "Grüße 🦊 from the fox 👋🏽"


def mint(docs, role="edit", ttl=3600.0, name="Ada 🦊", **kw) -> str:
    return auth.mint_token(SECRET, docs, role=role, ttl_seconds=ttl, name=name, **kw)


async def api(method: str, url: str, token: str | None = None, **kw) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(timeout=10) as c:
        return await c.request(method, url, headers=headers, **kw)


async def share_link(base: str, doc: str, token: str, role: str = "edit") -> dict:
    r = await api("POST", f"{base}/api/docs/{doc}/share", token, json={"role": role})
    assert r.status_code == 200, r.text
    return r.json()


async def connect(ws_base: str, doc: str, token: str):
    conn = await websockets.connect(f"{ws_base}/ws/{doc}?token={token}", open_timeout=10, max_queue=None)
    await conn.send('{"type":"join","user":{"name":"Bea 🐝","color":"#d33"}}')
    while True:
        msg = json.loads(await asyncio.wait_for(conn.recv(), 10))
        if msg["type"] == "welcome":
            return conn, msg


async def closed(conn, timeout: float = 10) -> tuple[int, str]:
    """Wait for the server's close; its code and reason."""
    try:
        while True:
            await asyncio.wait_for(conn.recv(), timeout)
    except websockets.ConnectionClosed as exc:
        assert exc.rcvd is not None, "closed without a close frame"
        return exc.rcvd.code, exc.rcvd.reason


async def refused(ws_base: str, doc: str, token: str) -> tuple[int, str]:
    conn = await websockets.connect(f"{ws_base}/ws/{doc}?token={token}", open_timeout=10)
    return await closed(conn)


# -- the store keeps credentials -------------------------------------------------------------


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_credentials_are_kept_and_changes_come_in_order(kind, tmp_path):
    store = MemoryStore() if kind == "memory" else SqliteStore(str(tmp_path / "c.sqlite3"))
    await store.open()
    try:
        a = await store.put_credential(Credential("a", "notes", "edit", 1.0, None, "Ada 🦊"))
        b = await store.put_credential(Credential("b", "notes", "read", 2.0, 99.0))
        await store.put_credential(Credential("c", "other", "read", 3.0, None))
        assert [c.id for c in await store.doc_credentials("notes")] == ["a", "b"]
        revoked = await store.put_credential(Credential("a", "notes", "edit", 1.0, None, "Ada 🦊", revoked=5.0))
        assert revoked.seq > b.seq > a.seq
        assert [c.id for c in await store.credential_changes(b.seq)] == ["c", "a"]
        assert (await store.get_credential("a")).name == "Ada 🦊"
        assert await store.get_credential("nope") is None
        assert await store.prune_credentials(100.0) == 1, "b expired at 99"
        assert await store.get_credential("b") is None and await store.get_credential("c") is not None
    finally:
        await store.close()
    if kind == "sqlite":  # durable: a new handle on the file sees it
        again = SqliteStore(str(tmp_path / "c.sqlite3"))
        await again.open()
        try:
            assert (await again.get_credential("a")).revoked == 5.0
        finally:
            await again.close()


async def test_a_version_3_sqlite_file_migrates_and_keeps_its_documents(tmp_path):
    """The version before the lifecycle tables (3: full history) gains them and keeps its documents."""
    path = tmp_path / "v3.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(sqlite_schema.SCHEMA)
    db.execute("INSERT INTO docs (id, rev, size, created, updated) VALUES ('fox', 1, 8, 0, 1)")
    db.execute("INSERT INTO log (doc, rev, first, ops) VALUES ('fox', 1, 1, ?)", ('[[["🦊 fox 🦊"],"c1","o1"]]',))
    db.execute("PRAGMA user_version = 3")
    db.commit()
    db.close()
    store = SqliteStore(str(path))
    await store.open()
    try:
        assert (await store.load("fox", 10)).text == "🦊 fox 🦊"
        await store.put_credential(Credential("x", "fox", "read", 1.0, None))
        assert [c.id for c in await store.doc_credentials("fox")] == ["x"]
    finally:
        await store.close()
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == sqlite_schema.VERSION
        columns = {r[1] for r in db.execute("PRAGMA table_info(docs)")}
        assert {"deleted", "title"} <= columns
    finally:
        db.close()


async def test_a_version_3_postgres_schema_migrates(tmp_path):
    reason = await _unavailable()
    if reason:
        pytest.skip(reason)
    import asyncpg

    from collab.store.postgres import MIGRATIONS, PostgresStore

    schema = f"collab_mig_{secrets.token_hex(5)}"
    conn = await asyncpg.connect(PG_URL, timeout=5)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
        await conn.execute(f'SET search_path TO "{schema}"')
        for v in (1, 2, 3):
            for statement in MIGRATIONS[v]:
                await conn.execute(statement)
        await conn.execute("CREATE TABLE collab_schema (version INTEGER NOT NULL)")
        await conn.execute("INSERT INTO collab_schema (version) VALUES (1), (2), (3)")
        await conn.execute("INSERT INTO collab_docs (id, rev, size, created, updated) VALUES ('fox', 1, 5, 0, 0)")
        await conn.execute("INSERT INTO collab_ops (doc, rev, op, client, op_id) "
                           "VALUES ('fox', 1, '[\"🦊 fox\"]', 'c1', 'o1')")
    finally:
        await conn.close()
    store = PostgresStore(PG_URL, history_depth=5, schema=schema)
    try:
        await store.open()
        assert (await store.load("fox", 5)).text == "🦊 fox"
        first = await store.put_credential(Credential("x", "fox", "read", 1.0, None, "Ada 🦊"))
        second = await store.put_credential(Credential("x", "fox", "read", 1.0, None, "Ada 🦊", revoked=2.0))
        assert second.seq > first.seq
        assert [c.revoked for c in await store.credential_changes(first.seq)] == [2.0]
        await store.put_credential(Credential("old", "fox", "read", 1.0, 50.0))
        assert await store.prune_credentials(100.0) == 1 and await store.get_credential("x") is not None
        assert [d.id for d in await store.list_docs()] == ["fox"]
    finally:
        await store.drop_schema()
        await store.close()


# -- one process -----------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "memory"])
async def secured(request, server_factory):
    extra = {"database_url": "memory:"} if request.param == "memory" else {}
    return await server_factory(secret=SECRET, **extra)


async def test_revoking_a_link_closes_its_sessions_and_refuses_it_after(secured):
    s, owner = secured, mint(["notes"])
    await api("PUT", f"{s.base_url}/api/docs/notes/text", owner, content=TEXT.encode())
    link = await share_link(s.base_url, "notes", owner)
    listed = (await api("GET", f"{s.base_url}/api/docs/notes/links", owner)).json()
    assert [(l["id"], l["role"], l["by"], l["revoked"]) for l in listed] == [(link["id"], "edit", "Ada 🦊", None)]
    first, _ = await connect(s.ws_url, "notes", link["token"])
    second, welcome = await connect(s.ws_url, "notes", link["token"])
    assert welcome["role"] == "edit"
    other = await share_link(s.base_url, "notes", owner, "read")
    bystander, _ = await connect(s.ws_url, "notes", other["token"])

    r = await api("POST", f"{s.base_url}/api/tokens/revoke", owner, json={"token": link["url"]})
    assert r.status_code == 200 and r.json()["revoked"] is not None
    for conn in (first, second):
        code, reason = await closed(conn)
        assert code == 4001 and "revoked" in reason
    assert await refused(s.ws_url, "notes", link["token"]) == (4001, "token revoked: this link was revoked; ask for a new one")
    r = await api("GET", f"{s.base_url}/api/docs/notes", link["token"])
    assert r.status_code == 401 and "revoked" in r.text
    # The other link goes on.
    await bystander.send('{"type":"presence","rev":1,"cursor":{"anchor":0,"head":1}}')
    assert (await api("GET", f"{s.base_url}/api/docs/notes", other["token"])).json()["text"] == TEXT
    await bystander.close()
    listed = (await api("GET", f"{s.base_url}/api/docs/notes/links", owner)).json()
    assert {l["id"]: l["revoked"] is not None for l in listed} == {link["id"]: True, other["id"]: False}


async def test_a_lowered_link_rejoins_read_only_and_can_no_longer_edit(secured):
    s, owner = secured, mint(["notes"])
    link = await share_link(s.base_url, "notes", owner)
    conn, welcome = await connect(s.ws_url, "notes", link["token"])
    assert welcome["role"] == "edit"
    r = await api("POST", f"{s.base_url}/api/tokens/role", owner, json={"id": link["id"], "role": "read"})
    assert r.status_code == 200 and r.json()["role"] == "read"
    code, reason = await closed(conn)
    assert code == 1012 and "read-only" in reason
    conn, welcome = await connect(s.ws_url, "notes", link["token"])
    assert welcome["role"] == "read"
    await conn.send('{"type":"op","rev":0,"op":["🦊"],"id":"x1"}')
    msg = json.loads(await asyncio.wait_for(conn.recv(), 10))
    assert msg["type"] == "error" and msg["code"] == "forbidden"
    await conn.close()
    r = await api("PUT", f"{s.base_url}/api/docs/notes/text", link["token"], content="🐝".encode())
    assert r.status_code == 403
    r = await api("POST", f"{s.base_url}/api/tokens/role", owner, json={"id": link["id"], "role": "edit"})
    assert r.status_code == 400, "a role is only ever lowered"


async def test_a_session_is_closed_when_its_token_expires(secured):
    s = secured
    token = mint(["notes"], ttl=1.0)
    conn, _ = await connect(s.ws_url, "notes", token)
    assert await closed(conn) == (4001, "token expired: ask for a new link")


async def test_expired_and_forged_credentials_say_which(secured):
    s = secured
    old = auth.mint_token(SECRET, ["notes"], ttl_seconds=10, now=time.time() - 3600)
    forged = auth.mint_token("f" * 40, ["notes"])
    for token, word in ((old, "token expired"), (forged, "invalid token")):
        r = await api("GET", f"{s.base_url}/api/docs/notes", token)
        assert r.status_code == 401 and r.text == word
        assert await refused(s.ws_url, "notes", token) == (4001, word)


async def test_who_may_revoke(secured):
    s, owner = secured, mint(["notes"])
    edit = await share_link(s.base_url, "notes", owner)
    read = await share_link(s.base_url, "notes", owner, "read")
    url = f"{s.base_url}/api/tokens/revoke"
    cases = [
        (read["token"], edit["token"], 403),  # a read link may not take back an edit link
        (mint(["other"]), edit["token"], 403),  # nor a token for another document
        (mint(["notes"], share=False), read["token"], 403),  # nor one that may not share
        (mint(["not*"]), mint(["*"]), 403),  # a pattern reaches less than "*"
        (None, edit["token"], 401),
        (owner, "not-a-token", 400),
        (owner, auth.mint_token("f" * 40, ["notes"]), 400),
    ]
    for caller, target, status in cases:
        assert (await api("POST", url, caller, json={"token": target})).status_code == status, (caller, target)
    assert (await api("POST", url, owner, json={"id": "no-such-id"})).status_code == 404
    assert (await api("POST", url, owner, json={"nothing": 1})).status_code == 400
    assert (await api("POST", url, read["token"], json={"token": read["token"]})).status_code == 200, "a link may revoke itself"
    admin = mint(["*"])  # what the CLI mints from COLLAB_SECRET
    assert (await api("POST", url, admin, json={"id": edit["id"]})).status_code == 200
    assert (await api("GET", f"{s.base_url}/api/docs/notes/links", read["token"])).status_code == 401


async def test_an_open_server_has_nothing_to_revoke(server):
    r = await api("POST", f"{server.base_url}/api/tokens/revoke", None, json={"token": mint(["a"])})
    assert r.status_code == 400 and "no secret" in r.text
    assert (await api("GET", f"{server.base_url}/api/docs/a/links")).json() == []


async def test_a_revocation_survives_a_restart(server_factory, tmp_path):
    data = str(tmp_path / "keep")
    s = await server_factory(secret=SECRET, data_dir=data)
    token = mint(["notes"])
    r = await api("POST", f"{s.base_url}/api/tokens/revoke", token, json={"token": token})
    assert r.status_code == 200
    await s.stop()
    s = await server_factory(secret=SECRET, data_dir=data)
    assert (await api("GET", f"{s.base_url}/api/docs/notes", token)).status_code == 401


# -- the command line ----------------------------------------------------------------------------


async def test_cli_lists_and_revokes_links_and_tokens(server_factory):
    s = await server_factory(secret=SECRET)
    owner = mint(["notes"])
    link = await share_link(s.base_url, "notes", owner, "read")
    full = s.base_url + link["url"]
    conn, _ = await connect(s.ws_url, "notes", link["token"])
    code, out, err = await run_cli("share", "list", s.base_url, "notes", "--token", owner)
    assert code == 0 and link["id"] in out and "read" in out and "active" in out and "Ada 🦊" in out, (out, err)
    code, out, err = await run_cli("share", "revoke", full)  # the link revokes itself: no other authority needed
    assert code == 0, err
    assert "revoked" in err and link["id"] in err
    assert (await closed(conn))[0] == 4001
    code, out, err = await run_cli("share", "list", s.base_url, "notes", COLLAB_SECRET=SECRET)
    assert code == 0 and "revoked" in out
    code, out, err = await run_cli("share", "revoke", full, "--token", owner)
    assert code == 0, "revoking twice is harmless"

    tok = mint(["team-*"], name="Wall 🖼")
    conn, _ = await connect(s.ws_url, "team-a", tok)
    code, out, err = await run_cli("token", "--revoke", tok, "--url", s.base_url, COLLAB_SECRET=SECRET)
    assert code == 0, err
    assert (await closed(conn))[0] == 4001
    code, out, err = await run_cli("token", "--revoke", tok)
    assert code == 1 and "--url" in err
    code, out, err = await run_cli("share", "revoke", "notes")
    assert code == 1 and "not a link" in err

    edit = await share_link(s.base_url, "notes", owner)
    conn, welcome = await connect(s.ws_url, "notes", edit["token"])
    assert welcome["role"] == "edit"
    code, out, err = await run_cli("share", "readonly", s.base_url + edit["url"], "--token", owner)
    assert code == 0 and "read-only" in err, err
    assert (await closed(conn))[0] == 1012
    conn, welcome = await connect(s.ws_url, "notes", edit["token"])
    assert welcome["role"] == "read"
    await conn.close()


# -- two processes, one PostgreSQL and one Redis -----------------------------------------------------


@pytest.fixture
async def two_processes(tmp_path):
    reason = await _unavailable()
    if reason:
        pytest.skip(reason)
    schema = f"collab_rev_{secrets.token_hex(5)}"
    prefix = f"collab-rev-{secrets.token_hex(5)}"
    env = {"DATABASE_URL": _with_param(PG_URL, "schema", schema), "REDIS_URL": _with_param(REDIS_URL, "prefix", prefix),
           "COLLAB_SECRET": SECRET}
    procs = [ServerProcess(str(tmp_path / f"p{i}"), env=dict(env)) for i in range(2)]
    for p in procs:
        await asyncio.to_thread(p.start)
    yield procs
    for p in procs:
        p.kill()
    await _drop_test_state(schema, prefix)


async def test_revoking_through_one_process_closes_the_sessions_of_both(two_processes):
    a, b = two_processes
    owner = mint(["notes"])
    link = await share_link(a.base_url, "notes", owner)
    on_a, _ = await connect(a.ws_url, "notes", link["token"])
    on_b, _ = await connect(b.ws_url, "notes", link["token"])
    lowered = await share_link(b.base_url, "notes", owner)
    editor_b, welcome = await connect(b.ws_url, "notes", lowered["token"])
    assert welcome["role"] == "edit"

    started = time.monotonic()
    r = await api("POST", f"{a.base_url}/api/tokens/revoke", owner, json={"token": link["token"]})
    assert r.status_code == 200
    results = await asyncio.gather(closed(on_a), closed(on_b))
    took = time.monotonic() - started
    assert [code for code, _ in results] == [4001, 4001] and all("revoked" in why for _, why in results)
    print(f"both sessions closed {took:.3f} s after the revoke request was sent")
    for p in (a, b):
        assert (await refused(p.ws_url, "notes", link["token"]))[0] == 4001

    r = await api("POST", f"{a.base_url}/api/tokens/role", owner, json={"token": lowered["token"], "role": "read"})
    assert r.status_code == 200
    assert (await closed(editor_b))[0] == 1012
    conn, welcome = await connect(b.ws_url, "notes", lowered["token"])
    assert welcome["role"] == "read"
    await conn.send('{"type":"op","rev":0,"op":["🦊"],"id":"x1"}')
    msg = json.loads(await asyncio.wait_for(conn.recv(), 10))
    assert msg["code"] == "forbidden"
    await conn.close()
    listed = (await api("GET", f"{b.base_url}/api/docs/notes/links", owner)).json()
    assert {l["id"]: (l["role"], l["revoked"] is not None) for l in listed} == {
        link["id"]: ("edit", True), lowered["id"]: ("read", False)}
