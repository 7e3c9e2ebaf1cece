"""End-to-end access control against a real server with COLLAB_SECRET set (issue 7).

Black-box: tokens from :func:`collab.auth.mint_token`, plain WebSocket and
HTTP clients, and uvicorn's own logs. The unit rules (patterns, Origin
table, redaction) are in ``test_auth_tokens.py``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time

import httpx
import pytest
import websockets

from collab.auth import mint_token
from conftest import RunningServer

SECRET = "s3cr3t-" + "x" * 40
OTHER_SECRET = "other-" + "y" * 40


def tampered(token: str) -> str:
    """The token with its payload rewritten to reach every document as an editor."""
    header, payload, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims.update(docs=["*"], role="edit")
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{sig}"


def edit_token(docs="*", **kw) -> str:
    return mint_token(SECRET, docs, "edit", **kw)


def read_token(docs="*", **kw) -> str:
    return mint_token(SECRET, docs, "read", **kw)


@pytest.fixture
async def secured(server_factory) -> RunningServer:
    return await server_factory(secret=SECRET)


async def refused(url: str, expected_code: int, **connect_kwargs) -> list:
    """Open ``url``, try to join, and return what arrived before the close; assert its code.

    A server may refuse at once or after the ``join``; either way nothing
    about the document may arrive first.
    """
    received: list = []
    try:
        conn = await websockets.connect(url, open_timeout=10, **connect_kwargs)
    except websockets.InvalidStatus as exc:  # refused during the handshake
        assert expected_code in (1008, 4001, 4003) and exc.response.status_code in (401, 403), exc
        return received
    try:
        try:
            await conn.send(json.dumps({"type": "join"}))
        except websockets.ConnectionClosed:
            pass
        try:
            while True:
                received.append(json.loads(await asyncio.wait_for(conn.recv(), 5)))
        except websockets.ConnectionClosed as exc:
            assert exc.rcvd is not None and exc.rcvd.code == expected_code, (exc, received)
        except asyncio.TimeoutError:
            pytest.fail(f"expected close {expected_code}, but the connection stayed open after {received}")
    finally:
        await conn.close()
    for msg in received:
        assert msg.get("type") not in ("welcome", "op", "join", "presence"), msg
        assert "text" not in msg and "ops" not in msg, msg
    return received


async def put_text(server: RunningServer, doc: str, text: str, token: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.put(
            f"{server.base_url}/api/docs/{doc}/text", content=text.encode(), headers={"Authorization": f"Bearer {token}"}
        )


async def get(server: RunningServer, path: str, token: str | None = None, **kwargs) -> httpx.Response:
    headers = kwargs.pop("headers", {})
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.get(server.base_url + path, headers=headers, **kwargs)


async def post(server: RunningServer, path: str, body: dict, token: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.post(server.base_url + path, json=body, headers=headers)


# ---------------------------------------------------------------- WebSocket: refusals


async def test_no_token_closes_4001_before_any_state(secured):
    await put_text(secured, "secret-doc", "classified", edit_token())
    await refused(secured.ws("secret-doc"), 4001)


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: "not-a-token", id="garbage"),
        pytest.param(lambda: tampered(read_token("public")), id="tampered"),
        pytest.param(lambda: mint_token(OTHER_SECRET, "*"), id="wrong-secret"),
        pytest.param(lambda: edit_token(ttl_seconds=60, now=time.time() - 3600), id="expired"),
    ],
)
async def test_invalid_token_closes_4001(secured, make):
    await put_text(secured, "secret-doc", "classified", edit_token())
    await refused(secured.ws("secret-doc", f"token={make()}"), 4001)


async def test_token_for_another_document_closes_4003(secured):
    await refused(secured.ws("team-b", f"token={edit_token('team-a')}"), 4003)
    await refused(secured.ws("team-a2", f"token={edit_token('team-a')}"), 4003)


async def test_glob_token_reaches_matching_documents(secured, ws_open):
    token = edit_token("team-*")
    for doc in ("team-a", "team-b.notes"):
        ws = await ws_open(secured.ws(doc, f"token={token}"))
        welcome = await ws.join()
        assert welcome["role"] == "edit"
    await refused(secured.ws("teamx", f"token={token}"), 4003)


# ---------------------------------------------------------------- WebSocket: roles


async def test_edit_token_edits(secured, ws_open):
    ws = await ws_open(secured.ws("notes", f"token={edit_token('notes', name='Ada')}"))
    welcome = await ws.join()
    assert welcome["role"] == "edit" and welcome["rev"] == 0
    await ws.send({"type": "op", "rev": 0, "op": ["hello"], "id": "e1"})
    assert (await ws.recv_type("ack"))["rev"] == 1
    assert (await get(secured, "/api/docs/notes/text", edit_token("notes"))).text == "hello"


async def test_read_only_client(secured, ws_open):
    assert (await put_text(secured, "notes", "original", edit_token())).status_code == 200
    reader = await ws_open(secured.ws("notes", f"token={read_token('notes')}"))
    welcome = await reader.join()
    assert welcome["role"] == "read"
    assert welcome.get("text") == "original"
    await reader.send({"type": "op", "rev": welcome["rev"], "op": [-8, "defaced"], "id": "r1"})
    err = await reader.recv_type("error")
    assert err["code"] == "forbidden" and err.get("id") == "r1"
    # The connection stays open and still receives others' edits.
    writer = await ws_open(secured.ws("notes", f"token={edit_token('notes')}"))
    w = await writer.join()
    await writer.send({"type": "op", "rev": w["rev"], "op": [8, "!"], "id": "w1"})
    await writer.recv_type("ack")
    assert (await reader.recv_type("op"))["op"] == [8, "!"]
    doc = (await get(secured, "/api/docs/notes", read_token("notes"))).json()
    assert doc["text"] == "original!" and doc["rev"] == w["rev"] + 1


async def test_read_token_cannot_write_over_http(secured):
    assert (await put_text(secured, "notes", "original", edit_token())).status_code == 200
    assert (await put_text(secured, "notes", "defaced", read_token("notes"))).status_code == 403
    assert (await get(secured, "/api/docs/notes/text", read_token("notes"))).text == "original"


# ---------------------------------------------------------------- Origin


async def test_evil_origin_refused(secured):
    await refused(secured.ws("notes", f"token={edit_token()}"), 1008, origin="https://evil.example")


async def test_same_origin_allowed(secured, ws_open):
    ws = await ws_open(secured.ws("notes", f"token={edit_token()}"), origin=secured.base_url)
    assert (await ws.join())["role"] == "edit"


async def test_allowed_origins_list(server_factory, ws_open):
    server = await server_factory(secret=SECRET, allowed_origins=["https://app.example"])
    ws = await ws_open(server.ws("notes", f"token={edit_token()}"), origin="https://app.example")
    assert (await ws.join())["role"] == "edit"
    await refused(server.ws("notes", f"token={edit_token()}"), 1008, origin="https://evil.example")
    await refused(server.ws("notes", f"token={edit_token()}"), 1008, origin="http://app.example")


async def test_open_server_refuses_foreign_websites(server_factory, ws_open):
    """No secret: a website the user visits must not reach their local documents."""
    server = await server_factory()
    await refused(server.ws("notes"), 1008, origin="https://evil.example")
    ws = await ws_open(server.ws("notes"), origin=server.base_url)
    assert (await ws.join())["role"] == "edit"
    ws2 = await ws_open(server.ws("notes"), origin="http://localhost:3000")
    assert (await ws2.join())["role"] == "edit"
    ws3 = await ws_open(server.ws("notes"))  # no Origin: not a browser
    assert (await ws3.join())["role"] == "edit"


# ---------------------------------------------------------------- HTTP API


async def test_http_routes_need_a_token(secured):
    await put_text(secured, "notes", "hi", edit_token())
    for path in ("/api/docs", "/api/docs/notes", "/api/docs/notes/text"):
        assert (await get(secured, path)).status_code == 401, path
        assert (await get(secured, path, "garbage")).status_code == 401, path
        assert (await get(secured, path, tampered(read_token("other")))).status_code == 401, path
        assert (await get(secured, path, edit_token(ttl_seconds=60, now=time.time() - 3600))).status_code == 401, path
    assert (await put_text(secured, "notes", "x", "garbage")).status_code == 401
    assert (await post(secured, "/api/docs/notes/share", {"role": "read"})).status_code == 401
    assert (await get(secured, "/healthz")).status_code == 200  # health checks need no token


async def test_http_wrong_document_403(secured):
    await put_text(secured, "notes", "hi", edit_token())
    token = read_token("team-*")
    assert (await get(secured, "/api/docs/notes", token)).status_code == 403
    assert (await get(secured, "/api/docs/notes/text", token)).status_code == 403
    assert (await put_text(secured, "notes", "x", edit_token("team-*"))).status_code == 403
    assert (await get(secured, "/api/docs/notes/text", edit_token())).text == "hi"


async def test_http_token_in_query_string(secured):
    await put_text(secured, "notes", "hi", edit_token())
    r = await get(secured, "/api/docs/notes", params={"token": read_token("notes")})
    assert r.status_code == 200 and r.json()["text"] == "hi"


async def test_list_shows_only_reachable_documents(secured):
    for doc in ("team-a", "team-b", "notes", "teamx"):
        assert (await put_text(secured, doc, doc, edit_token())).status_code == 200
    listed = (await get(secured, "/api/docs", read_token("team-*"))).json()
    names = sorted(d["id"] if isinstance(d, dict) else d for d in listed)
    assert names == ["team-a", "team-b"]
    everything = (await get(secured, "/api/docs", read_token("*"))).json()
    assert len(everything) == 4


async def _pages(server: RunningServer, token: str, limit: int) -> list[list[dict]]:
    """Every page of ``GET /api/docs``, following ``Link: rel="next"`` as a client would."""
    pages, path = [], f"/api/docs?limit={limit}"
    while path is not None:
        r = await get(server, path, token)
        assert r.status_code == 200, r.text
        pages.append(r.json())
        nxt = r.links.get("next")
        path = nxt["url"] if nxt else None
        assert len(pages) < 20, "the pages never end"
    return pages


async def test_the_list_comes_in_pages_of_what_the_token_reaches(secured):
    names = ["team-a", "team-b", "notes", "team-c", "teamx", "team-d", "misc"]
    for doc in names:
        assert (await put_text(secured, doc, f"# {doc} 😀🎉\n", edit_token())).status_code == 200
    whole = (await get(secured, "/api/docs", read_token())).json()
    assert sorted(d["id"] for d in whole) == sorted(names)
    pages = await _pages(secured, read_token(), 3)
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [d for p in pages for d in p] == whole
    # A token that reaches a few of them gets full pages of those, never one it may not see.
    team = [d for d in whole if d["id"].startswith("team-")]
    pages = await _pages(secured, read_token("team-*"), 3)
    assert [d for p in pages for d in p] == team and [len(p) for p in pages[:1]] == [3]
    assert all(not p for p in pages[2:])


@pytest.mark.parametrize("query", ["limit=0", "limit=1001", "limit=x", "after=not-a-position", "after=WzFd"])
async def test_a_bad_page_request_says_what_to_send(secured, query):
    r = await get(secured, f"/api/docs?{query}", read_token())
    assert r.status_code == 400
    assert r.json()["error"] == "bad_message" and query.split("=")[0] in r.json()["message"]


# ---------------------------------------------------------------- share links


async def test_share_read_link(secured, ws_open):
    await put_text(secured, "notes", "hi", edit_token())
    r = await post(secured, "/api/docs/notes/share", {"role": "read"}, edit_token("note*"))
    assert r.status_code == 200, r.text
    body = r.json()
    token = body.get("token")
    assert token and body["url"] == f"/d/notes#token={token}"  # in the fragment: never sent to a server
    assert "no-store" in r.headers["Cache-Control"]
    ws = await ws_open(secured.ws("notes", f"token={token}"))
    assert (await ws.join())["role"] == "read"
    await refused(secured.ws("notes2", f"token={token}"), 4003)  # exactly the shared document


async def test_share_edit_link_from_edit_token(secured, ws_open):
    r = await post(secured, "/api/docs/notes/share", {"role": "edit"}, edit_token("notes"))
    assert r.status_code == 200, r.text
    ws = await ws_open(secured.ws("notes", f"token={r.json()['token']}"))
    assert (await ws.join())["role"] == "edit"


async def test_share_refusals(secured):
    read = read_token("notes")
    assert (await post(secured, "/api/docs/notes/share", {"role": "edit"}, read)).status_code == 403
    assert (await post(secured, "/api/docs/notes/share", {"role": "read"}, read)).status_code == 200
    assert (await post(secured, "/api/docs/other/share", {"role": "read"}, read)).status_code == 403
    no_share = mint_token(SECRET, "notes", "edit", share=False)
    assert (await post(secured, "/api/docs/notes/share", {"role": "read"}, no_share)).status_code == 403
    assert (await post(secured, "/api/docs/notes/share", {"role": "owner"}, edit_token())).status_code == 400


# ---------------------------------------------------------------- web hardening


@pytest.mark.parametrize("path", ["/", "/d/notes", "/healthz", "/api/docs"])
async def test_security_headers(secured, path):
    r = await get(secured, path, edit_token())
    csp = r.headers.get("content-security-policy", "")
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "base-uri 'none'" in csp, (path, csp)
    assert "'unsafe-inline'" not in csp.split("script-src", 1)[1].split(";", 1)[0]
    assert r.headers.get("x-content-type-options") == "nosniff"
    assert r.headers.get("referrer-policy") == "no-referrer"


async def test_token_never_logged(secured, ws_open, caplog):
    caplog.set_level(logging.DEBUG)
    token = edit_token("notes")
    ws = await ws_open(secured.ws("notes", f"token={token}"))
    await ws.join()
    await ws.close()
    await refused(secured.ws("other", f"token={token}"), 4003)
    await get(secured, "/api/docs/notes", params={"token": token})
    await get(secured, "/api/docs", params={"token": "not-a-valid-token"})
    await asyncio.sleep(0.2)
    # The server's records only: the test's own HTTP client logs the URLs it requests.
    server_side = [r for r in caplog.records if r.name.split(".")[0] in ("uvicorn", "collab", "starlette")]
    logged = "\n".join(r.getMessage() for r in server_side)
    assert "/ws/notes" in logged and "/api/docs/notes" in logged, "the access log was not captured"
    assert token not in logged
    assert token.rsplit(".", 1)[1] not in logged  # not even the signature
    assert "not-a-valid-token" not in logged
