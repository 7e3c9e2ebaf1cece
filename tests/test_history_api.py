"""History through real servers: who wrote each op and when, the HTTP API, restore, across processes.

Servers are the ``server_factory`` fixture's (SQLite unless a test says
otherwise) and ``ServerProcess`` for kill -9; clients are plain WebSockets
and httpx.
"""

from __future__ import annotations

import random
import secrets
import time
from typing import AsyncIterator

import httpx
import pytest
from conftest import ServerProcess
from test_history import naive_authorship
from test_store import PG_URL, _pg_reason, drop_schema

from collab import auth, ot
from collab.store import StoredOp

SECRET = "h1st0ry-" + "x" * 40


async def test_each_op_records_the_token_name_else_the_join_name_and_the_commit_time(server_factory, ws_open):
    srv = await server_factory(secret=SECRET)
    named = auth.mint_token(SECRET, ["doc"], name="Ada 😀")
    anonymous = auth.mint_token(SECRET, ["doc"])
    a = await ws_open(srv.ws("doc", f"token={named}"))
    b = await ws_open(srv.ws("doc", f"token={anonymous}"))
    wa = await a.join(user={"name": "not me", "color": "#c33"})  # the token's name wins
    wb = await b.join(user={"name": "bo 🦊", "color": "#3c3"})
    before = time.time()
    await a.send({"type": "op", "rev": 0, "op": ["hi 😀"], "id": "a1"})
    await a.recv_type("ack")
    await b.send({"type": "op", "rev": 1, "op": [4, "!"], "id": "b1"})
    await b.recv_type("ack")
    async with httpx.AsyncClient() as http:
        r = await http.put(f"{srv.base_url}/api/docs/doc/text", content="hi 😀!?".encode(),
                           headers={"Authorization": f"Bearer {named}"})
        assert r.status_code == 200
    after = time.time()
    ops = await srv.app.state.collab.store.ops_since("doc", 0)
    assert [(o.name, o.client) for o in ops] == [("Ada 😀", wa["client"]), ("bo 🦊", wb["client"]), ("Ada 😀", "server")]
    assert all(before <= o.time <= after for o in ops)


# -- the HTTP API --------------------------------------------------------------------------



@pytest.fixture(params=["sqlite", "postgres"])
async def start(request, server_factory) -> AsyncIterator:
    """``await start(**settings)``: a server on SQLite, or on a PostgreSQL schema of its own (dropped after)."""
    schemas: list[str] = []
    if request.param == "postgres":
        reason = await _pg_reason()
        if reason:
            pytest.skip(reason)

    async def start_one(**overrides):
        if request.param == "postgres":
            if not schemas:
                schemas.append(f"collab_test_{secrets.token_hex(6)}")
            overrides["database_url"] = f"{PG_URL}?schema={schemas[0]}"
        return await server_factory(**overrides)

    yield start_one
    for schema in schemas:
        await drop_schema(schema)


async def _typing(srv, ws_open, doc: str, rounds: int, rng: random.Random) -> list[str]:
    """Two named clients type concurrently; an observer records every revision's text, which it returns."""
    observer = await ws_open(srv.ws(doc))
    await observer.join()
    writers = []
    for name in ("ana", "bo 🦊"):
        ws = await ws_open(srv.ws(doc))
        welcome = await ws.join(user={"name": name, "color": "#333"})
        writers.append([ws, welcome["rev"], ""])
    texts = [""]
    sent = 0
    for k in range(rounds):
        for w in writers:  # each sends one op based on what it last saw, concurrently with the other
            ws, rev, text = w
            pos = rng.randint(0, len(text))
            op = ot.from_splice(len(text), pos, min(len(text) - pos, rng.choice([0, 0, 1])), rng.choice(["😀", "é", "x🐝"]))
            await ws.send({"type": "op", "rev": rev, "op": op, "id": f"{doc}-{k}-{id(w)}"})
            sent += 1
        while len(texts) <= sent:  # the observer sees every op in revision order
            msg = await observer.recv_type("op")
            texts.append(ot.apply(texts[-1], msg["op"]))
        for w in writers:  # each catches up to the head (its own ack, the other's op)
            w[1], w[2] = len(texts) - 1, texts[-1]
            while True:
                msg = await w[0].recv()
                if msg["type"] in ("op", "ack") and msg["rev"] == len(texts) - 1:
                    break
    return texts


async def test_the_text_at_every_revision_over_http_is_a_replay(start, ws_open):
    srv = await start()
    texts = await _typing(srv, ws_open, "text", 8, random.Random(5))
    async with httpx.AsyncClient(base_url=srv.base_url, timeout=10) as http:
        for rev, text in enumerate(texts):
            r = await http.get("/api/docs/text/text", params={"rev": rev})
            assert (r.status_code, r.text) == (200, text), f"revision {rev}"
            assert (await http.get("/api/docs/text", params={"rev": rev})).json() == {"id": "text", "rev": rev, "text": text}
        head = len(texts) - 1
        for bad in ("-1", "x", "1.5", ""):
            r = await http.get("/api/docs/text/text", params={"rev": bad})
            assert r.status_code == 400 and r.json()["error"] == "bad_rev", bad
        r = await http.get("/api/docs/text", params={"rev": head + 1})
        assert r.status_code == 400 and r.json()["error"] == "bad_rev", "beyond the head is not 'gone'"
        assert (await http.get("/api/docs/nothing-here/text", params={"rev": 0})).status_code == 404
        assert (await http.get("/api/docs/nothing-here/revisions")).status_code == 404


async def test_revisions_are_sessions_newest_first_with_paging(start, ws_open):
    srv = await start(session_gap=-1.0)  # every commit is its own session
    a = await ws_open(srv.ws("s"))
    await a.join(user={"name": "ana", "color": "#333"})
    for rev, op in enumerate([["hé"], [2, "😀😀"], [-1, 3], [1, "ü", -1, 1]]):
        await a.send({"type": "op", "rev": rev, "op": op, "id": f"s{rev}"})
        await a.recv_type("ack")
    async with httpx.AsyncClient(base_url=srv.base_url, timeout=10) as http:
        got = (await http.get("/api/docs/s/revisions")).json()
        assert [(s["from"], s["to"], s["authors"], s["inserted"], s["deleted"]) for s in got] == [
            (4, 4, ["ana"], 1, 1), (3, 3, ["ana"], 0, 1), (2, 2, ["ana"], 2, 0), (1, 1, ["ana"], 2, 0)]
        assert all(s["start"] <= s["end"] for s in got)
        page = (await http.get("/api/docs/s/revisions", params={"before": 3, "limit": 1})).json()
        assert [s["from"] for s in page] == [2]
        assert (await http.get("/api/docs/s/revisions", params={"limit": "many"})).status_code == 400


async def test_restore_is_one_edit_the_others_receive_and_can_undo(start, ws_open):
    srv = await start(secret=SECRET)
    editor = auth.mint_token(SECRET, ["r"], name="ana")
    reader = auth.mint_token(SECRET, ["r"], role="read")
    a = await ws_open(srv.ws("r", f"token={editor}"))
    b = await ws_open(srv.ws("r", f"token={editor}"))
    await a.join()
    await b.join()
    for rev, op in enumerate([["old 🦊 text"], [4, -1, "😀", 5], [10, " and more 🐝"]]):
        await a.send({"type": "op", "rev": rev, "op": op, "id": f"r{rev}"})
        await a.recv_type("ack")
        await b.recv_type("op")
    async with httpx.AsyncClient(base_url=srv.base_url, timeout=10) as http:
        r = await http.post("/api/docs/r/restore", json={"rev": 1}, headers={"Authorization": f"Bearer {reader}"})
        assert r.status_code == 403
        r = await http.post("/api/docs/r/restore", json={"rev": 1}, headers={"Authorization": f"Bearer {editor}"})
        assert r.status_code == 200 and r.json() == {"id": "r", "rev": 4, "restored": 1}
        seen = await b.recv_type("op")
        assert seen["rev"] == 4
        now = ot.apply("old 😀 text and more 🐝", seen["op"])
        assert now == "old 🦊 text"
        # b undoes the restore like any other edit: the inverse of the op it received
        await b.send({"type": "op", "rev": 4, "op": ot.invert(seen["op"], "old 😀 text and more 🐝"), "id": "undo"})
        await b.recv_type("ack")
        body = (await http.get("/api/docs/r", headers={"Authorization": f"Bearer {reader}"})).json()
        assert (body["rev"], body["text"]) == (5, "old 😀 text and more 🐝")
        for bad in ({"rev": -1}, {"rev": "1"}, {}):
            r = await http.post("/api/docs/r/restore", json=bad, headers={"Authorization": f"Bearer {editor}"})
            assert r.status_code == 400, bad
        r = await http.post("/api/docs/r/restore", json={"rev": 99}, headers={"Authorization": f"Bearer {editor}"})
        assert r.status_code == 400
        # a read-only token reads history
        r = await http.get("/api/docs/r/text", params={"rev": 2, "token": reader})
        assert (r.status_code, r.text) == (200, "old 😀 text")
        assert (await http.get("/api/docs/r/revisions", params={"token": reader})).status_code == 200
        assert (await http.get("/api/docs/r/authorship", params={"token": reader})).status_code == 200


async def test_authorship_spans_cover_the_text_through_concurrent_edits_and_a_restore(start, ws_open):
    srv = await start()
    await _typing(srv, ws_open, "au", 6, random.Random(9))
    async with httpx.AsyncClient(base_url=srv.base_url, timeout=10) as http:
        assert (await http.post("/api/docs/au/restore", json={"rev": 5})).status_code == 200
        ops = await srv.app.state.collab.store.ops_since("au", 0)
        head = len(ops)
        for rev in (1, 5, head - 1, head):
            got = (await http.get("/api/docs/au/authorship", params={"rev": rev})).json()
            assert got == naive_authorship(ops[:rev]), f"revision {rev}"
        now = (await http.get("/api/docs/au/authorship")).json()
        text = (await http.get("/api/docs/au/text")).text
        assert now[0]["start"] == 0 and now[-1]["end"] == len(text)
        assert {s["author"] for s in now} <= {"ana", "bo 🦊", "server"}


async def test_history_survives_kill_9_and_a_restart_and_retention_thins_it(tmp_path, ws_open):
    data = str(tmp_path / "data")
    settings = {"COLLAB_SESSION_GAP": "-1", "COLLAB_SNAPSHOT_EVERY": "1", "COLLAB_HISTORY_DEPTH": "3"}
    proc = ServerProcess(data, env=settings).start()
    try:
        ws = await ws_open(f"{proc.ws_url}/ws/k")
        await ws.join(user={"name": "ana", "color": "#333"})
        texts = [""]
        for rev in range(12):
            op = [len(texts[-1]), "😀"] if texts[-1] else ["😀"]
            await ws.send({"type": "op", "rev": rev, "op": op, "id": f"k{rev}"})
            await ws.recv_type("ack")
            texts.append(texts[-1] + "😀")
    finally:
        proc.kill()
    proc = ServerProcess(data, port=proc.port, env=settings).start()
    try:
        async with httpx.AsyncClient(base_url=proc.base_url, timeout=10) as http:
            for rev, text in enumerate(texts):
                assert (await http.get("/api/docs/k/text", params={"rev": rev})).text == text
            sessions = (await http.get("/api/docs/k/revisions")).json()
            assert len(sessions) == 12
    finally:
        proc.stop()


async def test_retention_thins_old_sessions_at_start_up_and_thinned_revisions_are_gone(tmp_path):
    """Sessions of 3 ops each, written by a store directly; a server started with a tiny
    COLLAB_HISTORY_RETAIN keeps each session's last revision (and those loading reads), not the others."""
    from collab.store.sqlite import SqliteStore

    data = tmp_path / "data"
    data.mkdir()
    store = SqliteStore(str(data / "collab.sqlite3"), history_depth=3, session_gap=-1.0)
    await store.open()
    texts = [""]
    for first in range(1, 31, 3):
        batch = []
        for rev in range(first, first + 3):
            batch.append(StoredOp(rev, [len(texts[-1]), "🦊"] if texts[-1] else ["🦊"], "c1", f"k{rev}", "ana"))
            texts.append(texts[-1] + "🦊")
        await store.append("k", batch, len(texts[-1]), (first + 2, texts[-1]))
    await store.close()
    proc = ServerProcess(str(data), env={"COLLAB_HISTORY_RETAIN": "0.0000001", "COLLAB_HISTORY_DEPTH": "3"}).start()
    try:
        async with httpx.AsyncClient(base_url=proc.base_url, timeout=10) as http:
            status = {rev: (await http.get("/api/docs/k/text", params={"rev": rev})).status_code for rev in range(31)}
            gone = [rev for rev, code in status.items() if code == 410]
            assert gone and all(rev % 3 != 0 for rev in gone), "each session keeps its last revision"
            assert all(status[rev] == 200 for rev in range(27, 31)), "what loading and resuming read is kept"
            r = await http.get("/api/docs/k", params={"rev": gone[0]})
            assert r.json()["error"] == "rev_gone"
            for rev in (3, 9, 30):
                assert (await http.get("/api/docs/k/text", params={"rev": rev})).text == texts[rev]
            assert len((await http.get("/api/docs/k/revisions")).json()) == 10, "thinned sessions are still listed"
            spans = (await http.get("/api/docs/k/authorship")).json()
            assert spans == [{"start": 0, "end": 30, "author": "ana"}]
    finally:
        proc.stop()


async def test_history_written_by_one_process_is_read_by_another_on_postgres(start, ws_open, request):
    if request.node.callspec.params["start"] != "postgres":
        pytest.skip("several processes share a document only on PostgreSQL")
    one = await start()
    two = await start()
    texts = await _typing(one, ws_open, "shared", 4, random.Random(2))
    async with httpx.AsyncClient(timeout=10) as http:
        for rev, text in enumerate(texts):
            assert (await http.get(f"{two.base_url}/api/docs/shared/text", params={"rev": rev})).text == text
        spans = (await http.get(f"{two.base_url}/api/docs/shared/authorship")).json()
        assert {s["author"] for s in spans} == {"ana", "bo 🦊"} and spans[-1]["end"] == len(texts[-1])
        r = await http.post(f"{two.base_url}/api/docs/shared/restore", json={"rev": 2})
        assert r.status_code == 200
        assert (await http.get(f"{one.base_url}/api/docs/shared/text")).text == texts[2]
        assert (await http.get(f"{one.base_url}/api/docs/shared/revisions")).json()[0]["to"] == len(texts)


# -- the CLI and the Python client ---------------------------------------------------------


async def test_cli_history_and_cat_rev_and_the_client_read_history(server_factory, ws_open):
    from test_cli import run_cli

    import collab

    srv = await server_factory(secret=SECRET, session_gap=-1.0)
    token = auth.mint_token(SECRET, ["cli"], name="ana 😀")
    async with collab.connect(srv.base_url, "cli", token=token) as d:
        for piece in ("hé", "🦊", "llo"):
            await d.insert(len(d.text), piece)
            await d.synced()
        sessions = await d.history()
        assert [(s.first, s.last, s.authors, s.inserted) for s in sessions] == [
            (3, 3, ("ana 😀",), 3), (2, 2, ("ana 😀",), 1), (1, 1, ("ana 😀",), 2)]
        assert [s.first for s in await d.history(before=3, limit=1)] == [2]
        assert await d.text_at(2) == "hé🦊"
        with pytest.raises(collab.client.HistoryError) as refused:
            await d.text_at(9)
        assert refused.value.code == "bad_rev"
    code, out, err = await run_cli("history", srv.base_url, "cli", "--token", token)
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 3 and lines[0].split()[0] == "3" and "ana 😀" in lines[0] and "+3 -0" in lines[0]
    code, out, _ = await run_cli("history", srv.base_url, "cli", "--token", token, "--before", "3", "--limit", "1")
    assert [line.split()[0] for line in out.splitlines()] == ["2"]
    code, out, _ = await run_cli("cat", "--rev", "2", srv.base_url, "cli", "--token", token)
    assert (code, out) == (0, "hé🦊")
    code, _, err = await run_cli("cat", "--rev", "7", srv.base_url, "cli", "--token", token)
    assert code == 1 and "HTTP 400" in err
    code, _, err = await run_cli("history", srv.base_url, "nope", "--token", auth.mint_token(SECRET, ["nope"]))
    assert code == 1 and "HTTP 404" in err
