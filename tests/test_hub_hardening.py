"""The hub's share of the hardening issue: bounded queues in and out, fair accounting, safe retries.

Hub behaviour is tested on a real hub over the memory store; where a fault
cannot be caused for real (a store that fails or stalls on cue), a store
subclass holds or fails one call. The wire behaviour of a reused op id is
tested against a real server.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from collab.hub import DocumentFailed, Hub, HubConfig, Peer
from collab.protocol import CLOSE_INTERNAL, CLOSE_POLICY, Submit, User
from collab.store.memory import MemoryStore


def drain(peer: Peer) -> list[dict]:
    return [json.loads(f) for f in peer.take()]


async def settle(hub: Hub) -> None:
    for _ in range(50):
        await asyncio.sleep(0)


class GatedStore(MemoryStore):
    """The memory store; while :attr:`gate` is set to an event, appends wait for it (a slow disk).

    ``fail`` makes the held append raise once released (a write that fails).
    """

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.gate: asyncio.Event | None = None
        self.waiting = asyncio.Event()
        self.fail = False
        self.load_gate: asyncio.Event | None = None
        self.loading = asyncio.Event()

    async def append(self, doc, ops, size, snapshot=None, nbytes=None):
        if self.gate is not None:
            gate = self.gate
            self.waiting.set()
            await gate.wait()
            if self.fail:
                self.fail = False
                self.gate = None
                raise OSError("disk full (simulated)")
        return await super().append(doc, ops, size, snapshot, nbytes)

    async def load(self, doc, history_depth):
        if self.load_gate is not None:
            self.loading.set()
            await self.load_gate.wait()
        return await super().load(doc, history_depth)


# -- a bounded inbox ---------------------------------------------------------------


async def test_a_full_inbox_declines_offers_and_submit_waits_for_room():
    store = GatedStore()
    hub = Hub(store, HubConfig(inbox_size=3))
    writer = Peer(User("w", "#000"))
    doc = await hub.join("i", writer, None)
    drain(writer)
    store.gate = gate = asyncio.Event()
    assert doc.offer(writer, Submit(0, ["a"], "i0", None))
    await store.waiting.wait()  # i0 is being written; the next ones wait in the inbox
    for i in range(1, 4):
        assert doc.offer(writer, Submit(i, [i, "a"], f"i{i}", None)) is True
    assert doc.offer(writer, Submit(4, [4, "a"], "i4", None)) is False  # full: the session stops reading
    waiting = asyncio.ensure_future(doc.submit(writer, Submit(4, [4, "a"], "i4", None)))
    await settle(hub)
    assert not waiting.done(), "submit did not wait for room in the full inbox"
    store.gate = None
    gate.set()
    await asyncio.wait_for(waiting, 10)
    await settle(hub)
    assert [(m["type"], m["rev"]) for m in drain(writer)] == [("ack", r) for r in range(1, 6)]
    assert str(doc.text) == "aaaaa"
    await hub.close()


# -- a byte cap on each peer's outbox -------------------------------------------------


async def test_a_peer_whose_broadcasts_exceed_the_byte_cap_is_dropped_as_too_slow():
    hub = Hub(MemoryStore(), HubConfig(queue_bytes=4096))
    writer, reader = Peer(User("w", "#000")), Peer(User("r", "#000"))
    doc = await hub.join("b", writer, None)
    await hub.join("b", reader, None)
    drain(writer)
    size = 0
    for i in range(6):  # the reader never takes its frames: about 6 KiB of broadcasts queue up
        await doc.submit(writer, Submit(doc.rev, [size, "😀" * 250] if size else ["😀" * 250], f"b{i}", None))
        await settle(hub)
        size += 250
        drain(writer)
    assert reader.closed and reader.close_code == CLOSE_POLICY and not reader.flush
    assert not writer.closed and reader.id not in doc.peers
    await hub.close()


# -- the cost of old bases --------------------------------------------------------------


async def test_transformed_counts_the_history_ops_each_submit_was_transformed_against():
    hub = Hub(MemoryStore())
    writer, late = Peer(User("w", "#000")), Peer(User("l", "#000"))
    doc = await hub.join("t", writer, None)
    await hub.join("t", late, None)
    for i in range(7):
        await doc.submit(writer, Submit(i, [i, "a"] if i else ["a"], f"w{i}", None))
        await settle(hub)
    assert writer.transformed == 0  # always on the newest revision
    await doc.submit(late, Submit(0, ["🙂"], "l1", None))  # 7 behind
    await settle(hub)
    await doc.submit(late, Submit(5, [5, "!"], "l2", None))  # 3 behind (7 + its own)
    await settle(hub)
    assert late.transformed == 10 and str(doc.text) == "🙂aaaaa!aa"
    await hub.close()


# -- op ids: a reuse with new content is refused, a resend is acknowledged --------------------


async def test_an_op_id_reused_with_different_content_is_refused_with_bad_op():
    hub = Hub(MemoryStore())
    a, b = Peer(User("a", "#000")), Peer(User("b", "#000"))
    doc = await hub.join("r", a, None)
    await hub.join("r", b, None)
    await doc.submit(a, Submit(0, ["hello "], "my-first-edit", None))
    await settle(hub)
    drain(a), drain(b)
    await doc.submit(b, Submit(0, ["world"], "my-first-edit", None))  # the README's example id, pasted twice
    await settle(hub)
    errors = [m for m in drain(b) if m["type"] == "error"]
    assert len(errors) == 1 and errors[0]["code"] == "bad_op" and errors[0]["id"] == "my-first-edit"
    assert "fresh id" in errors[0]["message"]
    assert str(doc.text) == "hello " and doc.rev == 1
    with pytest.raises(Exception) as exc:  # the HTTP path raises it
        await doc.submit(None, Submit(1, [6, "!"], "my-first-edit", None))
    assert getattr(exc.value, "code", None) == "bad_op"
    await hub.close()


async def test_a_resend_as_is_or_rebased_is_acknowledged_with_its_first_revision():
    hub = Hub(MemoryStore())
    a, b = Peer(User("a", "#000")), Peer(User("b", "#000"))
    doc = await hub.join("s", a, None)
    await hub.join("s", b, None)
    await doc.submit(a, Submit(0, ["abc"], "a0", None))
    await settle(hub)
    await doc.submit(b, Submit(1, [3, "X"], "b1", None))  # b appends at rev 2
    await doc.submit(a, Submit(1, ["😀", 3], "a1", None))  # a prepends on rev 1: applied at 3 as ["😀", 4]
    await settle(hub)
    await doc.submit(b, Submit(3, [5, "Y"], "b2", None))  # rev 4
    await settle(hub)
    drain(a), drain(b)
    # The ack of a1 was lost; a resends it: as first sent, and rebased onto rev 2 (which it saw).
    await doc.submit(a, Submit(1, ["😀", 3], "a1", None))
    await doc.submit(a, Submit(2, ["😀", 4], "a1", None))
    await settle(hub)
    assert drain(a) == [{"type": "ack", "id": "a1", "rev": 3}] * 2
    # Rebased onto a revision that includes it, or changed: not a resend.
    await doc.submit(a, Submit(3, ["😀", 5], "a1", None))
    await doc.submit(a, Submit(1, ["🙃", 3], "a1", None))
    await settle(hub)
    assert [(m["type"], m.get("code")) for m in drain(a)] == [("error", "bad_op")] * 2
    assert str(doc.text) == "😀abcXY" and doc.rev == 4
    await hub.close()


async def test_an_id_known_only_to_the_store_is_still_acknowledged():
    hub = Hub(MemoryStore(history_depth=2), HubConfig(history_depth=2))
    a = Peer(User("a", "#000"))
    doc = await hub.join("o", a, None)
    for i in range(4):
        await doc.submit(a, Submit(i, [i, "x"] if i else ["x"], f"o{i}", None))
        await settle(hub)
    drain(a)
    await doc.submit(a, Submit(0, ["x"], "o0", None))  # compacted out of memory: only the id can be checked
    assert drain(a) == [{"type": "ack", "id": "o0", "rev": 1}]
    await hub.close()


async def test_a_reused_id_gets_an_error_on_the_wire_and_a_resend_its_ack(server, ws_open):
    url = server.ws("wire")
    a, b = await ws_open(url), await ws_open(url)
    await a.join()
    await b.join()
    await a.send({"type": "op", "rev": 0, "op": ["hi 👋"], "id": "my-first-edit"})
    assert await a.recv_type("ack") == {"type": "ack", "id": "my-first-edit", "rev": 1}
    await b.send({"type": "op", "rev": 0, "op": ["bye"], "id": "my-first-edit"})
    err = await b.recv_type("error")
    assert err["code"] == "bad_op" and err["id"] == "my-first-edit" and "fresh id" in err["message"]
    await a.send({"type": "op", "rev": 0, "op": ["hi 👋"], "id": "my-first-edit"})  # a resend
    assert await a.recv_type("ack") == {"type": "ack", "id": "my-first-edit", "rev": 1}
    rev, text = await server.hub.read("wire")
    assert (rev, text) == (1, "hi 👋")


# -- retries and loads ----------------------------------------------------------------------


async def test_replace_retries_on_a_document_that_failed_while_it_waited():
    store = GatedStore()
    hub = Hub(store)
    writer = Peer(User("w", "#000"))
    doc = await hub.join("p", writer, None)
    store.gate = gate = asyncio.Event()
    store.fail = True
    await doc.submit(writer, Submit(0, ["lost"], "p0", None))
    await store.waiting.wait()  # that commit is in flight and will fail
    replacing = asyncio.ensure_future(hub.replace("p", "new text 🎉"))
    await settle(hub)
    assert not replacing.done()
    gate.set()
    rev = await asyncio.wait_for(replacing, 10)
    assert writer.closed and writer.close_code == CLOSE_INTERNAL
    assert rev == 1 and await hub.read("p") == (1, "new text 🎉")
    await hub.close()


async def test_a_cancelled_loader_does_not_cancel_the_others_waiting_for_that_load():
    store = GatedStore()
    store.load_gate = gate = asyncio.Event()
    hub = Hub(store)
    first = asyncio.ensure_future(hub.join("l", Peer(User("a", "#000")), None))
    await store.loading.wait()
    second_peer = Peer(User("b", "#000"))
    second = asyncio.ensure_future(hub.join("l", second_peer, None))
    await settle(hub)
    first.cancel()
    await settle(hub)
    gate.set()
    doc = await asyncio.wait_for(second, 10)
    assert first.cancelled() and second_peer.id in doc.peers
    await hub.close()


async def test_a_failed_write_on_an_awaited_store_acks_nothing_and_closes_every_session():
    """The one failure path, for stores that are not pipelined (the memory store here, PostgreSQL in production)."""
    store = GatedStore()
    hub = Hub(store)
    writer, reader = Peer(User("w", "#000")), Peer(User("r", "#000"))
    doc = await hub.join("f", writer, None)
    await hub.join("f", reader, None)
    await doc.submit(writer, Submit(0, ["kept"], "k1", None))
    await settle(hub)
    drain(writer), drain(reader)
    store.gate = gate = asyncio.Event()
    store.fail = True
    await doc.submit(writer, Submit(1, [4, "!"], "lost", None))
    await store.waiting.wait()
    http = asyncio.ensure_future(doc.submit(None, Submit(1, [4, "?"], "http-1", None)))  # queued behind it
    await settle(hub)
    gate.set()
    with pytest.raises(DocumentFailed):
        await asyncio.wait_for(http, 10)
    for peer in (writer, reader):
        assert peer.closed and peer.close_code == CLOSE_INTERNAL
        assert [m for m in drain(peer) if m["type"] in ("ack", "op")] == []
    assert "f" not in hub.docs
    assert await hub.read("f") == (1, "kept")
    await hub.close()


async def test_a_write_cancelled_midway_acks_nothing_and_does_not_hang_shutdown():
    store = GatedStore()
    hub = Hub(store)
    writer = Peer(User("w", "#000"))
    doc = await hub.join("c", writer, None)
    drain(writer)
    store.gate = asyncio.Event()
    await doc.submit(writer, Submit(0, ["maybe"], "m1", None))
    await store.waiting.wait()
    doc._committer.cancel()  # the loop shutting down under it: the write's outcome is unknown
    await asyncio.wait_for(hub.close(), 10)
    assert writer.closed and writer.close_code == CLOSE_INTERNAL
    assert [m for m in drain(writer) if m["type"] == "ack"] == []


async def _a_commit_in_flight(doc_id: str, text: str, op_id: str) -> tuple:
    """A hub on a :class:`GatedStore` whose one writer's first edit (``text``, ``op_id``) is being written,
    held at the gate: ``(store, hub, writer, doc, gate)``; set ``gate`` to let it land."""
    store = GatedStore()
    hub = Hub(store)
    writer = Peer(User("w", "#000"))
    doc = await hub.join(doc_id, writer, None)
    drain(writer)
    store.gate = gate = asyncio.Event()
    await doc.submit(writer, Submit(0, [text], op_id, None))
    await store.waiting.wait()
    return store, hub, writer, doc, gate


async def test_a_cancelled_wait_for_the_commits_leaves_the_commit_in_flight_alone():
    """A hand-over waits with ``settle`` for its document's commit in flight; cancelling that wait (the
    process is closing) must not cancel the commit: it lands, and its author is acknowledged."""
    store, hub, writer, doc, gate = await _a_commit_in_flight("s", "🌍 kept", "s1")
    waiting = asyncio.Event()

    async def hand_over() -> None:
        waiting.set()
        await doc.settle()

    task = asyncio.ensure_future(hand_over())
    await waiting.wait()  # the task runs on to the first thing settle waits for before this resumes
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    store.gate = None
    gate.set()
    await asyncio.wait_for(doc.settle(), 10)
    assert drain(writer) == [{"type": "ack", "id": "s1", "rev": 1}]
    assert not writer.closed and await hub.read("s") == (1, "🌍 kept")
    await hub.close()


async def test_held_batches_let_settle_return_and_what_arrives_waits_in_order_until_resumed():
    """A hand-over holds its document's batches: ``settle`` returns once the commit in flight lands, and
    the submits that arrive meanwhile (a client's, an HTTP edit's) wait unanswered, in order, until the
    batches resume. Without the hold ``settle`` waited for those too, so a stream of them held the
    hand-over up for as long as it lasted."""
    store, hub, writer, doc, gate = await _a_commit_in_flight("held", "🌍", "h1")
    doc.hold_batches()
    await doc.submit(writer, Submit(1, [1, " 🦊"], "h2", None))
    http = asyncio.ensure_future(doc.submit(None, Submit(1, ["🐝 ", 1], "h3", None)))
    store.gate = None
    gate.set()
    await asyncio.wait_for(doc.settle(), 10)
    assert drain(writer) == [{"type": "ack", "id": "h1", "rev": 1}]
    assert doc.rev == 1 and doc.waiting and not http.done()

    doc.resume_batches()
    assert await asyncio.wait_for(http, 10) == 3
    await asyncio.wait_for(doc.settle(), 10)
    got = drain(writer)
    assert [(m["type"], m["rev"]) for m in got] == [("ack", 2), ("op", 3)] and got[0]["id"] == "h2"
    assert not doc.waiting and await hub.read("held") == (3, "🐝 🌍 🦊")
    await hub.close()
