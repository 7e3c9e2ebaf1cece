"""Titles and names: the first heading by default, set by hand, renamed with a redirect.

Real servers (in-process on SQLite and the memory store; two processes on
PostgreSQL and Redis), real WebSockets, the real ``collab`` command.
"""

from __future__ import annotations

import asyncio
import json

import pytest
import websockets

from collab.cli_docs import _every
from collab.titles import MAX_TITLE, check_title, first_heading
from test_cli import run_cli
from test_revocation import SECRET, api, closed, connect, mint, refused, two_processes  # noqa: F401 (fixture)

TEXT = "intro line\n\n```\n# not a heading\n```\n## Fox notes 🦊 ##\n\nGrüße 👋🏽\n# Later"


def test_the_first_heading_outside_code_is_the_title():
    assert first_heading(TEXT) == "Fox notes 🦊"
    assert first_heading("#no space\nplain text") is None
    assert first_heading("x" * 5000 + "\n# too far") is None, "only the start of a document is read"
    assert first_heading("#   spaced\tout  #") == "spaced out"
    assert check_title("  Ein Titel 🦊 \n") == "Ein Titel 🦊"
    assert check_title(None) is None and check_title("") is None
    for bad in (5, "x" * (MAX_TITLE + 1), "\ud800"):
        with pytest.raises(ValueError):
            check_title(bad)


@pytest.fixture(params=["sqlite", "memory"])
async def srv(request, server_factory):
    extra = {"database_url": "memory:"} if request.param == "memory" else {}
    return await server_factory(secret=SECRET, idle_unload_seconds=600, **extra)


async def titles(base: str, token: str) -> dict[str, str | None]:
    return {d["id"]: d["title"] for d in (await api("GET", f"{base}/api/docs", token)).json()}


async def test_titles_follow_the_first_heading_until_set_by_hand(srv):
    s, owner = srv, mint(["*"])
    await api("PUT", f"{s.base_url}/api/docs/fox/text", owner, content=TEXT.encode())
    await api("PUT", f"{s.base_url}/api/docs/plain/text", owner, content="no heading 🐝".encode())
    assert await titles(s.base_url, owner) == {"fox": "Fox notes 🦊", "plain": None}
    await api("PUT", f"{s.base_url}/api/docs/fox/text", owner, content="# Füchse 🦊\n".encode())
    assert (await titles(s.base_url, owner))["fox"] == "Füchse 🦊", "a live edit changes the default title"

    r = await api("POST", f"{s.base_url}/api/docs/fox/title", owner, json={"title": "  Bau 🦊 "})
    assert r.status_code == 200 and r.json() == {"id": "fox", "title": "Bau 🦊"}
    await api("PUT", f"{s.base_url}/api/docs/fox/text", owner, content="# Other\n".encode())
    assert (await titles(s.base_url, owner))["fox"] == "Bau 🦊", "a title set by hand stays"
    r = await api("POST", f"{s.base_url}/api/docs/fox/title", owner, json={"title": None})
    assert r.json()["title"] == "Other"

    reader = mint(["fox"], role="read")
    assert (await api("POST", f"{s.base_url}/api/docs/fox/title", reader, json={"title": "x"})).status_code == 403
    assert (await api("POST", f"{s.base_url}/api/docs/fox/title", owner, json={"title": 7})).status_code == 400
    assert (await api("POST", f"{s.base_url}/api/docs/none/title", owner, json={"title": "x"})).status_code == 404
    assert (await titles(s.base_url, reader)) == {"fox": "Other"}, "the list holds only what the token opens"


async def test_a_heading_recorded_when_the_document_leaves_memory(server_factory, tmp_path):
    data = str(tmp_path / "keep")
    s = await server_factory(data_dir=data)
    conn, _ = await connect(s.ws_url, "notes", "")
    await conn.send('{"type":"op","rev":0,"op":["# Ünïcode 🦊\\n"],"id":"a1"}')
    while (await api("GET", f"{s.base_url}/api/docs/notes")).json()["rev"] != 1:
        pass
    await conn.close()
    await s.stop()  # the document unloads as the server stops; the list of a new server reads the store
    s = await server_factory(data_dir=data)
    assert await titles(s.base_url, "") == {"notes": "Ünïcode 🦊"}
    # Back to the heading while the document is not open: answered with the heading the store recorded.
    r = await api("POST", f"{s.base_url}/api/docs/notes/title", "", json={"title": None})
    assert r.json() == {"id": "notes", "title": "Ünïcode 🦊"}


async def test_rename_moves_everything_and_the_old_name_redirects(srv):
    s, owner = srv, mint(["*"])
    await api("PUT", f"{s.base_url}/api/docs/old-name/text", owner, content=TEXT.encode())
    link = (await api("POST", f"{s.base_url}/api/docs/old-name/share", owner, json={"role": "read"})).json()
    editor, _ = await connect(s.ws_url, "old-name", owner)
    await api("PUT", f"{s.base_url}/api/docs/taken/text", owner, content="🐝".encode())

    url = f"{s.base_url}/api/docs/old-name/rename"
    assert (await api("POST", url, owner, json={"name": "taken"})).status_code == 409
    assert (await api("POST", url, owner, json={"name": ".bad"})).status_code == 400
    assert (await api("POST", url, mint(["old-name"]), json={"name": "elsewhere"})).status_code == 403
    assert (await api("POST", url, mint(["old-name", "new-name"], role="read"), json={"name": "new-name"})).status_code == 403
    r = await api("POST", url, owner, json={"name": "new-name"})
    assert r.status_code == 200 and r.json() == {"id": "new-name", "renamed_from": "old-name"}
    assert await closed(editor) == (4004, "document renamed to new-name")
    assert await refused(s.ws_url, "old-name", owner) == (4004, "document renamed to new-name")

    r = await api("GET", f"{s.base_url}/api/docs/old-name/text", owner)
    assert r.status_code == 307 and r.headers["location"] == "/api/docs/new-name/text"
    r = await api("GET", f"{s.base_url}/d/old-name")
    assert r.status_code == 200, "with a secret the page cannot tell who asks: the WebSocket names the new name"
    assert (await api("GET", f"{s.base_url}/api/docs/old-name", mint(["other"]))).status_code == 403
    assert (await refused(s.ws_url, "old-name", mint(["other"])))[0] == 4003, "told only to whom the token lets in"
    body = (await api("GET", f"{s.base_url}/api/docs/new-name", owner)).json()
    assert (body["rev"], body["text"]) == (1, TEXT)
    conn, welcome = await connect(s.ws_url, "new-name", owner)
    await conn.send('{"type":"op","rev":1,"op":[%d,"!"],"id":"x2"}' % len(TEXT))
    await conn.close()
    links = (await api("GET", f"{s.base_url}/api/docs/new-name/links", owner)).json()
    assert [l["id"] for l in links] == [link["id"]], "the document's links moved with it"
    assert set(await titles(s.base_url, owner)) == {"new-name", "taken"}

    # Renamed again, and back: redirects never chain, and a name in use is a document again.
    assert (await api("POST", f"{s.base_url}/api/docs/new-name/rename", owner, json={"name": "third"})).status_code == 200
    r = await api("GET", f"{s.base_url}/api/docs/old-name", owner)
    assert r.headers["location"] == "/api/docs/third"
    assert (await api("POST", f"{s.base_url}/api/docs/third/rename", owner, json={"name": "old-name"})).status_code == 200
    assert (await api("GET", f"{s.base_url}/api/docs/old-name", owner)).json()["text"].startswith("intro line")


async def test_on_an_open_server_the_old_page_redirects(server):
    await api("PUT", f"{server.base_url}/api/docs/a/text", content="🦊".encode())
    assert (await api("POST", f"{server.base_url}/api/docs/a/rename", json={"name": "b"})).status_code == 200
    r = await api("GET", f"{server.base_url}/d/a")
    assert r.status_code == 307 and r.headers["location"] == "/d/b"


async def test_cli_title_and_rename(server_factory):
    s = await server_factory(secret=SECRET)
    owner = mint(["*"])
    await api("PUT", f"{s.base_url}/api/docs/notes/text", owner, content=TEXT.encode())
    code, out, err = await run_cli("title", s.base_url, "notes", "Bau 🦊", COLLAB_SECRET=SECRET)
    assert code == 0 and "Bau 🦊" in err, err
    code, out, err = await run_cli("rename", s.base_url, "notes", "den", "--token", owner)
    assert code == 0 and "den" in err, err
    code, out, err = await run_cli("ls", s.base_url, COLLAB_SECRET=SECRET)
    assert code == 0 and out.split()[:2] == ["den", "Bau"], out
    code, out, err = await run_cli("rename", s.base_url, "notes", "den", COLLAB_SECRET=SECRET)
    assert code == 1 and "HTTP 404" in err, err


async def test_the_cli_reads_every_page_of_the_list(server_factory):
    s = await server_factory(secret=SECRET)
    owner = mint(["*"])
    for doc in ("one", "two", "three", "four", "five"):
        await api("PUT", f"{s.base_url}/api/docs/{doc}/text", owner, content=f"# {doc} 🦊".encode())
    whole = (await api("GET", f"{s.base_url}/api/docs", owner)).json()
    assert len(whole) == 5
    rows = await asyncio.to_thread(lambda: list(_every(f"{s.base_url}/api/docs?limit=2", owner)))
    assert rows == whole


async def test_a_rename_reaches_the_other_process(two_processes):  # noqa: F811
    a, b = two_processes
    owner = mint(["*"])
    await api("PUT", f"{a.base_url}/api/docs/notes/text", owner, content=TEXT.encode())
    on_b, _ = await connect(b.ws_url, "notes", owner)
    assert (await api("POST", f"{a.base_url}/api/docs/notes/rename", owner, json={"name": "renamed"})).status_code == 200
    assert await closed(on_b) == (4004, "document renamed to renamed")
    assert await refused(b.ws_url, "notes", owner) == (4004, "document renamed to renamed")
    conn, welcome = await connect(b.ws_url, "renamed", owner)
    assert welcome["rev"] == 1
    await conn.close()


async def _title_msg(conn) -> dict:
    """The next ``title`` message on ``conn`` (other messages are skipped)."""
    while True:
        msg = json.loads(await asyncio.wait_for(conn.recv(), 10))
        if msg["type"] == "title":
            return msg


async def _connect_for_titles(ws_base: str, doc: str, token: str):
    """A connection that asks for ``title`` messages at join (as the browser editor does)."""
    conn = await websockets.connect(f"{ws_base}/ws/{doc}?token={token}", open_timeout=10, max_queue=None)
    await conn.send(json.dumps({"type": "join", "user": {"name": "Bea 🐝", "color": "#d33"}, "titles": True}))
    while json.loads(await asyncio.wait_for(conn.recv(), 10))["type"] != "welcome":
        pass
    return conn


async def test_a_title_set_by_hand_is_read_and_announced_to_the_editors(srv):
    s, owner = srv, mint(["*"])
    await api("PUT", f"{s.base_url}/api/docs/fox/text", owner, content=TEXT.encode())
    r = await api("GET", f"{s.base_url}/api/docs/fox/title", mint(["fox"], role="read"))
    assert r.status_code == 200 and r.json() == {"id": "fox", "title": None}, "none by hand: the heading stands in"
    conn = await _connect_for_titles(s.ws_url, "fox", mint(["fox"], role="read"))
    plain, _ = await connect(s.ws_url, "fox", owner)  # joined without asking for titles
    await api("POST", f"{s.base_url}/api/docs/fox/title", owner, json={"title": "Bau 🦊"})
    assert await _title_msg(conn) == {"type": "title", "title": "Bau 🦊"}
    # The plain client gets only the protocol's own messages: its next one is the op that follows.
    await api("PUT", f"{s.base_url}/api/docs/fox/text", owner, content=(TEXT + "!").encode())
    assert json.loads(await asyncio.wait_for(plain.recv(), 10))["type"] == "op"
    await plain.close()
    assert (await api("GET", f"{s.base_url}/api/docs/fox/title", owner)).json()["title"] == "Bau 🦊"
    await api("POST", f"{s.base_url}/api/docs/fox/title", owner, json={"title": ""})
    assert await _title_msg(conn) == {"type": "title", "title": None}
    await conn.close()
    assert (await api("GET", f"{s.base_url}/api/docs/none/title", owner)).json()["title"] is None
    await api("DELETE", f"{s.base_url}/api/docs/fox", owner)
    assert (await api("GET", f"{s.base_url}/api/docs/fox/title", owner)).status_code == 404


async def test_the_list_gives_bytes_of_utf8_and_the_callers_role(srv):
    s, owner = srv, mint(["*"])
    text = "# Füchse 🦊\n" + "中文 👋🏽 " * 100
    await api("PUT", f"{s.base_url}/api/docs/fox/text", owner, content=text.encode())
    await api("PUT", f"{s.base_url}/api/docs/fox/text", owner, content=(text + "é").encode())  # an edit, not a reload
    rows = {d["id"]: d for d in (await api("GET", f"{s.base_url}/api/docs", owner)).json()}
    assert rows["fox"]["size"] == len(text) + 1 and rows["fox"]["bytes"] == len((text + "é").encode())
    assert rows["fox"]["role"] == "edit"
    reader = mint(["fox"], role="read")
    assert [d["role"] for d in (await api("GET", f"{s.base_url}/api/docs", reader)).json()] == ["read"]
    await api("DELETE", f"{s.base_url}/api/docs/fox", owner)
    trashed = (await api("GET", f"{s.base_url}/api/trash", reader)).json()
    assert [(d["id"], d["bytes"], d["role"]) for d in trashed] == [("fox", len((text + "é").encode()), "read")]


async def test_a_title_reaches_the_editors_of_the_other_process(two_processes):  # noqa: F811
    a, b = two_processes
    owner = mint(["*"])
    await api("PUT", f"{a.base_url}/api/docs/notes/text", owner, content=TEXT.encode())
    on_b = await _connect_for_titles(b.ws_url, "notes", owner)
    assert (await api("POST", f"{a.base_url}/api/docs/notes/title", owner, json={"title": "Füchse 🦊"})).status_code == 200
    assert await _title_msg(on_b) == {"type": "title", "title": "Füchse 🦊"}
    await on_b.close()
