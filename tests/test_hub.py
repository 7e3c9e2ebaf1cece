"""Several hubs ("processes") on one shared store and an in-process backplane.

These run the real hub, a real in-process backplane and a store that, like
PostgreSQL, refuses a revision another process took first. They check what
a client sees: one total order, strictly increasing revisions with no gap,
acks for resends committed elsewhere, presence across processes, and the
clients of a crashed process leaving.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from typing import AsyncIterator

import pytest

from collab import ot
from collab.backplane import LocalBackplane, LocalBus
from collab.hub import Hub, HubConfig, Peer
from collab.protocol import (
    CLOSE_RESTART, Cursor, Presence, ProtocolError, Submit, User, ack_msg, encode, op_frames, op_msg,
)
from collab.store.memory import MemoryStore


class SharedMemoryStore(MemoryStore):
    """The memory store, declared shared: several hubs append to it and may conflict."""

    may_conflict = True


def drain(peer: Peer) -> list[dict]:
    out = [json.loads(f) for f in peer.outbox]
    peer.outbox.clear()
    return out


async def settle(*hubs: Hub) -> None:
    """Let every document's commit loop and every queued delivery finish."""
    for _ in range(200):
        await asyncio.sleep(0)
        busy = [d._committer for h in hubs for d in h.docs.values() if d._committer is not None]
        if busy:
            await asyncio.gather(*busy, return_exceptions=True)
    await asyncio.sleep(0)


class Client:
    """A minimal client: follows the server's stream, checking its order, and keeps the text."""

    def __init__(self, hub: Hub, name: str) -> None:
        self.hub = hub
        self.peer = Peer(User(name, "#000000"))
        self.text = ""
        self.rev = 0
        self.revs: list[int] = []
        self.others: set[str] = set()
        self.doc = None

    async def join(self, doc: str = "d", since: int | None = None) -> dict:
        self.doc = await self.hub.join(doc, self.peer, since)
        welcome = drain(self.peer)[0]
        assert welcome["type"] == "welcome"
        self.rev = welcome["rev"]
        self.text = welcome.get("text", self.text)
        self.others = {p["client"] for p in welcome["peers"]}
        return welcome

    def read(self) -> list[dict]:
        """Process what arrived: ops apply in strict order; acks advance the revision."""
        msgs = drain(self.peer)
        for m in msgs:
            if m["type"] in ("op", "ack"):
                assert m["rev"] == self.rev + 1, f"{self.peer.id}: got rev {m['rev']} after {self.rev}: {msgs}"
                self.rev = m["rev"]
                self.revs.append(m["rev"])
                if m["type"] == "op":
                    self.text = ot.apply(self.text, m["op"])
                else:  # own op, as committed (transformed): what a real client's state machine arrives at
                    doc = self.doc
                    entry = doc.history[m["rev"] - doc.history_start - 1]
                    assert entry.rev == m["rev"] and entry.id == m["id"]
                    self.text = ot.apply(self.text, entry.op)
            elif m["type"] == "join":
                self.others.add(m["client"])
            elif m["type"] == "leave":
                self.others.discard(m["client"])
        return msgs

    async def insert(self, pos: int, s: str, op_id: str) -> None:
        """Submit an insert based on what this client has seen; applied locally once acked (see read)."""
        op = ot.from_splice(len(self.text), pos, 0, s)
        await self.doc.submit(self.peer, Submit(self.rev, op, op_id, None))


@pytest.fixture
def cluster():
    """``make(n)``: ``n`` hubs on one shared store and one bus."""
    hubs: list[Hub] = []

    def make(n: int, store=None, backplane: bool = True) -> tuple[list[Hub], SharedMemoryStore, LocalBus]:
        store = store or SharedMemoryStore()
        bus = LocalBus()
        for _ in range(n):
            bp = LocalBackplane(bus, check_interval=3600) if backplane else None
            hubs.append(Hub(store, HubConfig(idle_unload_seconds=3600), backplane=bp))
        return hubs[-n:], store, bus

    yield make
    for hub in hubs:
        for doc in hub.docs.values():
            if doc._unload_handle is not None:
                doc._unload_handle.cancel()


async def test_ops_cross_processes_in_one_order(cluster):
    (h1, h2), store, _ = cluster(2)
    a, b = Client(h1, "a"), Client(h2, "b")
    await a.join()
    await b.join()
    await a.insert(0, "A", "a1")
    await settle(h1, h2)
    assert [m["type"] for m in a.read()] == ["join", "ack"]  # b's arrival crossed over too
    assert a.others == {b.peer.id} and a.text == "A"
    got = b.read()
    assert [m["type"] for m in got] == ["op"] and b.text == "A"
    assert b.others == {a.peer.id}


async def test_conflict_rolls_back_integrates_and_retries(cluster):
    """Both processes commit 'rev 1' at once: one wins; the other integrates it and commits rev 2."""
    (h1, h2), store, bus = cluster(2)
    a, b = Client(h1, "a"), Client(h2, "b")
    await a.join()
    await b.join()
    for member in bus.members.values():
        member.paused = True  # no announcements: the store alone must sort it out
    await asyncio.gather(a.insert(0, "AAA", "a1"), b.insert(0, "BBB", "b1"))
    await settle(h1, h2)
    a.read()
    b.read()
    assert h1.docs["d"].replica.conflicts + h2.docs["d"].replica.conflicts == 1
    assert h1.conflicts + h2.conflicts == 1  # the hub-wide counter behind /metrics
    assert h1.remote_applied + h2.remote_applied == 1  # the loser integrated the winner's op
    state = await store.load("d", 10)
    assert state.rev == 2 and sorted([state.text[:3], state.text[3:]]) == ["AAA", "BBB"]
    # The loser's client saw the winner's op first, then its own ack: strict order.
    loser = b if h2.docs["d"].replica.conflicts else a
    assert loser.revs == [1, 2]
    winner = a if loser is b else b
    for member in bus.members.values():
        member.paused = False
    await winner.doc.sync()  # announcements were lost: the store fills the gap
    await settle(h1, h2)
    winner.read()
    assert winner.revs == [1, 2] and winner.text == state.text
    assert a.text == b.text and {h.docs["d"].snapshot() for h in (h1, h2)} == {(2, state.text)}


async def test_resend_committed_elsewhere_is_acked_not_applied_twice(cluster):
    (h1, h2), store, bus = cluster(2)
    a = Client(h1, "a")
    await a.join()
    for member in bus.members.values():
        member.paused = True
    await a.insert(0, "hello", "op-x")
    await settle(h1, h2)
    assert a.read()[0] == {"type": "ack", "id": "op-x", "rev": 1}
    # The ack was lost with process 1; the client resends to process 2, which has not heard of it.
    moved = Client(h2, "a")
    await moved.join()
    moved.rev, moved.text = 0, ""  # as the client knows it: its op is not acknowledged
    await moved.doc.submit(moved.peer, Submit(0, ["hello"], "op-x", None))
    await settle(h1, h2)
    msgs = [m for m in drain(moved.peer) if m["type"] in ("op", "ack")]
    assert msgs == [{"type": "ack", "id": "op-x", "rev": 1}]
    state = await store.load("d", 10)
    assert (state.rev, state.text) == (1, "hello")


async def test_resend_racing_the_announcement_is_acked_by_the_integration(cluster):
    """The resend reaches process 2 before the announcement; the store conflict resolves it."""
    (h1, h2), store, bus = cluster(2)
    a, b = Client(h1, "a"), Client(h2, "b")
    await a.join()
    await b.join()
    for member in bus.members.values():
        member.paused = True
    await a.insert(0, "x", "op-y")
    await settle(h1, h2)
    await b.doc.submit(b.peer, Submit(0, ["x"], "op-y", None))  # the same op, resent to process 2
    await settle(h1, h2)
    msgs = [m for m in drain(b.peer) if m["type"] in ("op", "ack")]
    assert msgs == [{"type": "ack", "id": "op-y", "rev": 1}]
    assert (await store.load("d", 10)).rev == 1


async def test_missed_messages_are_filled_from_the_store_in_order(cluster):
    (h1, h2), store, bus = cluster(2)
    a, b = Client(h1, "a"), Client(h2, "b")
    await a.join()
    await b.join()
    b_bp = h2.backplane
    b_bp.paused = True
    for i in range(5):
        await a.insert(len(a.text), str(i), f"a{i}")
        await settle(h1, h2)
        a.read()
    b_bp.paused = False
    await a.insert(len(a.text), "!", "a-last")  # its announcement reveals the gap
    await settle(h1, h2)
    b.read()
    assert b.revs == [1, 2, 3, 4, 5, 6] and b.text == "01234!"


async def test_many_concurrent_writers_on_three_processes_converge(cluster):
    hubs, store, _ = cluster(3)
    clients = [Client(hubs[i % 3], f"c{i}") for i in range(9)]
    for c in clients:
        await c.join()
    for round_ in range(10):
        for i, c in enumerate(clients):
            await c.insert(0, f"<{i}.{round_}>", f"c{i}-{round_}")
        await settle(*hubs)
        for c in clients:
            c.read()
    state = await store.load("d", 1000)
    assert state.rev == 90
    for c in clients:
        assert c.revs == list(range(1, 91)), "a client's stream had a gap or a duplicate"
    texts = {hub.docs["d"].snapshot() for hub in hubs}
    assert texts == {(90, state.text)} and {c.text for c in clients} == {state.text}
    for i in range(9):
        for r in range(10):
            assert state.text.count(f"<{i}.{r}>") == 1


async def test_presence_crosses_processes_and_a_crashed_process_leaves(cluster):
    (h1, h2), store, bus = cluster(2)
    a = Client(h1, "a")
    await a.join()
    await a.doc.presence(a.peer, Presence(0, Cursor(0, 0), User("alice", "#ff0000")))
    await settle(h1, h2)
    b = Client(h2, "b")
    welcome = await b.join()
    assert [(p["client"], p["user"]["name"]) for p in welcome["peers"]] == [(a.peer.id, "alice")]
    await a.insert(0, "hey", "a1")
    await settle(h1, h2)
    a.read()
    b.read()
    await a.doc.presence(a.peer, Presence(1, Cursor(3, 3), None))
    await settle(h1, h2)
    pres = [m for m in b.read() if m["type"] == "presence"]
    assert pres and pres[-1]["client"] == a.peer.id and pres[-1]["cursor"] == {"anchor": 3, "head": 3}
    h1.backplane.crash()
    await h2.check()
    await settle(h1, h2)
    assert any(m == {"type": "leave", "client": a.peer.id} for m in b.read())
    assert h2.docs["d"].replica.peers == {}


async def test_close_finishes_commits_and_asks_clients_to_reconnect(cluster):
    (h1,), store, _ = cluster(1)
    a = Client(h1, "a")
    await a.join()
    await a.insert(0, "last words", "w1")
    await h1.close()
    assert a.peer.closed and a.peer.close_code == CLOSE_RESTART
    assert (await store.load("d", 10)).text == "last words"
    assert a.read()[0]["type"] == "ack"


class SlowReadStore(SharedMemoryStore):
    """Reads of missed operations wait for :attr:`release` after taking their snapshot (a slow database)."""

    def __init__(self) -> None:
        super().__init__()
        self.release: asyncio.Event | None = None
        self.reading = asyncio.Event()

    async def ops_since(self, doc: str, rev: int):
        result = await super().ops_since(doc, rev)
        if self.release is not None:
            self.reading.set()
            await self.release.wait()
        return result


async def test_an_announcement_overtaking_a_store_read_is_still_integrated_in_order(cluster):
    """While a catch-up read is in flight, rev 4 is announced but rev 3's announcement is lost."""
    store = SlowReadStore()
    (h1, h2), _, bus = cluster(2, store=store)
    a, b = Client(h1, "a"), Client(h2, "b")
    await a.join()
    await b.join()
    h2.backplane.paused = True
    for i in range(2):
        await a.insert(len(a.text), str(i), f"a{i}")
        await settle(h1)
        a.read()
    release = store.release = asyncio.Event()
    syncing = asyncio.create_task(b.doc.sync())  # reads revs 1..2, then waits
    await store.reading.wait()
    store.release = None  # reads from now on go straight through
    for i in range(2, 4):
        await a.insert(len(a.text), str(i), f"a{i}")
        await settle(h1)
        a.read()
    state = await store.load("d", 10)
    last = state.history[-1]
    b.doc.on_remote({"t": "ops", "proc": h1.backplane.process_id,
                      "ops": [[last.rev, last.op, last.client, last.id, None]]})
    release.set()
    await syncing
    await settle(h1, h2)
    b.read()
    assert b.revs == [1, 2, 3, 4] and b.text == "0123" == state.text


# -- pipelined commits (SQLite) --------------------------------------------------------


class _Paused:
    """The SQLite store's fsync helper stopped (SIGSTOP), as a disk that does not answer; ``set()`` resumes it."""

    def __init__(self, store) -> None:
        self.pid = store.fsync_helper_pid
        assert self.pid is not None, "a FULL SQLite store fsyncs in a helper process"
        os.kill(self.pid, signal.SIGSTOP)

    def set(self) -> None:
        os.kill(self.pid, signal.SIGCONT)


async def _hold_writer(store) -> _Paused:
    """Hold every commit of the SQLite store short of durable (its fsync) until ``set()``."""
    return _Paused(store)


async def landed(hub: Hub, doc) -> None:
    """Settle ``hub`` and wait until ``doc`` has no commit in flight (a pipelined store)."""
    await settle(hub)
    while doc._flight:
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def sqlite_hub(path, config: HubConfig | None = None) -> AsyncIterator[tuple]:
    """A hub over a real SQLite store at ``path``; both closed at the end."""
    from collab.store.sqlite import SqliteStore

    store = SqliteStore(str(path))
    await store.open()
    hub = Hub(store, config)
    pid = store.fsync_helper_pid
    try:
        yield store, hub
    finally:
        if pid is not None:  # resume a helper a failed test left stopped, or closing waits for it
            os.kill(pid, signal.SIGCONT)
        await hub.close()
        await store.close()


async def test_sqlite_batches_are_applied_while_the_previous_commit_is_in_flight_and_acked_in_order(tmp_path):
    async with sqlite_hub(tmp_path / "p.sqlite3") as (store, hub):
        writer, watcher = Peer(User("w", "#000")), Peer(User("v", "#000"))
        doc = await hub.join("p", writer, None)
        await hub.join("p", watcher, None)
        drain(writer), drain(watcher)
        gate = await _hold_writer(store)
        await doc.submit(writer, Submit(0, ["😀"], "a1", None))
        for _ in range(20):
            await asyncio.sleep(0)
        await doc.submit(writer, Submit(1, [1, "b"], "a2", None))
        for _ in range(20):
            await asyncio.sleep(0)
        # Both batches are applied in memory (the second did not wait for the first's commit)...
        assert doc.rev == 2 and len(doc._flight) == 2
        # ...and their frames encoded while the disk is busy...
        assert [(f.encoded, len(f.items)) for f in doc._flight] == [(True, 1), (True, 1)]
        # ...but nothing is visible before it is durable, and a newcomer waits for a quiet point.
        assert drain(writer) == [] and drain(watcher) == []
        late = Peer(User("late", "#000"))
        joining = asyncio.ensure_future(hub.join("p", late, None))
        for _ in range(20):
            await asyncio.sleep(0)
        assert not joining.done()
        gate.set()
        await asyncio.wait_for(joining, 10)
        assert [(m["type"], m.get("id"), m.get("rev")) for m in drain(writer)] == [
            ("ack", "a1", 1), ("ack", "a2", 2), ("join", None, None)]
        assert [m["rev"] for m in drain(watcher) if m["type"] == "op"] == [1, 2]
        welcome = drain(late)[0]
        assert (welcome["rev"], welcome["text"]) == (2, "😀b")
        assert (await store.load("p", 10)).text == "😀b"


async def test_sqlite_a_failed_commit_refuses_the_batches_queued_behind_it(tmp_path):
    """A commit that fails with later batches in flight: none of them is acknowledged or
    stored, the clients are disconnected (1011), and the document reloads from what is durable."""
    import sqlite3

    from collab.protocol import CLOSE_INTERNAL

    async with sqlite_hub(tmp_path / "f.sqlite3") as (store, hub):
        writer = Peer(User("w", "#000"))
        doc = await hub.join("f", writer, None)
        await doc.submit(writer, Submit(0, ["kept"], "k1", None))
        await landed(hub, doc)
        drain(writer)
        gate = await _hold_writer(store)
        await doc.submit(writer, Submit(1, [4, "!"], "k2", None))  # written, waiting for its fsync
        for _ in range(20):
            await asyncio.sleep(0)
        # The next transaction fails as a full disk would: a trigger aborts inserts of this op id.
        blocker = sqlite3.connect(store.path)
        blocker.execute("CREATE TRIGGER fail AFTER INSERT ON log WHEN instr(new.ops, '\"x1\"') > 0 "
                        "BEGIN SELECT RAISE(ABORT, 'disk full (simulated)'); END")
        blocker.commit()
        blocker.close()
        await doc.submit(writer, Submit(2, [5, "x"], "x1", None))
        for _ in range(20):
            await asyncio.sleep(0)
        await doc.submit(writer, Submit(3, [6, "y"], "x2", None))
        for _ in range(20):
            await asyncio.sleep(0)
        assert len(doc._flight) == 3  # x1 and x2 queue behind k2, for one transaction
        gate.set()
        for _ in range(500):
            if writer.closed:
                break
            await asyncio.sleep(0.01)
        assert writer.closed and writer.close_code == CLOSE_INTERNAL
        assert [m["id"] for m in drain(writer) if m["type"] == "ack"] == ["k2"]
        state = await store.load("f", 10)
        assert (state.rev, state.text) == (2, "kept!")  # x2 is refused with x1: no gap in the log
        assert await store.find_ops("f", ["x1", "x2"]) == {}


async def test_a_submit_on_any_kept_base_is_transformed_through_exactly_the_ops_after_it():
    """Bases near the newest end and near the oldest kept one (the history is read from either end)."""
    hub = Hub(MemoryStore(history_depth=8), HubConfig(history_depth=8))
    writer, other = Peer(User("w", "#000")), Peer(User("o", "#000"))
    doc = await hub.join("k", writer, None)
    await hub.join("k", other, None)
    for i in range(12):  # revisions 1-12 append "a"; 5-12 stay kept
        await doc.submit(writer, Submit(i, [i, "a"] if i else ["a"], f"a{i}", None))
        await settle(hub)
    assert doc.history_start == 4
    drain(writer), drain(other)
    for n, behind in enumerate(range(9)):  # 0 to 8 revisions behind: every kept base
        base, rev = doc.rev - behind, doc.rev + 1
        assert len(doc.history) == 8 and base >= doc.history_start
        # An insert at 0 of the text at `base` (one character per revision so far).
        await doc.submit(other, Submit(base, ["🙂", base], f"e{n}", None))
        await settle(hub)
        acks = [m for m in drain(other) if m["type"] == "ack"]
        assert acks == [{"type": "ack", "id": f"e{n}", "rev": rev}], (behind, acks)
        assert str(doc.text) == "🙂" * (n + 1) + "a" * 12
    assert not [m for m in drain(writer) if m["type"] == "error"]


async def test_sqlite_a_closed_document_leaves_nothing_cached_in_the_store(tmp_path):
    """The store's in-memory op ids live as long as the hub keeps the document open."""
    async with sqlite_hub(tmp_path / "u.sqlite3", HubConfig(idle_unload_seconds=0.05)) as (store, hub):
        writer = Peer(User("w", "#000"))
        doc = await hub.join("u", writer, None)
        await doc.submit(writer, Submit(0, ["🦄"], "u1", None))
        await landed(hub, doc)
        await store._run(lambda: None)  # the store's thread is past the commit
        assert store._log_ids.get("u") == {"u1": 1}
        doc.remove(writer)
        for _ in range(200):
            if "u" not in hub.docs:
                break
            await asyncio.sleep(0.01)
        assert "u" not in hub.docs, "the idle document was not closed"
        await store._run(lambda: None)
        assert "u" not in store._log_ids and store._log_ids_count == 0
        again = await hub.join("u", Peer(User("v", "#000")), None)  # reopened: still finds the op by its id
        assert await store.find_ops("u", ["u1", "nope"]) == {"u1": 1} and str(again.text) == "🦄"


async def test_offer_queues_at_once_or_hands_over_to_submit():
    """``offer`` is ``submit``'s fast path: same result, or ``False`` when the store must be asked."""
    hub = Hub(MemoryStore(), HubConfig(history_depth=2))
    writer, reader = Peer(User("w", "#000")), Peer(User("r", "#000"), role="view")
    doc = await hub.join("o", writer, None)
    await hub.join("o", reader, None)
    drain(writer), drain(reader)
    for i, op in enumerate([["😀"], [1, "a"], [2, "b"], [3, "c"]]):
        assert doc.offer(writer, Submit(i, op, f"o{i}", None)) is True
        await settle(hub)
    assert [(m["type"], m["rev"]) for m in drain(writer)] == [("ack", 1), ("ack", 2), ("ack", 3), ("ack", 4)]
    assert str(doc.text) == "😀abc" and doc.history_start == 2
    # Older than the kept history: only the store knows whether these were applied.
    assert doc.offer(writer, Submit(0, ["😀"], "o0", None)) is False
    assert doc.offer(writer, Submit(1, [1, "z"], "new", None)) is False
    assert doc._inbox == []
    await doc.submit(writer, Submit(0, ["😀"], "o0", None))
    assert drain(writer) == [{"type": "ack", "id": "o0", "rev": 1}]
    with pytest.raises(ProtocolError) as exc:
        doc.offer(reader, Submit(4, [4, "x"], "r1", None))
    assert exc.value.code == "forbidden" and doc._inbox == []
    await hub.close()


@pytest.mark.parametrize("cursor", [None, Cursor(3, 1)])
def test_op_frames_are_the_ack_and_op_messages(cursor):
    args = (7, [2, "😀 \"q\"\n", -1, 4], "c1", cursor, "id-é")
    ack, frame = op_frames(*args)
    assert json.loads(ack) == ack_msg("id-é", 7)
    assert json.loads(frame) == json.loads(encode(op_msg(*args)))
    assert (ack, frame) == (encode(ack_msg("id-é", 7)), encode(op_msg(*args)))


@pytest.mark.parametrize("op", [[2, "😀", -1, 3], [1, -1, "ab", 2], ["x", "y"]])
def test_parse_gives_a_submit_its_op_normalized_with_its_lengths(op):
    from collab.protocol import parse

    sub = parse(json.dumps({"type": "op", "rev": 3, "id": "p1", "op": op}))
    assert isinstance(sub, Submit) and sub.op == ot.normalize(op)
    assert sub.lengths == ot.lengths(sub.op)


async def test_local_backplane_sends_to_one_process_and_keeps_owner_records():
    bus = LocalBus()
    planes = [LocalBackplane(bus) for _ in range(3)]
    got: list[list[dict]] = [[] for _ in planes]
    arrived = asyncio.Event()

    def catcher(i: int):
        def take(msg: dict) -> None:
            got[i].append(msg)
            arrived.set()
        return take

    async def until(cond) -> None:
        while not cond():
            arrived.clear()
            await arrived.wait()

    for i, bp in enumerate(planes):
        await bp.start(lambda doc, msg: None, lambda: None, catcher(i))
    a, b, c = planes
    a.send(b.process_id, {"t": "submit", "text": "héllo 🌍"})
    a.send(c.process_id, {"t": "mark"})  # delivered in order: once c has it, b has its own
    await asyncio.wait_for(until(lambda: got[2]), 5)
    assert got == [[], [{"t": "submit", "text": "héllo 🌍", "proc": a.process_id}],
                   [{"t": "mark", "proc": a.process_id}]]
    a.set_owner("d")
    b.drop_owner("d")
    assert await c.owner("d") == a.process_id
    a.drop_owner("d")
    assert await c.owner("d") is None
    b.crash()
    a.send(b.process_id, {"t": "submit"})
    a.send(c.process_id, {"t": "mark"})
    await asyncio.wait_for(until(lambda: len(got[2]) == 2), 5)
    assert len(got[1]) == 1
