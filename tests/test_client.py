"""Tests of the Python client: the state machine's own API (events, errors),
randomized sessions against an in-memory reference server, splitting large
edits, and end to end against the real server.

The scenario cases (welcome, acks, resume, resend, refusals, presence,
splitting...) are transcripts in tests/conformance/client.json, replayed by
tests/test_conformance.py here and by the browser client's Node tests."""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from collab import ot
from collab.opsplit import json_bytes, split_op
from collab.client import (
    Changed,
    ClientState,
    CollabError,
    ReconnectNeeded,
    Refused,
    diff_op,
    http_url,
    ws_url,
)

# ---------------------------------------------------------------------------
# A tiny reference server speaking the protocol, for the randomized sessions.


@dataclass
class FakeConn:
    client: str
    inbox: list = field(default_factory=list)  # server -> client, not yet delivered
    joined: bool = False


class FakeServer:
    """In-memory single-document server: ordering, idempotent ids, resume, history depth."""

    def __init__(self, depth: int = 1000) -> None:
        self.text = ""
        self.rev = 0
        self.depth = depth
        self.history: list[tuple[int, list, str, str]] = []  # (rev, op, id, client)
        self.ids: dict[str, int] = {}
        self.conns: dict[str, FakeConn] = {}
        self.n = 0
        self.applied_ids: list[str] = []

    def open(self) -> FakeConn:
        self.n += 1
        c = FakeConn(f"c{self.n}")
        self.conns[c.client] = c
        return c

    def close(self, c: FakeConn) -> None:
        self.conns.pop(c.client, None)

    def first_kept(self) -> int:
        """Lowest `since` that can still be served from history."""
        return self.history[0][0] - 1 if self.history else self.rev

    def handle(self, c: FakeConn, msg: dict) -> None:
        msg = json.loads(json.dumps(msg))  # as on the wire
        t = msg["type"]
        if t == "join":
            c.joined = True
            since = msg.get("since")
            w = {"type": "welcome", "client": c.client, "rev": self.rev, "role": "edit", "peers": []}
            if since is not None and since >= self.first_kept():
                w["ops"] = [{"rev": r, "op": op, "id": i, "client": cl}
                            for r, op, i, cl in self.history if r > since]
            else:
                w["text"] = self.text
            c.inbox.append(w)
        elif t == "op":
            if msg["id"] in self.ids:
                c.inbox.append({"type": "ack", "id": msg["id"], "rev": self.ids[msg["id"]]})
                return
            rev, op = msg["rev"], msg["op"]
            if rev < self.first_kept():
                c.inbox.append({"type": "error", "code": "stale_rev", "message": "too old", "id": msg["id"]})
                return
            for r, hop, _, _ in self.history:
                if r > rev:
                    op, _ = ot.transform(op, hop)
            op = ot.normalize(op)
            self.text = ot.apply(self.text, op)
            self.rev += 1
            self.history.append((self.rev, op, msg["id"], c.client))
            self.history = self.history[-self.depth:]
            self.ids[msg["id"]] = self.rev
            self.applied_ids.append(msg["id"])
            c.inbox.append({"type": "ack", "id": msg["id"], "rev": self.rev})
            for o in self.conns.values():
                if o is not c and o.joined:
                    o.inbox.append({"type": "op", "rev": self.rev, "op": op, "client": c.client,
                                    "cursor": msg.get("cursor")})
        elif t == "presence":
            for o in self.conns.values():
                if o is not c and o.joined:
                    o.inbox.append({"type": "presence", "client": c.client, "rev": msg["rev"],
                                    "cursor": msg["cursor"], "user": None})


class Sim:
    """One ClientState wired to a FakeServer with explicit, controllable delivery."""

    def __init__(self, server: FakeServer) -> None:
        self.server = server
        self.state = ClientState({"name": "t"})
        self.conn: FakeConn | None = None
        self.outbox: list[dict] = []  # client -> server, not yet delivered
        self.events: list = []

    def connect(self) -> None:
        self.conn = self.server.open()
        self.outbox = []
        self.state.connection_made()
        self.collect()

    def disconnect(self) -> None:
        if self.conn is not None:
            self.server.close(self.conn)
        self.conn = None
        self.outbox = []  # lost in flight
        self.state.connection_lost()
        self.collect()

    def collect(self) -> None:
        self.outbox += self.state.messages_to_send()
        evs = self.state.events_received()
        self.events += evs
        if any(isinstance(e, ReconnectNeeded) for e in evs):
            self.disconnect()
            self.connect()

    def up(self, n: int | None = None) -> None:
        """Deliver client->server messages."""
        while self.outbox and (n is None or n > 0):
            m = self.outbox.pop(0)
            if self.conn is not None:
                self.server.handle(self.conn, m)
            n = None if n is None else n - 1

    def down(self, n: int | None = None) -> None:
        """Deliver server->client messages."""
        while self.conn is not None and self.conn.inbox and (n is None or n > 0):
            self.state.receive(self.conn.inbox.pop(0))
            self.collect()
            n = None if n is None else n - 1

    def edit(self, op) -> None:
        self.state.edit(op)
        self.collect()

    def splice(self, pos: int, delete: int, insert: str) -> None:
        self.edit(ot.from_splice(len(self.state.text), pos, delete, insert))


def settle(server: FakeServer, sims: list[Sim]) -> None:
    for _ in range(1000):
        busy = False
        for s in sims:
            if s.outbox or (s.conn and s.conn.inbox):
                busy = True
                s.up()
                s.down()
        if not busy:
            return
    raise AssertionError("did not settle")


# ---------------------------------------------------------------------------
# Unit tests of the state machine (hand-fed messages)


def welcome(rev=0, text="", client="me", **kw):
    return {"type": "welcome", "client": client, "rev": rev, "role": "edit", "peers": [], "text": text, **kw}


def joined(text="", rev=0) -> ClientState:
    s = ClientState(id_prefix="x")
    s.connection_made()
    assert s.messages_to_send() == [{"type": "join", "since": None, "batch": True}]
    s.receive(welcome(rev, text))
    assert s.events_received()[0].rev == rev
    return s



def test_first_snapshot_is_not_reported_as_a_change():
    s = joined("héllo 👋", 2)
    assert s.text == "héllo 👋"
    assert not [e for e in s.events_received() if isinstance(e, Changed)]



def test_remote_op_is_transformed_through_inflight_and_buffer():
    s = joined("ab", 1)
    s.edit([1, "X", 1])  # inflight: aXb
    s.messages_to_send()
    s.edit([3, "Y"])  # buffer: aXbY
    s.receive({"type": "op", "rev": 2, "op": ["😀", 2], "client": "p", "cursor": {"anchor": 1, "head": 1}})
    assert s.text == "😀aXbY"
    assert s.server_text == "😀ab"
    ch = [e for e in s.events_received() if isinstance(e, Changed)][0]
    assert ch.origin == "p" and ch.rev == 2 and ot.apply(ch.before, ch.op) == s.text
    # Peer cursor: after 😀 in server coordinates (1) -> local coordinates.
    assert s.peers["p"].cursor == (1, 1)
    s.receive({"type": "ack", "id": "x-1", "rev": 3})
    [m] = s.messages_to_send()
    assert m["rev"] == 3 and ot.apply(s.server_text, m["op"]) == s.text









def test_refused_op_is_rolled_back():
    s = joined("abc", 1)
    s.edit([3, "d"])
    [m] = s.messages_to_send()
    s.edit([4, "e"])
    s.receive({"type": "error", "code": "forbidden", "message": "read-only", "id": m["id"]})
    assert s.text == "abc" and s.synchronized
    evs = s.events_received()
    assert any(isinstance(e, Refused) and e.code == "forbidden" for e in evs)
    [ch] = [e for e in evs if isinstance(e, Changed)]
    assert ot.apply(ch.before, ch.op) == "abc"






def test_invalid_local_edit_raises_before_sending():
    s = joined("ab", 0)
    with pytest.raises(ot.InvalidOperation):
        s.edit([5, "x"])
    with pytest.raises(ot.InvalidOperation):
        s.edit([2, "\ud800"])
    assert s.messages_to_send() == []


def test_diff_op_code_points():
    for a, b in [("", "x"), ("abc", ""), ("a👋c", "a🌍c"), ("hello world", "hello brave new world"),
                 ("same", "same")]:
        assert ot.apply(a, diff_op(a, b)) == b


def test_urls():
    assert ws_url("http://h:1", "notes") == "ws://h:1/ws/notes"
    assert ws_url("https://h/base/", "a.b", token="t/+=") == "wss://h/base/ws/a.b?token=t%2F%2B%3D"
    assert ws_url("ws://h", "x") == "ws://h/ws/x"
    assert http_url("wss://h:2/") == "https://h:2"
    with pytest.raises(ValueError, match="invalid document name"):
        ws_url("ws://h", "../etc")
    with pytest.raises(ValueError, match="scheme"):
        ws_url("ftp://h", "x")


@settings(max_examples=300, deadline=None)
@given(base=st.text(alphabet=st.sampled_from('ab"\\\n\t\x01é中😀'), max_size=30),
       inserts=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 3),
                                  st.text(alphabet=st.sampled_from('ab"\\\n\x1f\u2028é中😀🎉'), max_size=60)),
                        min_size=1, max_size=4),
       budget=st.integers(30, 150))
def test_split_op_pieces_fit_and_apply_one_after_another(base, inserts, budget):
    op: list = [len(base)] if base else []
    text = base
    for pos, delete, ins in inserts:
        pos %= len(text) + 1
        step = ot.from_splice(len(text), pos, min(delete, len(text) - pos), ins)
        op = ot.compose(op, step) if op else step
        text = ot.apply(text, step)
    rest, cur = ot.normalize(op), base
    for _ in range(10_000):
        part = split_op(rest, budget)
        ot.validate(part.head, len(cur))
        assert part.nbytes >= json_bytes(part.head)
        if part.tail is not None:
            assert json_bytes(part.head) <= budget, part.head
            assert ot.normalize(ot.compose(part.head, part.tail)) == ot.normalize(rest)
        cur = ot.apply(cur, part.head)
        if part.tail is None:
            break
        rest = part.tail
    else:
        raise AssertionError("no progress")
    assert cur == text


def test_split_op_makes_progress_whatever_the_budget():
    assert split_op([3, "abc", -2, 4], 1000).tail is None
    part = split_op(["😀😀😀"], 1)
    assert (part.head, part.tail) == (["😀"], [1, "😀😀"])
    assert any(isinstance(c, str) for c in split_op([123456, "xyzw", 7], 12).head)


# ---------------------------------------------------------------------------
# Randomized: concurrent edits, random delivery, dropped connections.

text_st = st.text(alphabet=st.sampled_from("ab👋é\n"), min_size=0, max_size=3)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), depth=st.sampled_from([2, 5, 1000]), n=st.integers(2, 3))
def test_random_sessions_converge_and_apply_each_edit_once(seed, depth, n):
    rnd = random.Random(seed)
    server = FakeServer(depth=depth)
    sims = [Sim(server) for _ in range(n)]
    for s in sims:
        s.connect()
    marker = 0
    for _ in range(60):
        s = rnd.choice(sims)
        action = rnd.random()
        if action < 0.35:
            t = s.state.text
            safe = [p for p in range(len(t) + 1) if t[:p].count("<") == t[:p].count(">")]
            pos = rnd.choice(safe)
            if rnd.random() < 0.6:
                marker += 1
                s.splice(pos, 0, f"<{marker}>")
            else:
                # Never cut into a marker, so each one's presence can be counted.
                ends = [p for p in safe if p >= pos and "<" not in t[pos:p]]
                s.splice(pos, rnd.choice(ends) - pos, rnd.choice(["", "é", "👋"]))
        elif action < 0.6:
            s.up(rnd.randint(1, 2))
        elif action < 0.85:
            s.down(rnd.randint(1, 3))
        elif action < 0.93:
            if s.conn is not None:
                if rnd.random() < 0.5:
                    s.conn.inbox.clear()  # answers lost with the connection
                s.disconnect()
        else:
            if s.conn is None:
                s.connect()
        if s.state.phase == "ready":
            s.state.set_cursor((rnd.randint(0, len(s.state.text)),) * 2)
            s.collect()
    for s in sims:
        if s.conn is None:
            s.connect()
    settle(server, sims)
    texts = {s.state.text for s in sims}
    assert texts == {server.text}, (texts, server.text)
    for s in sims:
        assert s.state.synchronized and s.state.rev == server.rev
    for k in range(1, marker + 1):
        assert server.text.count(f"<{k}>") == 1, (k, server.text)
    assert len(server.applied_ids) == len(set(server.applied_ids))


# ---------------------------------------------------------------------------
# End to end against the real server (tests/conftest.py `server` fixture).

import collab  # noqa: E402
from collab.client import Document  # noqa: E402


def tap(d: Document, drop=lambda m: False) -> list[dict]:
    """Record what ``d`` sends; messages for which ``drop(m)`` is true are lost on the way."""
    sent: list[dict] = []
    inner = d.state.messages_to_send

    def messages_to_send() -> list[dict]:
        out = []
        for m in inner():
            sent.append(m)
            if not drop(m):
                out.append(m)
        return out

    d.state.messages_to_send = messages_to_send  # type: ignore[method-assign]
    return sent


def sever(d: Document) -> None:
    """Drop the connection abruptly (as a network failure would: close code 1006)."""
    assert d._ws is not None
    d._ws.transport.abort()


async def converged(*docs: Document, timeout: float = 10) -> str:
    """Wait until every document is synchronized at the same revision with the same text."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        if all(d.state.synchronized for d in docs) and len({(d.rev, d.text) for d in docs}) == 1:
            return docs[0].text
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not converged: {[(d.rev, d.text) for d in docs]}")
        await asyncio.sleep(0.01)


async def doc_text(server, doc: str) -> tuple[int, str]:
    import httpx

    async with httpx.AsyncClient() as c:
        j = (await c.get(f"{server.base_url}/api/docs/{doc}")).json()
    return j["rev"], j["text"]


async def test_e2e_two_clients_converge_with_emoji(server):
    async with collab.connect(server.base_url, "conv", user={"name": "a"}) as a, \
            collab.connect(server.ws_url, "conv", user={"name": "b"}) as b:
        await a.insert(0, "hello 👋 world")
        await a.synced()
        await b.wait_for(lambda t: t == "hello 👋 world", timeout=5)
        # Concurrent edits on both sides, several in flight at once.
        await asyncio.gather(a.insert(6, "🌍"), b.insert(8, "!"))
        await a.delete(0, 1)
        await b.replace(len(b.text) - 5, 5, "there")
        await a.insert(0, "H")
        await asyncio.gather(a.synced(), b.synced())
        await converged(a, b)
        rev, text = await doc_text(server, "conv")
        assert (rev, text) == (a.rev, a.text)
        assert text.startswith("Hello ") and text.count("🌍") == text.count("!") == 1
        assert "world" not in text and text.endswith("there")
        assert b.client_id in a.peers and a.peers[b.client_id].name == "b"


async def test_e2e_on_change_wait_for_and_presence(server):
    async with collab.connect(server.base_url, "chg") as a, collab.connect(server.base_url, "chg") as b:
        seen = []
        b.on_change(lambda op, origin: seen.append((op, origin)))
        await a.insert(0, "abc")
        await b.wait_for(lambda t: t == "abc", timeout=5)
        assert seen == [(["abc"], a.client_id)]
        await a.set_cursor(1, 3)
        for _ in range(100):
            if b.peers.get(a.client_id) and b.peers[a.client_id].cursor == (1, 3):
                break
            await asyncio.sleep(0.02)
        assert b.peers[a.client_id].cursor == (1, 3)
        # A remote insert before the selection moves it.
        await b.insert(0, "👋")
        await b.synced()
        assert b.peers[a.client_id].cursor == (2, 4)
        await a.wait_for(lambda t: t == "👋abc", timeout=5)
        with pytest.raises(asyncio.TimeoutError, match="condition not met"):
            await a.wait_for(lambda t: "zzz" in t, timeout=0.2)


async def test_e2e_ack_lost_then_reconnect_treats_welcome_op_as_ack(server):
    async with collab.connect(server.base_url, "lost", reconnect=True) as a:
        sent = tap(a)
        joins_before = a.connections
        # Drop the connection as soon as the server has our op: the ack is lost.
        real_receive = a.state.receive

        def receive(msg):
            if msg.get("type") == "ack" and not getattr(receive, "done", False):
                receive.done = True
                sever(a)
                return
            real_receive(msg)

        a.state.receive = receive  # type: ignore[method-assign]
        await a.insert(0, "once")
        await a.synced(timeout=10)
        assert a.connections == joins_before + 1
        joins = [m for m in sent if m["type"] == "join"]
        assert joins and joins[-1]["since"] == 0
        ops = [m for m in sent if m["type"] == "op"]
        assert len(ops) == 1  # recognized in welcome.ops by id: not resent
        assert await doc_text(server, "lost") == (1, "once")
        assert (a.rev, a.text) == (1, "once")


async def test_e2e_op_lost_is_resent_with_same_id_and_applied_once(server):
    async with collab.connect(server.base_url, "resend") as a, collab.connect(server.base_url, "resend") as b:
        state = {"dropped": 0}

        def drop(m):
            if m["type"] == "op" and state["dropped"] == 0:
                state["dropped"] = 1
                asyncio.get_running_loop().call_soon(sever, a)
                return True
            return False

        sent = tap(a, drop)
        await a.insert(0, "mine")
        await b.insert(0, "theirs ")
        await b.synced()
        await a.synced(timeout=10)
        ops = [m for m in sent if m["type"] == "op"]
        assert len(ops) == 2 and ops[0]["id"] == ops[1]["id"]
        assert ops[1]["rev"] >= ops[0]["rev"]
        await converged(a, b)
        rev, text = await doc_text(server, "resend")
        assert text == a.text and text.count("mine") == 1 and rev == 2
        # Resending the very same op again (a duplicate) is answered with its original revision.
        from conftest import WS

        ws = await WS.open(server.ws(("resend")))
        try:
            await ws.join()
            await ws.send({**ops[1], "type": "op"})
            ack = await ws.recv_type("ack")
            assert ack["id"] == ops[1]["id"] and ack["rev"] <= 2
        finally:
            await ws.close()
        assert (await doc_text(server, "resend"))[0] == 2


async def test_e2e_resume_with_since_gets_missed_ops(server):
    async with collab.connect(server.base_url, "resume") as a, collab.connect(server.base_url, "resume") as b:
        sent = tap(a)
        await a.insert(0, "x")
        await a.synced()
        good_url = a.url
        a.url = "ws://127.0.0.1:1/ws/resume"  # nothing listens: reconnects fail for now
        sever(a)
        await asyncio.sleep(0.05)
        await a.insert(1, "A")  # offline edit
        for ch in "123":
            await b.insert(0, ch)
        await b.synced()
        a.url = good_url
        await a.synced(timeout=15)
        await converged(a, b)
        assert a.text == "321xA"
        assert [m["since"] for m in sent if m["type"] == "join"][-1] == 1


@pytest.mark.parametrize("reaches_server", [True, False])
async def test_e2e_long_absence_resend_and_rebase(server_factory, reaches_server):
    server = await server_factory(history_depth=2)
    async with collab.connect(server.base_url, "absent") as a, collab.connect(server.base_url, "absent") as b:
        await b.insert(0, "base")
        await a.wait_for(lambda t: t == "base", timeout=5)
        good_url = a.url
        state = {"n": 0}

        def go_offline():
            a.url = "ws://127.0.0.1:1/ws/absent"  # nothing listens: reconnects fail for now
            sever(a)

        def drop(m):
            # Case "not reached": the op is lost on the way out, with the connection.
            if m["type"] == "op" and state["n"] == 0 and not reaches_server:
                state["n"] = 1
                asyncio.get_running_loop().call_soon(go_offline)
                return True
            return False

        real_receive = a.state.receive

        def receive(msg):
            # Case "reached": the server applies it, the ack is lost with the connection.
            if msg.get("type") == "ack" and state["n"] == 0 and reaches_server:
                state["n"] = 1
                go_offline()
                return
            real_receive(msg)

        a.state.receive = receive  # type: ignore[method-assign]
        sent = tap(a, drop)
        await a.insert(4, " 👋")
        await asyncio.sleep(0.05)
        await a.insert(0, "¡")  # offline, buffered
        for ch in "xyz":  # three revisions: more than the kept history
            await b.insert(len(b.text), ch)
            await b.synced()
        a.url = good_url
        await a.synced(timeout=15)
        await converged(a, b)
        assert a.text == "¡base 👋xyz"
        rev, text = await doc_text(server, "absent")
        assert text == a.text and text.count("👋") == 1
        ops = [m for m in sent if m["type"] == "op"]
        # The first op went out twice with its original rev and id (the probe), then the rest.
        assert ops[0]["id"] == ops[1]["id"] and ops[0]["rev"] == ops[1]["rev"] == 1


async def test_e2e_synced_and_close(server):
    d = await collab.connect(server.base_url, "life")
    await d.insert(0, "z")
    await d.synced(timeout=5)
    assert d.connected and d.rev == 1
    await d.close()
    with pytest.raises(CollabError, match="closed"):
        await d.insert(0, "y")


async def test_e2e_unreachable_server_raises_a_helpful_error():
    from conftest import free_port

    with pytest.raises(CollabError, match="collab serve"):
        async with collab.connect(f"http://127.0.0.1:{free_port()}", "x"):
            pass


async def test_e2e_bad_positions_raise():
    d = Document("http://127.0.0.1:1", "x")
    with pytest.raises(IndexError, match="code points"):
        await d.insert(5, "x")


# ---------------------------------------------------------------------------
# With a secret: tokens, roles, permanent close codes.

SECRET = "k" * 40


async def test_e2e_missing_or_wrong_token_is_permanent(server_factory):
    from collab.auth import mint_token

    server = await server_factory(secret=SECRET)
    with pytest.raises(CollabError) as e:
        await collab.connect(server.base_url, "sec")
    assert e.value.code == "unauthorized" and "collab token" in e.value.message
    other = mint_token(SECRET, ["elsewhere"])
    with pytest.raises(CollabError) as e:
        await collab.connect(server.base_url, "sec", token=other)
    assert e.value.code == "forbidden"


async def test_e2e_read_only_token(server_factory):
    from collab.auth import mint_token

    server = await server_factory(secret=SECRET)
    async with collab.connect(server.base_url, "ro", token=mint_token(SECRET, ["ro"])) as w, \
            collab.connect(server.base_url, "ro", token=mint_token(SECRET, ["r*"], role="read")) as r:
        assert (w.role, r.role) == ("edit", "read")
        await w.insert(0, "hi")
        await r.wait_for(lambda t: t == "hi", timeout=5)
        with pytest.raises(CollabError, match="read-only") as e:
            await r.insert(0, "no")
        assert e.value.code == "forbidden"
        # Were the local check skipped, the server's refusal surfaces on synced() and is rolled back.
        r.state.role = "edit"
        await r.insert(0, "no")
        with pytest.raises(CollabError) as e:
            await r.synced(timeout=5)
        assert e.value.code == "forbidden" and r.text == "hi"
        await r.synced(timeout=5)  # reported once
        r.state.role = "read"


async def test_e2e_survives_server_restart(tmp_path):
    """SIGKILL the server; edits made meanwhile are sent once it is back (same port, same data)."""
    from conftest import ServerProcess

    proc = ServerProcess(str(tmp_path / "data"))
    await asyncio.to_thread(proc.start)
    try:
        async with collab.connect(proc.base_url, "restart") as d:
            await d.insert(0, "before ")
            await d.synced(timeout=5)
            first = d.connections
            await asyncio.to_thread(proc.kill)
            await d.insert(len(d.text), "during 👋")
            await asyncio.sleep(0.3)
            await asyncio.to_thread(proc.start)
            await d.synced(timeout=30)
            assert d.connections > first
        rev, text = await doc_text(proc, "restart")
        assert (rev, text) == (2, "before during 👋")
    finally:
        await asyncio.to_thread(proc.stop)


async def test_edits_before_open_are_sent_on_join(server):
    d = Document(server.base_url, "early")
    await d.insert(0, "queued")
    async with d:
        await d.synced(timeout=5)
    assert await doc_text(server, "early") == (1, "queued")


# ---------------------------------------------------------------------------
# Large edits against the real server: split under its frame limit.


async def test_e2e_an_edit_above_the_frame_limit_goes_out_in_pieces(server_factory):
    server = await server_factory(max_message_bytes=8192)
    async with collab.connect(server.base_url, "big") as a, collab.connect(server.base_url, "big") as b:
        sent = tap(a)
        paste = 'line "quoted" \\ 😀 é\n' * 1000
        await a.insert(0, paste)
        await a.synced(timeout=20)
        ops = [m for m in sent if m["type"] == "op"]
        assert len(ops) > 1 and all(json_bytes(m) <= 8192 for m in ops)
        assert a.connections == 1  # never closed for size
        await b.wait_for(lambda t: t == paste, timeout=10)
        assert await doc_text(server, "big") == (len(ops), paste)


async def test_e2e_a_close_for_size_keeps_the_edit_and_resends_it_smaller(server_factory):
    """The client believes the limit is larger than the server's: the server closes with 1009
    (or resets: 1006), the client halves its limit and sends the edit again in pieces."""
    server = await server_factory(max_message_bytes=4096)
    d = collab.connect(server.base_url, "shrink")
    d.state.limit.forced = 64_000
    async with d:
        paste = "😀 twenty bytes..\n" * 1000
        await d.insert(0, paste)
        await d.synced(timeout=30)
        assert d.connections >= 2 and d.state.max_message_bytes <= 4096
        assert d.last_error is None or d.last_error.code != "too_large"
    assert (await doc_text(server, "shrink"))[1] == paste
