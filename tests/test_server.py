"""End-to-end protocol tests: a real uvicorn server, real WebSocket clients."""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.parse

import pytest
import websockets

from conftest import http_get

EMOJI = "héllo 😀 wörld 👍🏽 𝄞"


@pytest.fixture(params=["direct", "asgi"])
async def server(request, server_factory):
    """Every test here runs twice: on collab's uvicorn protocol, whose fan-out writes frames
    directly (collab.transport), and on uvicorn's own, where it goes through ASGI ``send``."""
    if request.param == "asgi":
        return await server_factory(uvicorn_options={"ws": "websockets-sansio"})
    return await server_factory()


async def text_of(server, doc: str) -> str:
    r = await http_get(f"{server.base_url}/api/docs/{doc}/text")
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/plain; charset=utf-8"
    return r.text


async def test_ack_broadcast_and_order(server, ws_open):
    a = await ws_open(server.ws("order"))
    b = await ws_open(server.ws("order"))
    wa = await a.join(user={"name": "Ann", "color": "#e11"})
    assert wa["rev"] == 0 and wa["max_message_bytes"] == server.settings.max_message_bytes
    wb = await b.join(user={"name": "Bob", "color": "#11e"})
    assert [p["user"]["name"] for p in wb["peers"]] == ["Ann"]
    assert (await a.recv_type("join"))["user"] == {"name": "Bob", "color": "#11e"}

    await a.send({"type": "op", "rev": 0, "op": [EMOJI], "id": "a1", "cursor": {"anchor": 5, "head": 5}})
    assert await a.recv_type("ack") == {"type": "ack", "id": "a1", "rev": 1}
    got = await b.recv_type("op")
    assert got["rev"] == 1 and got["op"] == [EMOJI] and got["client"] == wb["peers"][0]["client"]
    assert got["id"] == "a1"  # lets an author that reconnected recognize its own op
    assert got["cursor"] == {"anchor": 5, "head": 5}

    # Concurrent edits at the same spot: the later arrival goes first (PROTOCOL.md).
    n = len(EMOJI)
    await a.send({"type": "op", "rev": 1, "op": ["A", n], "id": "a2"})
    assert (await a.recv_type("ack"))["rev"] == 2
    await b.send({"type": "op", "rev": 1, "op": ["B", n], "id": "b1"})
    assert (await b.recv_type("op"))["rev"] == 2
    assert (await b.recv_type("ack"))["rev"] == 3
    transformed = await a.recv_type("op")
    assert transformed["rev"] == 3 and transformed["op"] == ["B", n + 1]
    assert await text_of(server, "order") == "BA" + EMOJI

    r = await http_get(f"{server.base_url}/api/docs/order")
    assert r.json() == {"id": "order", "rev": 3, "text": "BA" + EMOJI}
    listed = (await http_get(f"{server.base_url}/api/docs")).json()
    assert [(d["id"], d["rev"], d["size"]) for d in listed] == [("order", 3, n + 2)]


async def test_non_normalized_ops_are_broadcast_normalized(server, ws_open):
    a = await ws_open(server.ws("norm"))
    b = await ws_open(server.ws("norm"))
    await a.join()
    await b.join()
    await a.send({"type": "op", "rev": 0, "op": ["ab", "c😀"], "id": "n1"})
    assert (await b.recv_type("op"))["op"] == ["abc😀"]
    await a.send({"type": "op", "rev": 1, "op": [1, 1, -1, "X", 1], "id": "n2"})
    assert (await b.recv_type("op"))["op"] == [2, "X", -1, 1]
    assert await text_of(server, "norm") == "abX😀"


async def test_idempotent_resend_across_reconnect(server, ws_open):
    a = await ws_open(server.ws("idem"))
    await a.join()
    await a.send({"type": "op", "rev": 0, "op": ["once 🦄"], "id": "same-id"})
    assert (await a.recv_type("ack"))["rev"] == 1
    await a.close()

    again = await ws_open(server.ws("idem"))
    welcome = await again.join(since=0)
    assert welcome["ops"] == [{"rev": 1, "op": ["once 🦄"], "client": welcome["ops"][0]["client"], "id": "same-id"}]
    await again.send({"type": "op", "rev": 0, "op": ["once 🦄"], "id": "same-id"})
    assert await again.recv_type("ack") == {"type": "ack", "id": "same-id", "rev": 1}
    assert await text_of(server, "idem") == "once 🦄"
    assert (await http_get(f"{server.base_url}/api/docs/idem")).json()["rev"] == 1


@pytest.mark.parametrize("snapshot_every", [1000, 2], ids=["in-the-log", "compacted"])
async def test_resend_on_a_new_base_of_an_op_older_than_memory_is_not_applied_twice(server_factory, ws_open, snapshot_every):
    server = await server_factory(history_depth=2, snapshot_every=snapshot_every)
    a = await ws_open(server.ws("twice"))
    await a.join()
    await a.send({"type": "op", "rev": 0, "op": ["a"], "id": "dup"})
    assert (await a.recv_type("ack"))["rev"] == 1
    for i in range(1, 4):
        await a.send({"type": "op", "rev": i, "op": [i, "b"], "id": f"o{i}"})
        await a.recv_type("ack")
    # A client that lost the ack, transformed its op through later ones and resent it on the current base.
    await a.send({"type": "op", "rev": 4, "op": [4, "a"], "id": "dup"})
    assert await a.recv_type("ack") == {"type": "ack", "id": "dup", "rev": 1}
    assert await text_of(server, "twice") == "abbb"


async def test_resend_of_an_op_older_than_memory_is_found_in_the_store(server_factory, ws_open):
    server = await server_factory(history_depth=3)
    a = await ws_open(server.ws("old"))
    await a.join()
    await a.send({"type": "op", "rev": 0, "op": ["x"], "id": "first"})
    await a.recv_type("ack")
    for i in range(1, 8):
        await a.send({"type": "op", "rev": i, "op": [i, "y"], "id": f"more{i}"})
        await a.recv_type("ack")
    await a.send({"type": "op", "rev": 0, "op": ["x"], "id": "first"})
    assert await a.recv_type("ack") == {"type": "ack", "id": "first", "rev": 1}
    assert await text_of(server, "old") == "x" + "y" * 7


async def test_resume_with_since(server_factory, ws_open):
    server = await server_factory(history_depth=5)
    a = await ws_open(server.ws("resume"))
    await a.join()
    for i in range(8):
        await a.send({"type": "op", "rev": i, "op": ([i] if i else []) + ["🙂"], "id": f"r{i}"})
        await a.recv_type("ack")
    b = await ws_open(server.ws("resume"))
    w = await b.join(since=5)
    assert w["rev"] == 8 and "text" not in w
    assert [o["rev"] for o in w["ops"]] == [6, 7, 8]
    assert all(o["op"][-1] == "🙂" for o in w["ops"])
    c = await ws_open(server.ws("resume"))
    w = await c.join(since=8)
    assert w["ops"] == []
    d = await ws_open(server.ws("resume"))
    w = await d.join(since=1)  # fell out of the kept history: a snapshot instead
    assert w["text"] == "🙂" * 8 and "ops" not in w
    e = await ws_open(server.ws("resume"))
    await e.send({"type": "join", "since": 9})
    assert (await e.recv_type("error"))["code"] == "bad_rev"
    assert (await e.join(since=8))["rev"] == 8  # the connection stayed open


async def test_presence_for_late_joiner_is_transformed(server, ws_open):
    a = await ws_open(server.ws("pres"))
    b = await ws_open(server.ws("pres"))
    wa = await a.join(user={"name": "Ann", "color": "#a00"})
    await b.join(user={"name": "Bob", "color": "#00b"})
    await a.send({"type": "op", "rev": 0, "op": ["0123456789"], "id": "p0"})
    await a.recv_type("ack")
    await b.recv_type("op")
    await a.send({"type": "presence", "rev": 1, "cursor": {"anchor": 4, "head": 8}})
    seen = await b.recv_type("presence")
    assert seen == {"type": "presence", "client": wa["client"], "rev": 1,
                    "cursor": {"anchor": 4, "head": 8}, "user": {"name": "Ann", "color": "#a00"}}
    # Bob inserts two emoji before Ann's selection, based on rev 1.
    await b.send({"type": "op", "rev": 1, "op": ["😀😀", 10], "id": "p1"})
    await b.recv_type("ack")
    c = await ws_open(server.ws("pres"))
    wc = await c.join()
    ann = next(p for p in wc["peers"] if p["client"] == wa["client"])
    assert ann["cursor"] == {"anchor": 6, "head": 10}
    assert ann["user"]["name"] == "Ann"
    # A presence based on an old revision is moved to the current one.
    await a.recv_type("op")
    await a.send({"type": "presence", "rev": 1, "cursor": {"anchor": 0, "head": 0}})
    moved = await c.recv_type("presence")
    assert moved["rev"] == 2 and moved["cursor"] == {"anchor": 2, "head": 2}


async def test_messages_in_one_write_keep_their_order_inline_and_in_the_task(server, ws_open):
    """Frames that arrive together: on collab's protocol the first edit is taken inline
    (in ``data_received``), the presence goes on in the session's task, and what comes
    behind it queues for that task; everyone still sees them in the order they were sent."""
    from websockets.frames import Frame, Opcode

    a = await ws_open(server.ws("inline"))
    b = await ws_open(server.ws("inline"))
    wa = await a.join()
    await b.join()
    await a.recv_type("join")
    msgs = [
        {"type": "op", "rev": 0, "op": ["😀ab"], "id": "x1"},
        {"type": "presence", "rev": 0, "cursor": {"anchor": 0, "head": 0}},
        {"type": "op", "rev": 1, "op": [3, "c"], "id": "x2"},
        {"type": "op", "rev": 2, "op": ["👍🏽", 4], "id": "x3"},
        "not json",
        {"type": "op", "rev": 3, "op": [6, "d"], "id": "x4"},
    ]
    wire = b"".join(Frame(Opcode.TEXT, (m if isinstance(m, str) else json.dumps(m)).encode()).serialize(mask=True)
                    for m in msgs)
    a.conn.transport.write(wire)  # one write: the server reads them in one go
    answers = [await a.recv() for _ in range(5)]
    assert [(m["id"], m["rev"]) for m in answers if m["type"] == "ack"] == [("x1", 1), ("x2", 2), ("x3", 3), ("x4", 4)]
    assert [m["code"] for m in answers if m["type"] == "error"] == ["bad_message"]  # errors need no commit: any place
    seen = []
    while len(seen) < 5:
        m = await b.recv()
        if m["type"] in ("op", "presence"):
            seen.append(m)
    ops = [m["rev"] for m in seen if m["type"] == "op"]
    assert ops == [1, 2, 3, 4]
    presence = next(m for m in seen if m["type"] == "presence")
    # Broadcast at the revision it is expressed in: before op 1 as sent, or after it, moved past the insert.
    assert presence["client"] == wa["client"]
    assert (presence["rev"], presence["cursor"]) in ((0, {"anchor": 0, "head": 0}), (1, {"anchor": 3, "head": 3}))
    assert seen.index(presence) == presence["rev"]
    assert await text_of(server, "inline") == "👍🏽😀abcd"


async def test_leave_is_broadcast(server, ws_open):
    a = await ws_open(server.ws("leave"))
    b = await ws_open(server.ws("leave"))
    await a.join()
    wb = await b.join()
    await b.close()
    assert (await a.recv_type("leave"))["client"] == wb["client"]


BAD_MESSAGES = [
    (b"\x00binary", "bad_message"),
    ("not json", "bad_message"),
    ("[1, 2]", "bad_message"),
    ('"string"', "bad_message"),
    ({"no": "type"}, "bad_message"),
    ({"type": 5}, "bad_message"),
    ({"type": "launch"}, "bad_message"),
    ({"type": "op", "rev": 1, "op": [1]}, "bad_message"),  # no id
    ({"type": "op", "rev": 1, "op": [1], "id": ""}, "bad_message"),
    ({"type": "op", "rev": 1, "op": [1], "id": "x" * 65}, "bad_message"),
    ({"type": "op", "rev": "1", "op": [1], "id": "i"}, "bad_message"),
    ({"type": "op", "rev": -1, "op": [1], "id": "i"}, "bad_message"),
    ({"type": "op", "rev": 1, "id": "i"}, "bad_message"),
    ({"type": "op", "rev": 1, "op": [1], "id": "i", "cursor": {"anchor": "a"}}, "bad_message"),
    ({"type": "presence", "cursor": None}, "bad_message"),
    ({"type": "join"}, "bad_message"),  # already joined
    ({"type": "op", "rev": 1, "op": [0, 1], "id": "z"}, "bad_op"),
    ({"type": "op", "rev": 1, "op": ["", 1], "id": "z"}, "bad_op"),
    ({"type": "op", "rev": 1, "op": [1.5], "id": "z"}, "bad_op"),
    ({"type": "op", "rev": 1, "op": [True], "id": "z"}, "bad_op"),
    ({"type": "op", "rev": 1, "op": [[1]], "id": "z"}, "bad_op"),
    ({"type": "op", "rev": 1, "op": "abc", "id": "z"}, "bad_op"),
    ('{"type": "op", "rev": 1, "op": ["\\ud83d", 1], "id": "z"}', "bad_op"),
    ({"type": "op", "rev": 1, "op": [2], "id": "z"}, "bad_op"),  # wrong base length
    ({"type": "op", "rev": 1, "op": [-2, "x"], "id": "z"}, "bad_op"),
    ({"type": "op", "rev": 7, "op": [1], "id": "z"}, "bad_rev"),
    ({"type": "presence", "rev": 7, "cursor": None}, "bad_rev"),
]


@pytest.mark.parametrize("frame,code", BAD_MESSAGES, ids=[f"{i}-{c}" for i, (_, c) in enumerate(BAD_MESSAGES)])
async def test_bad_input_gets_an_error_and_changes_nothing(server, ws_open, frame, code):
    watcher = await ws_open(server.ws("bad"))
    await watcher.join()
    a = await ws_open(server.ws("bad"))
    await a.join()
    await a.send({"type": "op", "rev": 0, "op": ["😀"], "id": "base"})
    await a.recv_type("ack")
    await watcher.recv_type("op")
    await a.send(frame)
    error = await a.recv_type("error")
    assert error["code"] == code and error["message"]
    if isinstance(frame, dict) and frame.get("type") == "op" and isinstance(frame.get("id"), str) and frame["id"]:
        if len(frame["id"]) <= 64:
            assert error["id"] == frame["id"]
    # The connection stays open and the document is untouched.
    await a.send({"type": "op", "rev": 1, "op": [1, "!"], "id": "after"})
    assert (await a.recv_type("ack"))["rev"] == 2
    assert (await watcher.recv_type("op"))["rev"] == 2  # the bad input never reached anyone
    assert await text_of(server, "bad") == "😀!"


async def test_message_before_join_is_bad_message(server, ws_open):
    a = await ws_open(server.ws("early"))
    await a.send({"type": "op", "rev": 0, "op": ["x"], "id": "e1"})
    err = await a.recv_type("error")
    assert err["code"] == "bad_message" and err["id"] == "e1"
    await a.send({"type": "presence", "rev": 0, "cursor": None})
    assert (await a.recv_type("error"))["code"] == "bad_message"
    assert (await a.join())["rev"] == 0
    assert await text_of(server, "early") == ""


async def test_stale_rev(server_factory, ws_open):
    server = await server_factory(history_depth=2)
    a = await ws_open(server.ws("stale"))
    await a.join()
    for i in range(4):
        await a.send({"type": "op", "rev": i, "op": ([i] if i else []) + ["s"], "id": f"s{i}"})
        await a.recv_type("ack")
    await a.send({"type": "op", "rev": 1, "op": [1, "late"], "id": "late"})
    err = await a.recv_type("error")
    assert err["code"] == "stale_rev" and err["id"] == "late"
    assert await text_of(server, "stale") == "ssss"


async def test_too_large(server_factory, ws_open):
    server = await server_factory(max_doc_chars=10)
    a = await ws_open(server.ws("big"))
    await a.join()
    await a.send({"type": "op", "rev": 0, "op": ["😀" * 10], "id": "fits"})
    assert (await a.recv_type("ack"))["rev"] == 1
    await a.send({"type": "op", "rev": 1, "op": [10, "x"], "id": "over"})
    err = await a.recv_type("error")
    assert err["code"] == "too_large" and err["id"] == "over"
    await a.send({"type": "op", "rev": 1, "op": [-1, 9], "id": "shrink"})  # shrinking is always allowed
    assert (await a.recv_type("ack"))["rev"] == 2
    assert await text_of(server, "big") == "😀" * 9


async def test_rate_limited_then_closed_1008(server_factory, ws_open):
    server = await server_factory(msg_rate=5, msg_burst=5)
    polite = await ws_open(server.ws("flood"))
    await polite.join()
    a = await ws_open(server.ws("flood"))
    await a.join()
    codes = []

    async def flood():
        with contextlib.suppress(websockets.ConnectionClosed):
            for _ in range(5000):
                await a.send({"type": "presence", "rev": 0, "cursor": None})

    flooder = asyncio.create_task(flood())
    with pytest.raises(websockets.ConnectionClosed) as closed:
        while True:
            msg = await a.recv()
            if msg["type"] == "error":
                codes.append(msg["code"])
    await flooder
    assert "rate_limited" in codes
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    await polite.send({"type": "op", "rev": 0, "op": ["still here"], "id": "ok"})
    assert (await polite.recv_type("ack"))["rev"] == 1


@pytest.mark.parametrize("payload", ["x" * 1200, "😀" * 300, "x" * 5000], ids=["just-over", "emoji-bytes", "far-over"])
async def test_oversized_frame_closes_1009(server_factory, ws_open, payload):
    server = await server_factory(max_message_bytes=1000)
    a = await ws_open(server.ws("huge"))
    await a.join()
    await a.send({"type": "op", "rev": 0, "op": [payload], "id": "big"})
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await a.recv()
    assert closed.value.rcvd.code == 1009
    assert await text_of(server, "huge") == ""


@pytest.mark.parametrize("name", ["..", ".hidden", "a" * 129, "sp ace", "semi;colon", "%2e%2e", "a/b", "émoji😀", "a%00b"])
async def test_invalid_document_name_closes_4004(server, name):
    url = server.ws(urllib.parse.quote(name, safe="/%"))
    try:
        async with websockets.connect(url, open_timeout=5) as conn:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(conn.recv(), 5)
            assert closed.value.rcvd.code == 4004
    except websockets.InvalidStatus as exc:  # refused at the HTTP level is also allowed
        assert exc.response.status_code == 404
    assert (await http_get(f"{server.base_url}/api/docs")).json() == []


async def test_storage_failure_closes_1011_and_loses_nothing_acked(server, ws_open):
    a = await ws_open(server.ws("fault"))
    await a.join()
    await a.send({"type": "op", "rev": 0, "op": ["kept"], "id": "k"})
    await a.recv_type("ack")
    store = server.app.state.collab.store
    real = store._commit_sync

    def broken(batch):
        raise OSError("disk on fire")

    store._commit_sync = broken  # a fault we cannot cause for real: the disk failing mid-write
    try:
        await a.send({"type": "op", "rev": 1, "op": [4, " lost?"], "id": "f"})
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await a.recv_type("ack")
        assert closed.value.rcvd.code == 1011
    finally:
        store._commit_sync = real
    b = await ws_open(server.ws("fault"))
    w = await b.join()
    assert w["rev"] == 1 and w["text"] == "kept"  # reloaded from the store: the unacked op never counted
    await b.send({"type": "op", "rev": 1, "op": [4, " lost?"], "id": "f"})
    assert (await b.recv_type("ack"))["rev"] == 2


async def test_http_api(server, ws_open):
    r = await http_get(f"{server.base_url}/healthz")
    assert r.status_code == 200
    r = await http_get(f"{server.base_url}/api/docs/fresh")
    assert r.json() == {"id": "fresh", "rev": 0, "text": ""}
    assert (await http_get(f"{server.base_url}/api/docs/.bad")).status_code == 404
    a = await ws_open(server.ws("put"))
    await a.join()
    await a.send({"type": "op", "rev": 0, "op": ["hello world"], "id": "h"})
    await a.recv_type("ack")
    import httpx

    async with httpx.AsyncClient() as client:
        r = await client.put(f"{server.base_url}/api/docs/put/text", content="hello brave 🌍 world".encode())
        assert r.status_code == 200 and r.json() == {"id": "put", "rev": 2}
        bad = await client.put(f"{server.base_url}/api/docs/put/text", content=b"\xff\xfe")
        assert bad.status_code == 400
    seen = await a.recv_type("op")  # connected editors see an ordinary, minimal edit
    assert seen["rev"] == 2 and seen["op"] == [6, "brave 🌍 ", 5]
    assert await text_of(server, "put") == "hello brave 🌍 world"
    metrics = (await http_get(f"{server.base_url}/metrics")).text
    assert "collab_ops_applied_total 2" in metrics
    assert "collab_conflicts_total 0" in metrics and "collab_remote_ops_total 0" in metrics  # one process
    assert "collab_store_ops_written_total 2" in metrics  # the same two, durably
    commits = int(metrics.split("\ncollab_store_commits_total ")[1].split()[0])
    assert 1 <= commits <= 2
    assert f"\ncollab_store_sync_seconds_count {commits}\n" in metrics, "each commit's fsync is timed"


async def test_batch_frames_are_opt_in_and_keep_order(server, ws_open):
    plain = await ws_open(server.ws("batch"))
    batched = await ws_open(server.ws("batch"))
    writer = await ws_open(server.ws("batch"))
    await plain.join()
    await batched.send({"type": "join", "batch": True})
    assert (await batched.recv())["type"] == "welcome"
    await writer.join()
    n = 150  # with the join, under the default burst of 200 messages (more would be rate_limited)
    for i in range(n):  # a burst: the server commits and announces these in a few batches
        await writer.send({"type": "op", "rev": i, "op": ([i] if i else []) + ["😀"], "id": f"b{i}"})
    plain_revs, batched_revs, frames = [], [], 0
    while len(plain_revs) < n:
        msg = await plain.recv()
        assert msg["type"] != "batch", "a client that did not opt in got a batch frame"
        if msg["type"] == "op":
            plain_revs.append(msg["rev"])
    while len(batched_revs) < n:
        frame = await batched.recv()
        frames += 1
        for msg in frame["messages"] if frame["type"] == "batch" else [frame]:
            if msg["type"] == "op":
                batched_revs.append(msg["rev"])
    assert plain_revs == batched_revs == list(range(1, n + 1))
    assert frames < n, "nothing was coalesced for the client that asked for batches"
    metrics = (await http_get(f"{server.base_url}/metrics")).text
    assert "collab_messages_coalesced_total 0" not in metrics


async def test_cursors_stay_right_when_the_history_they_need_is_trimmed(server_factory, ws_open):
    server = await server_factory(history_depth=3)
    a = await ws_open(server.ws("trimcur"))
    b = await ws_open(server.ws("trimcur"))
    wa = await a.join(user={"name": "Ann", "color": "#a00"})
    await b.join()
    await a.send({"type": "op", "rev": 0, "op": ["0123456789"], "id": "t0"})
    await a.recv_type("ack")
    await a.send({"type": "presence", "rev": 1, "cursor": {"anchor": 5, "head": 7}})
    await b.recv_type("presence")
    for i in range(10):  # ten inserts of an emoji before Ann's selection; only 3 ops stay in memory
        await b.send({"type": "op", "rev": 1 + i, "op": ["😀", 10 + i], "id": f"t{i + 1}"})
        await b.recv_type("ack")
    c = await ws_open(server.ws("trimcur"))
    ann = next(p for p in (await c.join())["peers"] if p["client"] == wa["client"])
    assert ann["cursor"] == {"anchor": 15, "head": 17}
