"""The failures every collaborative editor ships with, each reproduced end to end (issue 8)."""

from __future__ import annotations

import asyncio
import sqlite3


import collab.client as cc
from conftest import WS, http_get


async def test_twenty_clients_open_a_new_document_at_once(server, ws_open):
    hub = server.hub
    loads = 0
    real_load = hub.store.load

    async def counting_load(doc, depth):
        nonlocal loads
        loads += 1
        await asyncio.sleep(0.05)  # widen the window in which a naive hub would load twice
        return await real_load(doc, depth)

    hub.store.load = counting_load
    conns = await asyncio.gather(*(ws_open(server.ws("brand-new")) for _ in range(20)))
    welcomes = await asyncio.gather(*(c.join(user={"name": f"u{i}", "color": "#000"}) for i, c in enumerate(conns)))
    # Every join was answered while all 20 connections stay open: none waited on another's lifetime.
    assert len({w["client"] for w in welcomes}) == 20
    assert all(w["rev"] == 0 and w["text"] == "" for w in welcomes)
    assert loads == 1, "the document was loaded (created) more than once"
    await asyncio.gather(*(c.send({"type": "op", "rev": 0, "op": [f"{i}😀"], "id": f"i{i}"}) for i, c in enumerate(conns)))
    revs = await asyncio.gather(*(c.recv_type("ack") for c in conns))
    assert sorted(r["rev"] for r in revs) == list(range(1, 21))
    listed = (await http_get(f"{server.base_url}/api/docs")).json()
    assert [(d["id"], d["rev"]) for d in listed] == [("brand-new", 20)]


async def test_one_megabyte_paste_is_one_op(server, ws_open):
    a = await ws_open(server.ws("paste"))
    b = await ws_open(server.ws("paste"))
    await a.join()
    await b.join()
    paste = ("lorem ipsum 😀 " * 80_000)[:1_000_000]
    await a.send({"type": "op", "rev": 0, "op": [paste], "id": "big"})
    assert (await a.recv_type("ack", timeout=30))["rev"] == 1
    assert (await b.recv_type("op", timeout=30))["op"] == [paste]
    r = await http_get(f"{server.base_url}/api/docs/paste")
    assert r.json()["rev"] == 1 and len(r.json()["text"]) == 1_000_000


async def test_offline_longer_than_the_kept_history_keeps_pending_edits(server_factory, tcp_proxy):
    server = await server_factory(history_depth=10, snapshot_every=5)
    proxy = await tcp_proxy(server.settings.port)
    other = await cc.connect(server.base_url, "away")
    await other.insert(0, "shared start\n")
    await other.synced(timeout=10)
    traveller = await cc.connect(proxy.base_url, "away")
    await traveller.wait_for(lambda t: t == "shared start\n", timeout=10)

    proxy.refuse = True
    proxy.cut()  # offline: the connection drops and reconnects fail
    await traveller.insert(0, "written on the train 🚆 ")
    await traveller.insert(len(traveller.text), "\nP.S. 👋")
    for i in range(100):
        await other.insert(len(other.text), f"{i},")
        await other.synced(timeout=10)  # one revision each (the client would otherwise compose them)
    assert other.rev >= 101

    proxy.refuse = False  # back online: history no longer reaches the traveller's revision
    await traveller.synced(timeout=30)
    final = (await http_get(f"{server.base_url}/api/docs/away/text")).text
    assert "written on the train 🚆 " in final and "\nP.S. 👋" in final
    assert all(f"{i}," in final for i in range(100))
    assert final.count("written on the train") == 1
    await traveller.wait_for(lambda t: t == final, timeout=10)
    await other.wait_for(lambda t: t == final, timeout=10)
    await traveller.close()
    await other.close()


async def test_silent_disconnect_leaves_presence_within_ping_timeout(server_factory, tcp_proxy, ws_open):
    server = await server_factory(ping_interval=0.3, ping_timeout=0.3)
    proxy = await tcp_proxy(server.settings.port)
    watcher = await ws_open(server.ws("ghost"))
    await watcher.join()
    lid = await WS.open(f"ws://127.0.0.1:{proxy.port}/ws/ghost", ping_interval=None)
    welcome = await lid.join(user={"name": "laptop", "color": "#0a0"})
    assert (await watcher.recv_type("join"))["client"] == welcome["client"]
    proxy.blackhole()  # lid shut: no FIN, no close frame, no pong
    left = await watcher.recv_type("leave", timeout=15)
    assert left["client"] == welcome["client"]
    peers = (await (await ws_open(server.ws("ghost"))).join())["peers"]
    assert welcome["client"] not in [p["client"] for p in peers]


async def test_long_history_loads_from_a_snapshot(server_factory, ws_open, tmp_path):
    server = await server_factory(history_depth=10, snapshot_every=50)
    store = server.app.state.collab.store
    from collab.store import StoredOp

    n = 20_000
    text_len = 0
    batch = []
    for rev in range(1, n + 1):
        batch.append(StoredOp(rev, ([text_len] if text_len else []) + ["x"], "gen", f"g{rev}"))
        text_len += 1
        if len(batch) == 1000:
            snap = (rev, "x" * text_len) if rev % 5000 == 0 else None
            await store.append("long", batch, text_len, snap)
            batch = []
    # The store keeps every revision (the history), but op ids behind the snapshots moved to op_ids
    # (a lookup scans only the kept depth plus what follows the last snapshot), and a load starts from
    # the last snapshot and holds only the kept depth in memory.
    db = sqlite3.connect(store.path)
    kept = db.execute("SELECT coalesce(sum(rev - first + 1), 0) FROM log WHERE doc = 'long'").fetchone()[0]
    through = db.execute("SELECT ids_through FROM docs WHERE id = 'long'").fetchone()[0]
    db.close()
    assert kept == n and through >= n - 10 - 1000, f"{kept} of {n} ops kept, ids in op_ids through {through}"
    state = await store.load("long", 10)
    assert state.rev == n and len(state.text) == n and len(state.history) <= 10
    assert await store.text_at("long", 12_345) == "x" * 12_345
    a = await ws_open(server.ws("long"))
    w = await a.join()
    assert w["rev"] == n and len(w["text"]) == n
    # Connected clients keep working across further compaction.
    for i in range(120):
        await a.send({"type": "op", "rev": n + i, "op": [n + i, "y"], "id": f"y{i}"})
        assert (await a.recv_type("ack"))["rev"] == n + i + 1
    b = await ws_open(server.ws("long"))
    w = await b.join(since=n + 115)
    assert [o["rev"] for o in w["ops"]] == list(range(n + 116, n + 121))
