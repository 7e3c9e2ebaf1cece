"""History through real servers: who wrote each op and when, the HTTP API, restore, across processes.

Servers are the ``server_factory`` fixture's (SQLite unless a test says
otherwise) and ``ServerProcess`` for kill -9; clients are plain WebSockets
and httpx.
"""

from __future__ import annotations

import time

import httpx

from collab import auth

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
