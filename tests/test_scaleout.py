"""Scale-out end to end: three server processes on one PostgreSQL and one Redis.

Nine clients (the project's Python client, which reconnects and resends by
op id) reach the processes through small TCP proxies, the way a load
balancer without sticky sessions would: each proxy prefers "its" process
and falls back to a live one. One process is killed with SIGKILL mid-stream;
its clients reconnect through their proxy to the others. Everything must
converge, every process must report the same text and revision, nothing
acknowledged may be lost and nothing applied twice, and the dead process's
clients must vanish from everyone's presence.

Needs ``COLLAB_TEST_DATABASE_URL`` and ``COLLAB_TEST_REDIS_URL``; skipped
with the reason otherwise. Each run uses its own PostgreSQL schema and
Redis prefix, removed afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import re
import secrets
import signal
from dataclasses import dataclass
from typing import AsyncIterator

import pytest

import collab.client as cc
from conftest import WS, ServerProcess, free_port, http_get, metric

PG_URL = os.environ.get("COLLAB_TEST_DATABASE_URL", "")
REDIS_URL = os.environ.get("COLLAB_TEST_REDIS_URL", "")


async def _unavailable() -> str | None:
    """Why these tests cannot run here, or ``None``."""
    if not PG_URL or not REDIS_URL:
        return ("COLLAB_TEST_DATABASE_URL and COLLAB_TEST_REDIS_URL must both be set "
                "(e.g. postgresql://postgres@127.0.0.1:5432/test and redis://127.0.0.1:6379/0)")
    try:
        import asyncpg
        import redis.asyncio as aioredis
    except ImportError as exc:
        return f"{exc.name} is not installed (pip install 'collab[postgres,redis]')"
    try:
        conn = await asyncpg.connect(PG_URL, timeout=5)
        await conn.close()
    except Exception as exc:
        return f"PostgreSQL at COLLAB_TEST_DATABASE_URL is unreachable: {exc}"
    try:
        r = aioredis.from_url(REDIS_URL, socket_connect_timeout=5)
        await r.ping()
        await r.aclose()
    except Exception as exc:
        return f"Redis at COLLAB_TEST_REDIS_URL is unreachable: {exc}"
    return None


async def _answer(peer, op_id: str, seen: list[dict]) -> dict:
    """The ack or error for ``op_id`` among the frames sent to ``peer``, which are taken as a connection
    would (into ``seen``); waits for each new frame, not for time."""
    import json

    arrived = asyncio.Event()
    peer.notify = arrived.set
    while True:
        arrived.clear()
        seen.extend(map(json.loads, peer.take()))
        for m in seen:
            if m.get("type") in ("ack", "error") and m.get("id") == op_id:
                return m
        await arrived.wait()


def _with_param(url: str, key: str, value: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{key}={value}"


class Proxy:
    """A TCP proxy that forwards each new connection to the first live backend, trying ``order`` in turn."""

    def __init__(self, backends: list[ServerProcess], order: list[int]) -> None:
        self.backends = backends
        self.order = order
        self.port = free_port()
        self.server: asyncio.base_events.Server | None = None
        self.connections: list[asyncio.StreamWriter] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> "Proxy":
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream = None
        for i in self.order:
            try:
                upstream = await asyncio.open_connection("127.0.0.1", self.backends[i].port)
                break
            except OSError:
                continue
        if upstream is None:
            writer.close()
            return
        up_reader, up_writer = upstream
        self.connections += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for w in self.connections:
            with contextlib.suppress(Exception):
                w.close()


def _sealed_body(entries: list, proc: str, at: float, n: int) -> bytes:
    """A bundle's body as a process writes it (to be sealed, or not, by the caller)."""
    import json

    return json.dumps({"m": entries, "at": at, "n": n, "proc": proc}, ensure_ascii=False).encode()


def _bundle(doc: str, msg: object, proc: str = "forger") -> str:
    """A bundle as processes publish them on the Redis bus: one message of ``doc``, from ``proc``."""
    import json

    return json.dumps({"m": [["d", doc, msg]], "proc": proc})


async def _drop_test_state(schema: str, prefix: str) -> None:
    """Remove a test's PostgreSQL schema and its Redis keys."""
    import asyncpg
    import redis.asyncio as aioredis

    conn = await asyncpg.connect(PG_URL, timeout=5)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()
    r = aioredis.from_url(REDIS_URL)
    keys = [k async for k in r.scan_iter(match=f"{prefix}:*")]
    if keys:
        await r.delete(*keys)
    await r.aclose()


@dataclass(frozen=True)
class FreshState:
    """A PostgreSQL schema and a Redis prefix of one test's own."""

    schema: str
    prefix: str

    @property
    def env(self) -> dict[str, str]:
        """``DATABASE_URL`` and ``REDIS_URL`` that point a server at them."""
        return {"DATABASE_URL": _with_param(PG_URL, "schema", self.schema),
                "REDIS_URL": _with_param(REDIS_URL, "prefix", self.prefix)}


@contextlib.asynccontextmanager
async def fresh_state(kind: str) -> AsyncIterator[FreshState]:
    """Skip the test without PostgreSQL and Redis; else a fresh schema (``collab_{kind}_...``) and Redis
    prefix, dropped afterwards."""
    reason = await _unavailable()
    if reason:
        pytest.skip(reason)
    state = FreshState(f"collab_{kind}_{secrets.token_hex(5)}", f"collab-test-{secrets.token_hex(5)}")
    try:
        yield state
    finally:
        await _drop_test_state(state.schema, state.prefix)


@pytest.fixture
async def cluster(tmp_path) -> AsyncIterator:
    """``await cluster(n)`` starts ``n`` processes on a fresh schema and Redis prefix."""
    async with fresh_state("scale") as state:
        env = dict(
            state.env,
            COLLAB_PRESENCE_TIMEOUT="2",
            COLLAB_IDLE_UNLOAD_SECONDS="600",
            # Nine fast editors reach the servers through one loopback proxy: one address, not a flood.
            COLLAB_ADDR_MSG_RATE="100000",
            COLLAB_ADDR_MSG_BURST="100000",
        )
        procs: list[ServerProcess] = []

        async def start(n: int) -> list[ServerProcess]:
            for i in range(n):
                p = ServerProcess(str(tmp_path / f"data{len(procs)}"), env=dict(env))
                await asyncio.to_thread(p.start)
                procs.append(p)
            return procs

        try:
            yield start
        finally:
            for p in procs:
                p.kill()


async def editor(d: cc.Document, me: int, rng: random.Random, edits: int, inserted: list[str]) -> None:
    """Insert unique tokens between tokens (never inside one), with some cursor moves."""
    for n in range(edits):
        await asyncio.sleep(rng.random() * 0.02)
        text = d.text
        bounds = [0] + [m.end() for m in re.finditer(">", text)]
        token = f"<{me}-{n}>"
        inserted.append(token)
        await d.insert(rng.choice(bounds), token)
        if rng.random() < 0.2:
            pos = rng.choice(bounds)
            await d.set_cursor(min(pos, len(d.text)))


async def doc_state(proc: ServerProcess, doc: str) -> tuple[int, str]:
    body = (await http_get(f"{proc.base_url}/api/docs/{doc}")).json()
    return body["rev"], body["text"]


async def test_three_processes_nine_clients_one_killed(cluster):
    procs = await cluster(3)
    proxies = [await Proxy(procs, [i, (i + 1) % 3, (i + 2) % 3]).start() for i in range(3)]
    doc = "scale"
    rng = random.Random(6)
    clients = [await cc.connect(proxies[i % 3].url, doc, user={"name": f"u{i}", "color": "#123456"}) for i in range(9)]
    inserted: list[list[str]] = [[] for _ in clients]
    try:
        writers = [asyncio.create_task(editor(d, i, random.Random(rng.random()), 60, inserted[i]))
                   for i, d in enumerate(clients)]
        # Mid-stream: once a good share of edits is acknowledged everywhere, kill process 0.
        while sum(len(x) for x in inserted) < 9 * 20:
            await asyncio.sleep(0.01)
        before_kill = {d.client_id for d in clients[0::3]}
        procs[0].kill()
        await asyncio.gather(*writers)
        for d in clients:
            await d.synced(timeout=60)

        # Every live process reports the same state, and so does the killed one once restarted.
        await asyncio.to_thread(procs[0].start)
        states = [await doc_state(p, doc) for p in procs]
        assert len(set(states)) == 1, f"processes disagree: {[(r, len(t)) for r, t in states]}"
        rev, text = states[0]
        tokens = re.findall(r"<\d+-\d+>", text)
        assert "".join(tokens) == text, "a token was split: an insert landed inside another"
        assert len(tokens) == len(set(tokens)), "an operation was applied twice"
        assert sorted(tokens) == sorted(t for x in inserted for t in x), "an acknowledged operation was lost"
        # The client composes edits made while one is in flight, so a revision may carry several.
        assert 0 < rev <= len(tokens)
        for d in clients:
            await d.wait_for(lambda t: t == text, timeout=30)
            assert d.rev == rev
        assert any(d.connections > 1 for d in clients[0::3]), "the killed process's clients did not reconnect"

        # Presence: each client sees exactly the other eight; the dead process's ids are gone.
        ids = {d.client_id for d in clients}
        assert not (before_kill & ids), "reconnected clients kept their old ids"

        async def presence_settled() -> None:
            while True:
                if all(set(d.peers) == ids - {d.client_id} for d in clients):
                    return
                await asyncio.sleep(0.1)

        try:
            await asyncio.wait_for(presence_settled(), 30)
        except asyncio.TimeoutError:
            stale = {d.client_id: sorted(set(d.peers) ^ (ids - {d.client_id})) for d in clients}
            raise AssertionError(f"presence did not settle: differences {stale}") from None
    finally:
        for d in clients:
            await d.close()
        for p in proxies:
            await p.stop()


async def test_metrics_show_that_edits_on_one_process_stay_off_the_bus_until_another_has_the_document(cluster):
    """Two real processes. A writer on process 1 alone puts nothing on the bus per edit (its join only);
    once a reader joins on process 2, each edit is announced, and the reader gets every one."""
    import json

    import websockets

    p1, p2 = await cluster(2)
    url = "/ws/quiet-metrics"
    async with websockets.connect(p1.ws_url + url) as writer:
        await writer.send(json.dumps({"type": "join"}))
        rev = json.loads(await writer.recv())["rev"]

        async def edit(n: int) -> None:
            nonlocal rev
            for i in range(n):
                await writer.send(json.dumps({"type": "op", "rev": rev, "op": ["🎉", rev] if rev else ["🎉"],
                                              "id": f"w{rev}"}))
                while (m := json.loads(await writer.recv()))["type"] != "ack":
                    pass
                rev = m["rev"]

        while (before := await metric(p1, "collab_backplane_published_total")) < 1:  # the join, sent
            await asyncio.sleep(0.05)
        await edit(20)
        assert await metric(p1, "collab_backplane_published_total") == before  # nothing per edit
        async with websockets.connect(p2.ws_url + url) as reader:
            await reader.send(json.dumps({"type": "join"}))
            welcome = json.loads(await reader.recv())
            seen = welcome["rev"]
            # The join reaches process 1 (which then announces): wait for it to show the reader.
            while (await metric(p1, "collab_backplane_received_total")) < 1:
                await asyncio.sleep(0.05)
            await edit(20)
            while seen < 40:
                m = json.loads(await asyncio.wait_for(reader.recv(), 30))
                if m["type"] == "op":
                    assert m["rev"] == seen + 1
                    seen = m["rev"]
        assert await metric(p1, "collab_backplane_published_total") >= before + 20


async def test_sigterm_closes_with_1012_and_clients_move_on(cluster):
    procs = await cluster(2)
    proxy = await Proxy(procs, [0, 1]).start()
    try:
        raw = await WS.open(f"{procs[0].ws_url}/ws/term")
        await raw.join()
        client = await cc.connect(proxy.url, "term")
        await client.insert(0, "before ")
        await client.synced(timeout=10)
        procs[0].proc.send_signal(signal.SIGTERM)
        with pytest.raises(Exception) as closed:
            while True:
                await raw.recv(timeout=15)
        code = getattr(getattr(closed.value, "rcvd", None), "code", None)
        assert code == 1012, f"expected close 1012 (service restart), got {closed.value!r}"
        # uvicorn re-raises the captured SIGTERM once its graceful shutdown is done.
        assert await asyncio.to_thread(procs[0].proc.wait, 20) in (0, -signal.SIGTERM)
        log = procs[0].proc.stderr.read().decode()
        assert "Application shutdown complete" in log, f"the lifespan shutdown (hub.close) did not run: {log[-1500:]}"
        await client.insert(len(client.text), "after")
        await client.synced(timeout=30)
        assert client.connections >= 2
        assert await doc_state(procs[1], "term") == (client.rev, "before after")
    finally:
        await proxy.stop()
        with contextlib.suppress(Exception):
            await client.close()


@pytest.fixture
async def real_hubs() -> AsyncIterator:
    """``await real_hubs(n)``: ``n`` hubs in this process, each with its own PostgreSQL pool and Redis backplane."""
    reason = await _unavailable()
    if reason:
        pytest.skip(reason)
    from collab.backplane.redis import RedisBackplane
    from collab.hub import Hub, HubConfig
    from collab.store.postgres import PostgresStore

    schema = f"collab_hubs_{secrets.token_hex(5)}"
    prefix = f"collab-test-{secrets.token_hex(5)}"
    hubs: list = []

    async def make(n: int, redis_url: str = "", **config) -> list:
        """``redis_url``: where these ``n`` reach Redis (default ``COLLAB_TEST_REDIS_URL``)."""
        for _ in range(n):
            store = PostgresStore(PG_URL, schema=schema)
            await store.open()
            bp = RedisBackplane(_with_param(redis_url or REDIS_URL, "prefix", prefix), heartbeat_ttl=3)
            await bp.open()
            hub = Hub(store, HubConfig(idle_unload_seconds=600, **config), backplane=bp)
            await hub.start()
            hubs.append(hub)
        return hubs

    yield make
    for hub in hubs:
        await hub.close()
        await hub.store.close()
    await _drop_test_state(schema, prefix)
    assert not _collab_tasks_left(), "closed hubs left tasks running"


def _collab_tasks_left() -> list[str]:
    """The tasks still running whose coroutine is collab's (a closed hub waits for its own to end)."""
    import collab

    root = os.path.dirname(collab.__file__)
    left = []
    for task in asyncio.all_tasks():
        code = getattr(task.get_coro(), "cr_code", None)
        if task is not asyncio.current_task() and not task.done() and code and code.co_filename.startswith(root):
            left.append(f"{task.get_name()}: {getattr(code, 'co_qualname', code.co_name)}")  # (3.11+)
    return left


async def test_a_dropped_redis_connection_is_noticed_and_the_gap_filled(real_hubs):
    """Redis drops process 2's subscription while process 1 commits: process 2 still shows every op, in order."""
    import json

    import redis.asyncio as aioredis

    from collab.hub import Peer
    from collab.protocol import Submit

    h1, h2 = await real_hubs(2)
    a, b = Peer(queue_size=10_000), Peer(queue_size=10_000)
    doc1 = await h1.join("gap", a, None)
    doc2 = await h2.join("gap", b, None)
    r = aioredis.from_url(REDIS_URL)
    try:
        clients = await r.client_list()
        name = f"{h2.backplane.prefix}-{h2.backplane.process_id}"
        mine = [c for c in clients if c.get("name") == name and int(c.get("sub", 0) or 0) > 0]
        assert mine, f"process 2's subscriber connection is not in CLIENT LIST: {clients}"
        for c in mine:
            await r.client_kill_filter(_id=c["id"])
    finally:
        await r.aclose()
    text = ""
    for i in range(20):
        op = [len(text), str(i % 10)] if text else [str(i % 10)]
        assert await doc1.submit(None, Submit(doc1.rev, op, f"w{i}", None)) == i + 1
        text += str(i % 10)

    async def caught_up() -> None:
        while doc2.snapshot() != (20, text) or not h2.backplane.resyncs:
            await asyncio.sleep(0.05)

    try:
        await asyncio.wait_for(caught_up(), 30)
    except asyncio.TimeoutError:
        raise AssertionError(f"process 2 is at {doc2.snapshot()[0]} of 20, resyncs {h2.backplane.resyncs}") from None
    revs = [m["rev"] for m in map(json.loads, b.outbox) if m["type"] == "op"]
    assert revs == list(range(1, 21)), f"process 2's client saw {revs}"


async def test_a_redis_connection_that_died_without_a_word_is_replaced(real_hubs, tcp_proxy):
    """Process 2 reaches Redis through a proxy that stops forwarding (no reset, no close: a dropped NAT
    entry). It notices that its own messages no longer come back, connects again, and carries on:
    commits reach it from Redis, sealed, and its client is never announced as left."""
    import json
    from urllib.parse import urlsplit

    from collab.hub import Peer
    from collab.protocol import Submit

    (h1,) = await real_hubs(1)
    redis_port = urlsplit(REDIS_URL).port or 6379
    proxy = await tcp_proxy(redis_port)
    via_proxy = REDIS_URL.replace(f":{redis_port}", f":{proxy.port}", 1)
    assert via_proxy != REDIS_URL
    (_, h2) = await real_hubs(1, redis_url=via_proxy)
    a, b = Peer(queue_size=10_000), Peer(queue_size=10_000)
    doc1 = await h1.join("silent", a, None)
    doc2 = await h2.join("silent", b, None)
    assert await doc1.submit(None, Submit(0, ["é"], "s0", None)) == 1
    proxy.blackhole()  # every connection process 2 has to Redis now swallows what it is sent

    async def until(cond) -> None:
        while not cond():
            await asyncio.sleep(0.05)

    await asyncio.wait_for(until(lambda: h2.backplane.reconnects >= 1 and h2.backplane.resyncs >= 1), 30)
    sealed = h2.counters.remote_sealed
    for i in range(1, 6):  # one at a time: each announcement finds process 2 at the revision before it
        assert await doc1.submit(None, Submit(i, [i, "🌍"], f"s{i}", None)) == i + 1
        await asyncio.wait_for(until(lambda: doc2.snapshot()[0] == i + 1 and doc2._committer is None), 30)
    assert h2.counters.remote_sealed > sealed  # over Redis again, not only from the store's revision check
    assert doc1.snapshot() == doc2.snapshot() == (6, "é" + "🌍" * 5)
    assert not any(json.loads(f) == {"type": "leave", "client": b.id} for f in a.outbox)
    assert doc1.replica.peers.keys() == {b.id}


async def test_a_crashed_process_s_clients_leave_and_its_edits_stay(real_hubs):
    """Process 1 vanishes (no leave, heartbeat stops): within the presence timeout its client leaves."""
    import json

    from collab.hub import Peer
    from collab.protocol import Submit

    h1, h2 = await real_hubs(2)
    a, b = Peer(queue_size=10_000), Peer(queue_size=10_000)
    doc1 = await h1.join("crash", a, None)
    await doc1.submit(None, Submit(0, ["kept"], "k1", None))
    doc2 = await h2.join("crash", b, None)
    welcome = json.loads(b.outbox[0])
    assert [p["client"] for p in welcome["peers"]] == [a.id] and welcome["text"] == "kept"
    # A crash: h1's tasks stop without a word (no leave published, no heartbeat withdrawn).
    for task in h1.backplane._tasks:
        task.cancel()
    await h1.cluster.stop_watching()

    async def left() -> None:
        while not any(json.loads(f) == {"type": "leave", "client": a.id} for f in b.outbox):
            await asyncio.sleep(0.1)

    await asyncio.wait_for(left(), 30)  # heartbeat_ttl=3 here: well within
    assert doc2.replica.peers == {}


async def test_forged_duplicated_and_out_of_order_announcements_never_apply_as_they_are(real_hubs):
    """Announcements on the Redis bus that do not extend a copy exactly are repaired from the store;
    bundles that are not well formed are dropped whole or entry by entry. All are sealed with the
    deployment's key (as if a process of it had gone wrong): past the bus's check, they still change
    nothing the store does not hold."""
    import itertools
    import json
    import time

    import redis.asyncio as aioredis

    from collab.hub import Peer
    from collab.protocol import Submit
    from collab.store.base import StoredOp

    h1, h2 = await real_hubs(2)
    a, b = Peer(queue_size=10_000), Peer(queue_size=10_000)
    doc1 = await h1.join("forge", a, None)
    doc2 = await h2.join("forge", b, None)
    assert await doc1.submit(None, Submit(0, ["héllo 🌍"], "h1", None)) == 1
    r = aioredis.from_url(REDIS_URL)
    seal, numbers = h1.cluster.seal, itertools.count(1)

    async def publish(ops) -> None:
        body = _sealed_body([["d", "forge", {"t": "ops", "ops": ops}]], "forger", time.time(), next(numbers))
        await r.publish(h2.backplane.bus, seal.seal(h2.backplane.bus.decode(), body))

    async def reaches(rev: int) -> None:
        while doc2.snapshot()[0] < rev or doc2._committer is not None:
            await asyncio.sleep(0.02)

    try:
        await asyncio.wait_for(reaches(1), 30)
        await publish([[2, [99, "x"], "evil", "e1", None]])  # the next revision, but spans the wrong length
        await publish([[2, [7, "😈"], "evil", "e2", None], [2, [7, "!"], "evil", "e3", None]])  # two versions of rev 2
        await publish("not a list")
        entries = [["d", "forge"], 7, ["d", "forge", "x"], ["x", "forge", {}], ["d", 7, {}]]
        for raw in ("not json", "[]", '{"m": "x", "proc": "forger"}', '{"m": [["d", "forge", {}]]}',
                    json.dumps({"m": entries, "at": time.time(), "n": next(numbers), "proc": "forger"})):
            await r.publish(h2.backplane.bus, seal.seal(h2.backplane.bus.decode(), raw.encode()))
        await publish([[2, "not an op", "evil", "e4", None], ["2", [7, "x"], "evil", "e5", None], [True, [7], 1, 2]])
        await publish([[10**12, [7, "y"], "evil", "e6", None]])  # far ahead: the store never confirms it
        await publish([[1, ["dup"], "evil", "e7", None]])  # an old revision again
        # Two real commits that bypass process 1 (so nothing announces them), announced out of order and twice.
        ops = [StoredOp(2, [7, "!"], "x", "r2"), StoredOp(3, [8, "?"], "x", "r3")]
        await h1.store.append("forge", ops, 10)
        await publish([[3, [8, "?"], "x", "r3", None]])
        await publish([[2, [7, "!"], "x", "r2", None], [3, [8, "?"], "x", "r3", None]])
        assert await doc1.submit(None, Submit(3, [9, "."], "h4", None)) == 4
        await asyncio.wait_for(reaches(4), 30)
    finally:
        await r.aclose()
    state = await h1.store.load("forge", 10)
    assert (state.rev, state.text) == (4, "héllo 🌍!?.")
    assert doc2.snapshot() == (4, "héllo 🌍!?.") and doc2.replica.known_rev == 4 and not doc2.replica.ops
    assert not b.closed
    ops = [m for m in map(json.loads, b.outbox) if m["type"] == "op"]
    assert [m["rev"] for m in ops] == [1, 2, 3, 4] and [m["id"] for m in ops] == ["h1", "r2", "r3", "h4"]


def _client_view(peer) -> tuple[int, str]:
    """The revision and text a client sees: its ``welcome`` with every ``op`` it was sent applied."""
    import json

    from collab import ot

    rev, text = 0, ""
    for m in map(json.loads, peer.outbox):
        if m["type"] == "welcome":
            rev, text = m["rev"], m["text"]
        elif m["type"] == "op":
            assert m["rev"] == rev + 1, f"the client was sent revision {m['rev']} after {rev}"
            rev, text = m["rev"], ot.apply(text, m["op"])
    return rev, text


async def test_a_forged_announcement_that_fits_exactly_is_not_applied(real_hubs):
    """An announcement with the right revision and length, but content the store never had, is not applied.

    Processes catch up from PostgreSQL's rows, never from what Redis says
    was committed: every process and every client ends at the store's text.
    """
    import redis.asyncio as aioredis

    from collab.hub import Peer
    from collab.protocol import Submit

    h1, h2 = await real_hubs(2)
    a, b = Peer(queue_size=10_000), Peer(queue_size=10_000)
    doc1 = await h1.join("fits", a, None)
    doc2 = await h2.join("fits", b, None)
    assert await doc1.submit(None, Submit(0, ["héllo 🌍"], "h1", None)) == 1

    async def reaches(doc, rev: int) -> None:
        while doc.snapshot()[0] < rev or doc._committer is not None:
            await asyncio.sleep(0.02)

    await asyncio.wait_for(reaches(doc2, 1), 30)
    r = aioredis.from_url(REDIS_URL)
    try:
        # Revision 2 on a 7-character revision 1: it extends both processes' copies exactly.
        forged = {"t": "ops", "ops": [[2, [7, "😈"], "evil", "e1", None]]}
        await r.publish(h2.backplane.bus, _bundle("fits", forged))
    finally:
        await r.aclose()
    assert await doc1.submit(None, Submit(1, [7, "!"], "h2", None)) == 2
    assert await doc1.submit(None, Submit(2, [8, "🎉"], "h3", None)) == 3
    await asyncio.wait_for(reaches(doc2, 3), 30)
    await asyncio.wait_for(reaches(doc1, 3), 30)
    state = await h1.store.load("fits", 10)
    assert (state.rev, state.text) == (3, "héllo 🌍!🎉")
    assert doc1.snapshot() == doc2.snapshot() == (3, "héllo 🌍!🎉")
    assert _client_view(a) == _client_view(b) == (3, "héllo 🌍!🎉")
    assert not a.closed and not b.closed


async def test_sealed_announcements_are_applied_without_reading_the_store(real_hubs):
    """Process 1 commits (its own clients' ops and those process 2 forwards); process 2 applies each
    from its sealed announcement, and both end at the store's text."""
    from collab.hub import Peer
    from collab.protocol import Submit

    h1, h2 = await real_hubs(2)
    a, b = Peer(queue_size=10_000), Peer(queue_size=10_000)
    doc1 = await h1.join("sealed", a, None)
    doc2 = await h2.join("sealed", b, None)
    assert h1.cluster.seal is not None and doc2.replica.seal is h2.cluster.seal

    async def reaches(doc, rev: int) -> None:
        while doc.snapshot()[0] < rev or doc._committer is not None:
            await asyncio.sleep(0.02)

    # One at a time, so that each announcement finds process 2 at the revision before it.
    assert await doc1.submit(None, Submit(0, ["héllo"], "s1", None)) == 1
    await asyncio.wait_for(reaches(doc2, 1), 30)
    assert await doc1.submit(None, Submit(1, [5, " 🌍"], "s2", None)) == 2
    await asyncio.wait_for(reaches(doc2, 2), 30)
    assert await doc2.submit(None, Submit(2, [7, "!"], "s3", None)) == 3  # forwarded to the owner
    state = await h1.store.load("sealed", 10)
    assert (state.rev, state.text) == (3, "héllo 🌍!")
    assert doc1.snapshot() == doc2.snapshot() == (3, "héllo 🌍!")
    assert _client_view(a) == _client_view(b) == (3, "héllo 🌍!")
    # Revision 1 has no op before it to anchor a seal: process 2 read it from the store; 2 and 3 not.
    assert h2.counters.remote_sealed == 2 and h2.counters.remote_applied == 3


async def test_sealed_announcements_that_do_not_fit_are_read_from_the_store(real_hubs):
    """Sealed with the deployment's own key, so past the bus's check: an announcement after another op,
    a genuine one put on another document or sent again later, and one changed are never applied as
    they are; the processes read the store instead."""
    import json
    import time

    import redis.asyncio as aioredis

    from collab.hub import Peer
    from collab.protocol import Submit
    from collab.seal import MAC_BYTES

    h1, h2 = await real_hubs(2)
    a, b, c = Peer(queue_size=10_000), Peer(queue_size=10_000), Peer(queue_size=10_000)
    doc1 = await h1.join("anchored", a, None)
    doc2 = await h2.join("anchored", b, None)
    other = await h2.join("elsewhere", c, None)
    r = aioredis.from_url(REDIS_URL)
    pubsub = r.pubsub()
    channel = h2.backplane.bus
    await pubsub.subscribe(channel)
    seal = h1.cluster.seal

    async def reaches(doc, rev: int) -> None:
        while doc.snapshot()[0] < rev or doc._committer is not None:
            await asyncio.sleep(0.02)

    async def captured(rev: int) -> dict:
        """Process 1's announcement of ``rev``, as Redis carried it."""
        while True:
            msg = await pubsub.get_message(timeout=30)
            assert msg is not None, "no announcement within 30 s"
            if msg["type"] == "message":
                body = seal.open(channel.decode(), msg["data"])
                assert body is not None, "a bundle on the bus that is not sealed with the deployment's key"
                for kind, doc, m in json.loads(body)["m"]:
                    if (kind, doc) == ("d", "anchored") and m.get("t") == "ops" and m["ops"][0][0] == rev:
                        return m

    n = 0

    async def publish(doc: str, msg: dict) -> None:
        nonlocal n
        n += 1
        await r.publish(channel, seal.seal(channel.decode(), _sealed_body([["d", doc, msg]], "misfit", time.time(), n)))

    try:
        assert await doc1.submit(None, Submit(0, ["héllo 🌍"], "h1", None)) == 1
        assert await doc1.submit(None, Submit(1, [7, "!"], "h2", None)) == 2
        genuine = await captured(2)
        assert genuine["prev"] == "h1" and "mac" not in genuine
        await asyncio.wait_for(reaches(doc2, 2), 30)
        await asyncio.wait_for(other.submit(None, Submit(0, ["héllo 🌍"], "o1", None)), 30)
        # Revision 3 on the 8-character revision 2, but after an op that is not rev 2.
        await publish("anchored", {"t": "ops", "ops": [[3, [8, "😈"], "evil", "e1", None]], "prev": "not-h2",
                                   "at": time.time()})
        # The genuine revision 2 on a document where revision 1 is the same text: it names another op.
        await publish("elsewhere", genuine)
        await publish("anchored", genuine)  # and again where it was committed: already applied
        changed = json.loads(json.dumps(genuine))
        changed["ops"][0][1] = [7, "?"]
        await publish("anchored", changed)
        assert await doc1.submit(None, Submit(2, [8, "🎉"], "h3", None)) == 3
        await asyncio.wait_for(reaches(doc2, 3), 30)
        await asyncio.wait_for(reaches(other, 1), 30)
    finally:
        await pubsub.aclose()
        await r.aclose()
    assert (await h1.store.load("anchored", 10)).text == "héllo 🌍!🎉"
    assert doc1.snapshot() == doc2.snapshot() == (3, "héllo 🌍!🎉")
    assert _client_view(a) == _client_view(b) == (3, "héllo 🌍!🎉")
    assert other.snapshot() == _client_view(c) == (1, "héllo 🌍")
    assert not a.closed and not b.closed and not c.closed
    assert MAC_BYTES == 64


async def test_the_lease_moves_to_where_the_clients_are_when_the_owner_s_last_client_leaves(real_hubs):
    """Process 1 owns the document (its client came first); process 2's client edits through it. When
    process 1's client leaves, process 2 takes the lease and orders its client's edits itself."""
    from collab.hub import Peer
    from collab.protocol import Submit

    h1, h2 = await real_hubs(2)
    a, b = Peer(queue_size=10_000), Peer(queue_size=10_000)
    doc1 = await h1.join("moving", a, None)
    doc2 = await h2.join("moving", b, None)
    assert h1.cluster.ownership.owns("moving") and doc2.forwarder.owner == h1.backplane.process_id
    assert await doc2.submit(None, Submit(0, ["héllo 🌍"], "m1", None)) == 1  # ordered by process 1

    async def until(cond) -> None:
        while not cond():
            await asyncio.sleep(0.02)

    await asyncio.wait_for(until(lambda: a.id in doc2.replica.peers), 30)
    doc1.remove(a)
    await asyncio.wait_for(until(lambda: h2.cluster.ownership.owns("moving")), 30)
    assert not h1.cluster.ownership.owns("moving") and doc2.forwarder.owner is None
    commits = h2.store.commits
    assert await doc2.submit(None, Submit(1, [7, "!"], "m2", None)) == 2
    assert h2.store.commits > commits  # committed by process 2 itself
    # Process 1 has no client left to show it to (nothing is announced to it), but it reads as it is.
    assert await h1.read("moving") == (2, "héllo 🌍!")
    assert (await h1.store.load("moving", 10)).text == "héllo 🌍!"
    assert _client_view(b) == (2, "héllo 🌍!") and not b.closed


async def test_people_coming_back_to_a_document_have_one_sequencer_from_their_first_edit(real_hubs):
    """Both processes keep a document loaded after everyone left (process 1's lease went to process 2 as
    its client left first). A client coming back to process 1 is placed at its join: forwarding to the
    owner, never ordering beside it; the owner, with nobody of its own, hands the lease to process 1; a
    client coming back to process 2 then forwards there. Nobody's edit takes the row lock or loses a race."""

    from collab.hub import Peer
    from collab.protocol import Submit

    h1, h2 = await real_hubs(2)
    p1, p2 = h1.backplane.process_id, h2.backplane.process_id
    a, b = Peer(queue_size=10_000), Peer(queue_size=10_000)
    doc1 = await h1.join("back", a, None)
    doc2 = await h2.join("back", b, None)
    assert h1.cluster.ownership.owns("back") and doc2.forwarder.owner == p1
    assert await doc2.submit(None, Submit(0, ["héllo 🌍"], "k1", None)) == 1
    await asyncio.wait_for(_until(lambda: a.id in doc2.replica.peers), 30)
    doc1.remove(a)
    await asyncio.wait_for(_until(lambda: h2.cluster.ownership.owns("back")), 30)
    doc2.remove(b)
    assert h1.docs["back"] is doc1 and h2.docs["back"] is doc2 and not doc1.peers and not doc2.peers

    a2 = Peer(queue_size=10_000)
    assert await h1.join("back", a2, None) is doc1
    assert doc1.forwarder.owner == p2 or h1.cluster.ownership.owns("back")  # not ordered beside the owner
    await asyncio.wait_for(_until(lambda: h1.cluster.ownership.owns("back")), 30)  # where the clients are
    b2 = Peer(queue_size=10_000)
    assert await h2.join("back", b2, None) is doc2
    assert doc2.forwarder.owner == p1
    written = h2.store.ops_written
    await doc1.submit(a2, Submit(1, [7, " 👋"], "k2", None))
    await doc2.submit(b2, Submit(1, ["¡", 7], "k3", None))

    await asyncio.wait_for(_until(lambda: _acked(a2, "k2") and _acked(b2, "k3")), 30)
    assert await h1.read("back") == await h2.read("back") == (3, "¡héllo 🌍 👋")
    assert h2.store.ops_written == written  # process 1 ordered both
    for hub in (h1, h2):
        assert hub.conflicts == 0 and hub.store.exclusive_turns == 0


async def test_a_client_joining_the_owner_while_it_hands_the_lease_over_is_placed_at_once(real_hubs):
    """Process 1's last client leaves, so it hands its lease to process 2, whose client edits through it;
    a client joins process 1 while the lease is being released (its join finds the document still owned,
    so it does not place it). Once the release is done, process 1 places the document again before
    telling anyone, rather than order its new client's edits beside the next owner until its
    once-a-second check (stopped here, so that only the hand-over can place it)."""

    from collab.hub import Peer
    from collab.protocol import Submit

    h1, h2, a, b, doc1, doc2 = await _a_client_on_each(real_hubs, "handing")
    assert h1.cluster.ownership.owns("handing") and doc2.forwarder.owner == h1.backplane.process_id
    assert await doc2.submit(None, Submit(0, ["héllo 🌍"], "g1", None)) == 1
    await asyncio.wait_for(_until(lambda: b.id in doc1.replica.peers and a.id in doc2.replica.peers), 30)

    # The moment: the lease's release is under way (held until the client has joined).
    leases = h1.cluster.ownership.leases
    releasing, go_on = asyncio.Event(), asyncio.Event()
    release = leases.release

    async def release_after_the_join(docs):
        releasing.set()
        await go_on.wait()
        await release(docs)

    leases.release = release_after_the_join
    doc1.remove(a)
    await asyncio.wait_for(releasing.wait(), 30)
    a2 = Peer(queue_size=10_000)
    assert await h1.join("handing", a2, None) is doc1
    go_on.set()
    await asyncio.wait_for(_until(lambda: not h1.cluster.ownership._tasks), 30)
    leases.release = release
    placed = h1.cluster.ownership.owns("handing") or doc1.forwarder.owner == h2.backplane.process_id
    assert placed, "process 1 orders the document without its lease"

    await _both_edit_through_one_sequencer(h1, h2, doc1, a2, doc2, b, "handing")


async def test_an_owner_does_not_hand_the_lease_over_while_a_client_of_its_own_is_joining(real_hubs):
    """A join places the document first, then waits to be admitted (between two batches, or while the
    document loads). If the owner's last client leaves meanwhile, or another process's client joins, it
    has no client of its own for a moment, but one is coming: it keeps the lease. It handed it over, and
    its new client was admitted to a document neither owned here nor forwarded, whose edits were ordered
    beside the new owner until the once-a-second check (stopped here)."""

    from collab.hub import Peer
    from collab.protocol import Submit

    h1, h2, a, b, doc1, doc2 = await _a_client_on_each(real_hubs, "joining")
    assert await doc2.submit(None, Submit(0, ["héllo 🌍"], "j1", None)) == 1
    await asyncio.wait_for(_until(lambda: b.id in doc1.replica.peers and a.id in doc2.replica.peers), 30)

    ownership = h1.cluster.ownership
    claim = ownership.claim
    handed: list[bool] = []

    async def claim_then_the_last_client_leaves(doc):
        await claim(doc)  # still owned here: nothing to place
        doc1.remove(a)  # the last client admitted here leaves before this join is
        handed.append(ownership.handing("joining") or not ownership.owns("joining"))

    ownership.claim = claim_then_the_last_client_leaves
    a2 = Peer(queue_size=10_000)
    assert await asyncio.wait_for(h1.join("joining", a2, None), 30) is doc1
    ownership.claim = claim
    assert handed == [False], "process 1 handed the lease over with a client of its own joining"
    assert ownership.owns("joining") and doc1.joining == 0
    await _both_edit_through_one_sequencer(h1, h2, doc1, a2, doc2, b, "joining")


async def test_a_join_that_fails_lets_the_hand_over_it_held_back_happen(real_hubs):
    """The owner's last client leaves while a client of its own is joining, so it keeps the lease; then
    that join fails (its ``since`` is in the future). Nobody is left here: the lease goes to process 2,
    where the clients are. It stayed here, with no client, until another process's client joined, and
    every edit of process 2 crossed to process 1 and back."""

    from collab.hub import Peer
    from collab.protocol import ProtocolError, Submit

    h1, h2, a, b, doc1, doc2 = await _a_client_on_each(real_hubs, "failing")
    assert await doc2.submit(None, Submit(0, ["héllo 🌍"], "x1", None)) == 1
    await asyncio.wait_for(_until(lambda: b.id in doc1.replica.peers and a.id in doc2.replica.peers), 30)

    ownership = h1.cluster.ownership
    claim = ownership.claim

    async def claim_then_the_last_client_leaves(doc):
        await claim(doc)
        doc1.remove(a)  # held back: a client is joining

    ownership.claim = claim_then_the_last_client_leaves
    with pytest.raises(ProtocolError):
        await asyncio.wait_for(h1.join("failing", Peer(queue_size=10_000), 99), 30)
    ownership.claim = claim
    assert not doc1.peers and doc1.joining == 0
    await asyncio.wait_for(_until(lambda: h2.cluster.ownership.owns("failing")), 30)
    assert not ownership.owns("failing")
    commits = h2.store.commits
    assert await doc2.submit(None, Submit(1, [7, " 🎉"], "x2", None)) == 2
    assert h2.store.commits > commits  # ordered by process 2, where its client is
    assert await h1.read("failing") == await h2.read("failing") == (2, "héllo 🌍 🎉")


async def test_an_http_edit_that_takes_a_free_lease_hands_it_to_where_the_clients_are(real_hubs):
    """Process 2 has the document's only client; its lease is free for a moment (released, as in a
    hand-over or after its owner died). An HTTP edit on process 1, which has nobody on the document,
    finds no owner and takes the lease to order the edit; once it is committed, process 1 lets the lease
    go, and process 2's once-a-second check takes it. Process 1 kept it, with nobody of its own, and
    every edit of process 2's client crossed to process 1 and back until another process's client
    joined there."""
    from collab.hub import Peer
    from collab.protocol import Submit

    h1, h2 = await real_hubs(2)
    for hub in (h1, h2):
        await hub.cluster.ownership.stop_watching()  # (process 2's starts again once the edit is made)
    b = Peer(queue_size=10_000)
    doc2 = await h2.join("free", b, None)
    assert h2.cluster.ownership.owns("free")
    assert await h1.read("free") == (0, "")  # loaded on process 1, which knows of process 2's client
    doc1 = h1.docs["free"]
    await asyncio.wait_for(_until(lambda: b.id in doc1.replica.peers), 30)
    await h2.cluster.ownership.release("free")  # the lease is free for a moment

    assert await h1.replace("free", "héllo 🌍", "w1") == 1
    ownership = h2.cluster.ownership
    ownership.start_watching()
    await asyncio.wait_for(_until(lambda: ownership.owns("free")), 30)
    assert not h1.cluster.ownership.owns("free") and not doc1.peers
    commits = h2.store.commits
    assert await doc2.submit(None, Submit(1, [7, " 🎉"], "w2", None)) == 2
    assert h2.store.commits > commits  # ordered by process 2, where its client is
    assert await h1.read("free") == await h2.read("free") == (2, "héllo 🌍 🎉")


async def test_a_hand_over_lets_the_batches_in_flight_land_before_the_others_hear_of_it(real_hubs):
    """Process 1 owns the document and is committing an edit process 2 forwarded when its own last client
    leaves, so it hands the lease over. Process 2 hears ``not_owner`` only once that commit has landed
    and been announced (it has answered the edit by then, so it does not send it again), and the edit is
    ordered once. Process 2 heard it at once, sent the edit again to itself as the new owner, and the
    two processes ordered it both: a lost race, and a turn holding the document's row, per move. An edit
    forwarded while the lease is being handed over is dropped by process 1 and sent again after."""

    from collab.protocol import Submit
    from collab.store.postgres import PostgresStore

    h1, h2, a, b, doc1, doc2 = await _a_client_on_each(real_hubs, "inflight")
    assert await doc2.submit(None, Submit(0, ["héllo 🌍"], "f1", None)) == 1  # ordered by process 1
    await asyncio.wait_for(_until(lambda: b.id in doc1.replica.peers and a.id in doc2.replica.peers
                                  and doc2.seq.rev == 1), 30)

    told: list[tuple[int, list[str]]] = []  # process 2's revision, and its edits waiting for the owner, when told
    direct = h2.backplane._direct

    def spy(msg: dict) -> None:
        if msg.get("t") == "not_owner":
            told.append((doc2.seq.rev, sorted(doc2.forwarder.awaiting)))
        direct(msg)

    h2.backplane._direct = spy
    blocker = PostgresStore(PG_URL, schema=h1.store.schema)
    await blocker.open()
    try:
        async with blocker.exclusive("inflight"):  # another transaction holds the row: process 1's commit waits
            await doc2.submit(b, Submit(1, [7, "!"], "f2", None))  # forwarded to process 1, which orders it
            async with blocker.pool.acquire() as conn:
                while not await conn.fetchval("SELECT count(*) FROM pg_locks WHERE NOT granted"):
                    await asyncio.sleep(0.01)
            doc1.remove(a)  # process 1's last client leaves: it hands the lease over
            await asyncio.wait_for(_until(lambda: told or h1.cluster.ownership.handing("inflight")), 30)
            await doc2.submit(b, Submit(1, ["¡", 7], "f3", None))  # forwarded during the hand-over
    finally:
        await blocker.close()

    await asyncio.wait_for(_until(lambda: _acked(b, "f2") and _acked(b, "f3") and told), 30)
    rev, waiting = told[0]
    assert rev == 2 and "f2" not in waiting, "process 2 heard not_owner before the commit of its edit"
    assert await h1.read("inflight") == await h2.read("inflight") == (3, "¡héllo 🌍!")
    assert [o.id for o in await h1.store.ops_since("inflight", 0)] == ["f1", "f2", "f3"]
    assert h1.conflicts == h2.conflicts == 0


async def test_edits_made_on_the_owner_while_it_hands_the_lease_over_wait_for_the_hand_over(real_hubs):
    """Process 1 owns the document and is committing an HTTP edit (held back by another transaction on the
    document's row) when its last client leaves, so it hands the lease over. A second HTTP edit, made on
    process 1 meanwhile, is not ordered there while the hand-over lasts: it waits, then goes where the
    document is ordered. Process 1 ordered it during the hand-over, beside the lease's release: a stream
    of such edits (an integration posting to the document) kept the hand-over from ending, and every
    edit process 2 forwarded was dropped until the stream stopped. Every edit is applied once."""

    from collab.protocol import Submit
    from collab.store.postgres import PostgresStore

    h1, h2, a, b, doc1, doc2 = await _a_client_on_each(real_hubs, "busy")
    assert await doc2.submit(None, Submit(0, ["héllo 🌍"], "g1", None)) == 1  # ordered by process 1
    await asyncio.wait_for(_until(lambda: b.id in doc1.replica.peers and a.id in doc2.replica.peers
                                  and doc2.seq.rev == 1), 30)

    ownership = h1.cluster.ownership
    appends: list[tuple[list[str], bool]] = []  # each append's op ids, and whether a hand-over was under way
    start_append = h1.store.start_append

    def noting_append(doc, ops, *args, **kwargs):
        if doc == "busy":
            appends.append(([o.id for o in ops], ownership.handing("busy")))
        return start_append(doc, ops, *args, **kwargs)

    leases = ownership.leases
    release = leases.release
    releasing, go_on = asyncio.Event(), asyncio.Event()

    async def release_when_told(docs):
        releasing.set()
        await go_on.wait()
        await release(docs)

    h1.store.start_append = noting_append
    leases.release = release_when_told
    blocker = PostgresStore(PG_URL, schema=h1.store.schema)
    await blocker.open()
    try:
        async with blocker.exclusive("busy"):  # another transaction holds the row: process 1's commit waits
            first = asyncio.create_task(h1.replace("busy", "héllo 🌍 🦊", "g2"))
            async with blocker.pool.acquire() as conn:
                while not await conn.fetchval("SELECT count(*) FROM pg_locks WHERE NOT granted"):
                    await asyncio.sleep(0.01)
            doc1.remove(a)  # process 1's last client leaves: it hands the lease over
            assert ownership.handing("busy")
            second = asyncio.create_task(h1.replace("busy", "héllo 🌍 🐝", "g3"))
    finally:
        await blocker.close()
    await asyncio.wait_for(releasing.wait(), 30)  # the edit in flight landed: the lease is being released
    await asyncio.wait_for(_until(lambda: doc1.waiting or any("g3" in ids for ids, _ in appends)), 30)
    go_on.set()
    assert await asyncio.wait_for(first, 30) == 2
    assert await asyncio.wait_for(second, 30) == 3
    leases.release = release
    h1.store.start_append = start_append
    assert [ids for ids, handing in appends if handing and "g3" in ids] == [], (
        "process 1 ordered an edit while it handed the lease over")

    await asyncio.wait_for(_until(lambda: doc2.seq.rev == 3), 30)
    await doc2.submit(b, Submit(3, [len(doc2.seq.text), " 🎉"], "g4", None))
    await asyncio.wait_for(_until(lambda: _acked(b, "g4")), 30)
    await asyncio.wait_for(_until_async(lambda: h1.read("busy"), lambda r: r[0] == 4), 30)
    assert await h1.read("busy") == await h2.read("busy")
    assert [o.id for o in await h1.store.ops_since("busy", 0)] == ["g1", "g2", "g3", "g4"]


async def test_a_lease_changing_hands_is_waited_for_not_taken_for_no_owner(real_hubs):
    """Process 2 has just taken the lease and not yet written its owner record when process 1 places the
    document: process 1 looks again a moment later and forwards to process 2, rather than order the
    document beside it (both committing in turn, holding its row) until the once-a-second check."""
    h1, h2 = await real_hubs(2)
    p2 = h2.backplane.process_id
    await h1.cluster.start()
    await h2.cluster.start()
    assert await h2.cluster.ownership.leases.acquire(["changing"]) == {"changing"}  # no record yet
    owner = h1.backplane.owner
    reads: list[str | None] = []

    async def owner_then_written(doc_id: str) -> str | None:
        found = await owner(doc_id)
        reads.append(found)
        if len(reads) == 1:  # just after this read, process 2 writes its record
            h2.backplane.set_owner(doc_id)
            await _until_async(lambda: owner(doc_id), lambda o: o == p2)
        return found

    h1.backplane.owner = owner_then_written
    assert await h1.cluster.ownership.place("changing") == p2
    assert reads == [None, p2]
    assert not h1.cluster.ownership.owns("changing")


async def test_a_process_with_nobody_on_a_document_does_not_take_its_lease_when_the_owner_hands_it_over(
        real_hubs):
    """Process 3 made an HTTP edit (forwarded to the owner, process 1) and has no client on the document.
    When process 1's last client leaves, process 1 tells process 3 to look for another owner: process 3
    takes no lease for nobody (the clients who come next would forward to it, one hop more), and the
    next HTTP edit (or client) there places the document."""
    from collab.hub import Peer
    from collab.protocol import Submit

    h1, h3 = await real_hubs(2)
    a = Peer(queue_size=10_000)
    doc1 = await h1.join("nobody", a, None)
    assert await h3.replace("nobody", "héllo 🌍", author="Zoë 🦊") == 1  # forwarded to process 1
    doc3 = h3.docs["nobody"]
    assert doc3.forwarder.owner == h1.backplane.process_id and not doc3.peers
    assert (h3.backplane.process_id, "server") in doc1.replica.forwarded
    doc1.remove(a)
    await asyncio.wait_for(_until(lambda: doc3.forwarder.owner is None
                                  and not h3.cluster.ownership._rerouting and not h3.cluster.ownership._tasks), 30)
    assert not h1.cluster.ownership.owns("nobody") and not h3.cluster.ownership.owns("nobody")

    turns = h3.store.exclusive_turns
    assert await h3.replace("nobody", "héllo 🌍!", author="Zoë 🦊") == 2
    assert h3.cluster.ownership.owns("nobody")  # placed by the HTTP edit: the lease was free
    c = Peer(queue_size=10_000)
    assert await h3.join("nobody", c, None) is doc3
    assert await doc3.submit(None, Submit(2, [8, "?"], "n3", None)) == 3
    assert await h1.read("nobody") == (3, "héllo 🌍!?")
    assert h1.conflicts == h3.conflicts == 0 and h3.store.exclusive_turns == turns


async def test_a_new_owner_that_lately_applied_the_old_owner_s_commits_group_commits_without_the_row_lock(real_hubs):
    """A forwarder applies the owner's commits; when the lease comes to it (the owner's last client
    left), those recent commits of another process are no reason to commit holding the document's row
    lock, one transaction per batch: nobody else orders the document now. It did so for two seconds
    after each move, and with clients coming and going that was most of the time."""
    from collab.hub import Peer
    from collab.protocol import Submit

    h1, h2 = await real_hubs(2)
    a, b = Peer(queue_size=10_000), Peer(queue_size=10_000)
    doc1 = await h1.join("handed", a, None)
    doc2 = await h2.join("handed", b, None)
    assert await doc1.submit(None, Submit(0, ["🐝"], "h1", None)) == 1
    await asyncio.wait_for(_until(lambda: a.id in doc2.replica.peers and doc2.seq.rev == 1), 30)
    doc1.remove(a)
    await asyncio.wait_for(_until(lambda: h2.cluster.ownership.owns("handed")), 30)
    loop = asyncio.get_running_loop()
    doc2.replica.contended_until = loop.time() + 3600  # as just after applying process 1's commits
    turns, commits = h2.store.exclusive_turns, h2.store.commits
    assert await doc2.submit(None, Submit(1, [1, " 🌍"], "h2", None)) == 2
    assert h2.store.commits == commits + 1 and h2.store.exclusive_turns == turns
    assert await h1.read("handed") == (2, "🐝 🌍")


async def test_the_last_commit_of_a_burst_reaches_the_other_process_without_the_periodic_check(real_hubs):
    """Both processes write one document (so commits take its turn in the store), then process 1 alone.

    The periodic check for missed commits is stopped: process 2 learns of
    each burst's last commit from its announcement, which must come after
    the commit is visible in the store.
    """
    from collab.hub import Peer
    from collab.protocol import Submit

    h1, h2 = await real_hubs(2)
    for hub in (h1, h2):
        await hub.cluster.stop_watching()
    a, b = Peer(queue_size=100_000), Peer(queue_size=100_000)
    doc1 = await h1.join("burst", a, None)
    doc2 = await h2.join("burst", b, None)

    async def write(doc, tag: str, count: int) -> int:
        rev = 0
        for i in range(count):
            rev, text = doc.snapshot()
            rev = await doc.submit(None, Submit(rev, ["🎉", len(text)] if text else ["🎉"], f"{tag}-{i}", None))
        return rev

    async def reaches(doc, rev: int) -> None:
        while doc.snapshot()[0] < rev:
            await asyncio.sleep(0.01)

    for burst in range(20):
        await asyncio.gather(write(doc1, f"a{burst}", 5), write(doc2, f"b{burst}", 5))
        last = await write(doc1, f"last{burst}", 1)
        try:
            await asyncio.wait_for(reaches(doc2, last), 30)
        except asyncio.TimeoutError:
            raise AssertionError(f"burst {burst}: process 2 stayed at {doc2.snapshot()[0]}, not {last}") from None
    state = await h1.store.load("burst", 10)
    assert state.rev == 20 * 11 and state.text == "🎉" * state.rev
    assert doc1.snapshot() == doc2.snapshot() == (state.rev, state.text)
    assert _client_view(a) == _client_view(b) == (state.rev, state.text)


async def test_a_document_open_on_one_process_costs_the_bus_nothing_until_another_opens_it(real_hubs):
    """Process 2 has the documents loaded but no client on them, so process 1 does not announce its
    commits or its client's selection. Once a client joins on process 2, process 1 says which revision it
    reached and where its clients are: process 2 reads the store for what it missed (the periodic check
    is stopped), and from then on applies each commit as announced."""
    from collab.hub import Peer
    from collab.protocol import Cursor, Presence, Submit

    h1, h2 = await real_hubs(2)
    for hub in (h1, h2):
        await hub.cluster.stop_watching()

    # "quiet": edited over HTTP on process 1 (no client there): only the revision it reached tells process 2.
    quiet1 = await h1.document("quiet")
    assert await quiet1.submit(None, Submit(0, ["héllo"], "q1", None)) == 1
    quiet2 = await h2.document("quiet")
    assert quiet2.snapshot() == (1, "héllo")
    for i in range(2, 6):
        assert await quiet1.submit(None, Submit(i - 1, [i + 3, "🌍"], f"q{i}", None)) == i
    b = Peer(queue_size=10_000)
    await h2.join("quiet", b, None)
    await asyncio.wait_for(_until(lambda: _client_view(b) == (5, "héllo🌍🌍🌍🌍")), 30)
    assert h2.counters.remote_sealed == 0  # read from the store: none of the four was announced
    assert await quiet1.submit(None, Submit(5, [9, "!"], "q6", None)) == 6
    await asyncio.wait_for(_until(lambda: _client_view(b) == (6, "héllo🌍🌍🌍🌍!")), 30)
    assert h2.counters.remote_sealed == 1  # announced now, and applied as announced

    # "alone": a client of process 1 moves its selection; a join (always announced) shows when process 2
    # has everything process 1 announced before it, which is neither the commits nor the selection.
    a = Peer(queue_size=10_000)
    alone1 = await h1.join("alone", a, None)
    assert await alone1.submit(None, Submit(0, ["héllo"], "a1", None)) == 1
    alone2 = await h2.document("alone")
    assert await alone1.submit(None, Submit(1, [5, "🌍"], "a2", None)) == 2
    await alone1.presence(a, Presence(2, Cursor(2, 2), None))
    c = Peer(queue_size=10_000)
    await h1.join("alone", c, None)
    await asyncio.wait_for(_until(lambda: c.id in alone2.replica.peers), 30)
    assert alone2.snapshot() == (1, "héllo")
    assert alone2.replica.peers[a.id].cursor != Cursor(2, 2)
    d = Peer(queue_size=10_000)
    await h2.join("alone", d, None)
    await asyncio.wait_for(_until(lambda: alone2.replica.peers[a.id].cursor == Cursor(2, 2)), 30)
    await asyncio.wait_for(_until(lambda: _client_view(d) == (2, "héllo🌍")), 30)

    # Process 2's last client leaves: process 1 goes quiet again, and speaks up when another joins there.
    alone2.remove(d)
    await asyncio.wait_for(_until(lambda: d.id not in alone1.replica.peers), 30)
    assert await alone1.submit(None, Submit(2, [6, "✨"], "a3", None)) == 3
    f = Peer(queue_size=10_000)
    await h1.join("alone", f, None)
    await asyncio.wait_for(_until(lambda: f.id in alone2.replica.peers), 30)
    assert alone2.snapshot() == (2, "héllo🌍")
    g = Peer(queue_size=10_000)
    await h2.join("alone", g, None)
    await asyncio.wait_for(_until(lambda: _client_view(g) == (3, "héllo🌍✨")), 30)


async def test_messages_to_one_process_and_owner_records_on_redis():
    """``send`` reaches the one process it names; an owner record is dropped only by its owner."""
    reason = await _unavailable()
    if reason:
        pytest.skip(reason)
    from collab.backplane.redis import RedisBackplane

    prefix = f"collab-test-{secrets.token_hex(5)}"
    planes = [RedisBackplane(_with_param(REDIS_URL, "prefix", prefix), heartbeat_ttl=3) for _ in range(3)]
    got: list[list[tuple[str, dict]]] = [[] for _ in planes]
    arrived = asyncio.Event()

    def catcher(i: int, kind: str):
        def take(*args) -> None:
            got[i].append((kind, args[-1]))
            arrived.set()
        return take

    try:
        for i, bp in enumerate(planes):
            await bp.start(catcher(i, "doc"), lambda: None, catcher(i, "direct"))
            await bp.subscribe("shared")
        a, b, c = planes
        a.send(b.process_id, {"t": "submit", "text": "héllo 🌍"})
        a.publish("shared", {"t": "ops", "ops": []})

        async def until(cond) -> None:
            while not cond():
                arrived.clear()
                await arrived.wait()

        await asyncio.wait_for(until(lambda: len(got[1]) == 2 and len(got[2]) == 1), 30)
        assert got[1] == [("direct", {"t": "submit", "text": "héllo 🌍", "proc": a.process_id}),
                          ("doc", {"t": "ops", "ops": [], "proc": a.process_id})]
        assert got[2] == [("doc", {"t": "ops", "ops": [], "proc": a.process_id})]
        assert got[0] == []

        async def owner_is(doc: str, proc: str | None) -> None:
            while await c.owner(doc) != proc:
                await asyncio.sleep(0.02)

        assert await c.owner("shared") is None
        a.set_owner("shared")
        await asyncio.wait_for(owner_is("shared", a.process_id), 30)
        b.drop_owner("shared")  # not b's record: it stays
        b.set_owner("mark")  # sent after the drop, on the same queue: once it shows, the drop was done
        await asyncio.wait_for(owner_is("mark", b.process_id), 30)
        assert await c.owner("shared") == a.process_id
        a.drop_owner("shared")
        await asyncio.wait_for(owner_is("shared", None), 30)
    finally:
        for bp in planes:
            await bp.close()
        import redis.asyncio as aioredis

        r = aioredis.from_url(REDIS_URL)
        keys = [k async for k in r.scan_iter(match=f"{prefix}:*")]
        if keys:
            await r.delete(*keys)
        await r.aclose()


async def test_the_owner_orders_forwarded_submits_and_answers_what_the_store_does_not_say(real_hubs):
    """The first process to load a document owns it; submits forwarded to it are ordered and committed
    like its own clients' (every process shows them), refusals go back to the forwarding process, and a
    process that does not own the document says so."""
    import json

    from collab.backplane.redis import RedisBackplane
    from collab.forwarding import Forwarded, read_not_owner, read_refused, submit_msg
    from collab.hub import Peer
    from collab.protocol import BAD_OP, Cursor, Submit

    h1, h2 = await real_hubs(2)
    a, b = Peer(queue_size=10_000), Peer(queue_size=10_000)
    doc1 = await h1.join("owned", a, None)
    doc2 = await h2.join("owned", b, None)
    assert h1.cluster.ownership.owns("owned") and not h2.cluster.ownership.owns("owned")
    forwarder = RedisBackplane(f"{h1.backplane.url}?prefix={h1.backplane.prefix}", heartbeat_ttl=3)
    forwarder.seal = h1.cluster.seal  # a process of the deployment: it has the key
    answers: list[dict] = []
    answered = asyncio.Event()

    def take(msg: dict) -> None:
        answers.append(msg)
        answered.set()

    async def until(cond) -> None:
        while not cond():
            answered.clear()
            await answered.wait()

    async def reaches(doc, rev: int) -> None:
        while doc.snapshot()[0] < rev or doc._committer is not None:
            await asyncio.sleep(0.02)

    await forwarder.start(lambda doc, msg: None, lambda: None, take)
    try:
        owner = h1.backplane.process_id

        async def recorded() -> None:
            while await h2.backplane.owner("owned") != owner:  # the record is queued with h1's other commands
                await asyncio.sleep(0.02)

        await asyncio.wait_for(recorded(), 30)
        forwarder.send(owner, {"t": "submit", "doc": "owned", "items": [{"client": "far", "op": "🌍"}]})  # dropped
        forwarder.send(owner, submit_msg("owned", [Forwarded("far", Submit(0, ["héllo 🌍"], "f1", Cursor(7, 7)))]))
        await asyncio.wait_for(reaches(doc2, 1), 30)
        await asyncio.wait_for(reaches(doc1, 1), 30)
        forwarder.send(owner, submit_msg("owned", [Forwarded("far", Submit(1, [3, "x"], "f2", None))]))
        forwarder.send(h2.backplane.process_id, submit_msg("owned", [Forwarded("far", Submit(1, [7, "!"], "f3", None))]))
        await asyncio.wait_for(until(lambda: len(answers) == 2), 30)
    finally:
        await forwarder.close()
    refusals = [read_refused(m) for m in answers if m["t"] == "refused"]
    assert [(r.id, r.code) for r in refusals] == [("f2", BAD_OP)] and "spans 3" in refusals[0].message
    assert [read_not_owner(m) for m in answers if m["t"] == "not_owner"] == ["owned"]
    assert all(m["proc"] in (h1.backplane.process_id, h2.backplane.process_id) for m in answers)
    state = await h1.store.load("owned", 10)
    assert (state.rev, state.text) == (1, "héllo 🌍") and state.history[0].client == "far"
    assert doc1.snapshot() == doc2.snapshot() == (1, "héllo 🌍")
    for peer in (a, b):
        ops = [m for m in map(json.loads, peer.outbox) if m["type"] == "op"]
        assert [(m["rev"], m["client"], m["id"], m.get("cursor")) for m in ops] == [
            (1, "far", "f1", {"anchor": 7, "head": 7})]


async def test_forged_replayed_and_stale_bundles_are_dropped_edits_and_refusals_alike(real_hubs, monkeypatch):
    """Whoever can publish on Redis but lacks the deployment's key can neither submit an edit to the owner
    nor refuse an edit that waits for the owner's answer, and a genuine bundle replayed or sent too long
    ago is not taken again: all are dropped, and counted on ``/metrics``.

    Process 2 forwards its client's edit to a silent process posing as the owner; a forger refuses the
    edit (sealed with another key, unsealed, and as a replay of process 2's own bundle) and submits an
    edit of its own to the real owner. Then process 2 resends to the real owner: its client's edit is
    acknowledged, and the forger's is nowhere.
    """
    import time

    import redis.asyncio as aioredis

    import collab.ownership
    from collab.forwarding import Forwarded, refused_msg, submit_msg
    from collab.hub import Peer
    from collab.metrics import APP_FAMILIES
    from collab.protocol import BAD_OP, ProtocolError, Submit
    from collab.seal import MAX_AGE, Seal, new_key

    monkeypatch.setattr(collab.ownership, "OVERDUE_SECONDS", 3600.0)  # the silent owner is not replaced meanwhile
    h1, h2 = await real_hubs(2)
    a, b = Peer(queue_size=10_000), Peer(queue_size=10_000)
    doc1 = await h1.join("forged", a, None)
    doc2 = await h2.join("forged", b, None)
    assert h1.cluster.ownership.owns("forged") and h2.backplane.seal is not None
    h1_id, h2_id = h1.backplane.process_id, h2.backplane.process_id
    genuine, wrong, bus = h1.cluster.seal, Seal(new_key()), h1.backplane.bus.decode()
    r = aioredis.from_url(REDIS_URL)
    pubsub = r.pubsub()
    silent, got = await _silent_owner(h1, doc2)
    # What is for one process alone goes on its own channel, sealed for that channel.
    to_h1, to_h2, to_silent = (h1.backplane._inbox_name(p) for p in (h1_id, h2_id, silent.process_id))
    await pubsub.subscribe(to_silent)
    try:
        await doc2.submit(b, Submit(0, ["héllo 🌍"], "b1", None))
        await asyncio.wait_for(_until(lambda: got == ["b1"]), 30)
        assert "b1" in doc2.forwarder.awaiting
        while True:  # process 2's bundle with the submit, as Redis carried it
            msg = await asyncio.wait_for(pubsub.get_message(timeout=30), 30)
            if msg and msg["type"] == "message" and b'"b1"' in msg["data"] and h2_id.encode() in msg["data"]:
                replayed = msg["data"]
                break
        refusal = refused_msg("forged", ProtocolError(BAD_OP, "forged", "b1"))
        evil = submit_msg("forged", [Forwarded("evil", Submit(0, ["😈"], "e1", None))])
        now = time.time()
        forged = [  # where each is published, and what
            (to_h2, wrong.seal(to_h2, _sealed_body([["p", h2_id, refusal]], silent.process_id, now, 10**6))),  # a key
            (bus, _sealed_body([["p", h2_id, refusal]], silent.process_id, now, 10**6)),  # no seal: all 3 read it
            (to_h1, wrong.seal(to_h1, _sealed_body([["p", h1_id, evil]], h2_id, now, 10**6))),  # posing as process 2
            (to_silent, replayed),  # process 2's bundle again, where it went: from the owner's point of view, a replay
            (to_h1, replayed),  # ... and to another process: sealed for the silent one's channel, not this one's
            (to_h1, genuine.seal(to_h1, _sealed_body([["p", h1_id, evil]], "gone", now - MAX_AGE - 60, 1))),  # too old
        ]
        before = h1.backplane.rejected, h2.backplane.rejected, silent.rejected
        for channel, data in forged:
            await r.publish(channel, data)
        await asyncio.wait_for(_until(lambda: (h1.backplane.rejected - before[0], h2.backplane.rejected - before[1],
                                               silent.rejected - before[2]) == (4, 2, 2)), 30)
        assert got == ["b1"]  # the replay was not taken again
        assert "b1" in doc2.forwarder.awaiting  # not answered by the forged refusals
        doc2.forwarder.resend(h1_id)
        answer = await asyncio.wait_for(_answer(b, "b1", []), 30)
    finally:
        await pubsub.aclose()
        await r.aclose()
        await silent.close()
    assert answer == {"type": "ack", "id": "b1", "rev": 1}
    state = await h1.store.load("forged", 10)
    assert (state.rev, state.text) == (1, "héllo 🌍") and [op.id for op in state.history] == ["b1"]
    await asyncio.wait_for(_until(lambda: doc1.snapshot() == (1, "héllo 🌍")), 30)
    assert doc2.snapshot() == (1, "héllo 🌍")
    assert "collab_backplane_rejected_total" in {f.name for f in APP_FAMILIES}


async def test_records_in_redis_that_no_process_wrote_are_taken_as_absent(real_hubs):
    """Presence, owner and heartbeat records are sealed like bundles: one written by someone else, or a
    genuine one copied to another document, is not shown to anyone; genuine ones still are."""
    import json

    import redis.asyncio as aioredis

    from collab.hub import Peer
    from collab.protocol import User

    h1, h2 = await real_hubs(2)
    a = Peer(User("Zoë 🦊", "#ff8800"), queue_size=10_000)
    await h1.join("records", a, None)
    bp1, bp2 = h1.backplane, h2.backplane
    r = aioredis.from_url(REDIS_URL)
    try:
        await asyncio.wait_for(_until_async(lambda: bp2.peers("records"), lambda p: a.id in p), 30)
        genuine = await r.hget(bp1._peers_key("records"), a.id)
        forged = {"proc": bp1.process_id, "user": {"name": "ghost 👻", "color": "#000"}, "cursor": None, "rev": 0}
        await r.hset(bp1._peers_key("records"), "ghost", json.dumps(forged))
        await r.hset(bp1._peers_key("copied"), a.id, genuine)  # a genuine record, on another document
        await r.set(bp1._owner_key("copied"), "bogus-process")
        await r.set(bp1._proc_key("bogus-process"), b"1")
    finally:
        await r.aclose()
    assert set(await bp2.peers("records")) == {a.id} and await bp2.peers("copied") == {}
    assert await bp2.owner("copied") is None and await bp2.owner("records") == bp1.process_id
    assert await bp2.dead({"bogus-process", bp1.process_id}) == {"bogus-process"}
    b, c = Peer(queue_size=10_000), Peer(queue_size=10_000)
    await h2.join("records", b, None)
    await h2.join("copied", c, None)
    assert [p["client"] for p in json.loads(b.outbox[0])["peers"]] == [a.id]
    assert json.loads(c.outbox[0])["peers"] == []


async def _a_client_on_each(real_hubs, doc_id: str) -> tuple:
    """Two hubs without their once-a-second placement check (so that only what a test exercises places
    a document), and a client on ``doc_id`` on each, process 1's first (it owns the document)."""
    from collab.hub import Peer

    h1, h2 = await real_hubs(2)
    for hub in (h1, h2):
        await hub.cluster.ownership.stop_watching()
    a, b = Peer(queue_size=10_000), Peer(queue_size=10_000)
    doc1 = await h1.join(doc_id, a, None)
    doc2 = await h2.join(doc_id, b, None)
    return h1, h2, a, b, doc1, doc2


def _acked(peer, op_id: str) -> bool:
    """Whether ``peer`` was sent the ``ack`` of op ``op_id``."""
    import json

    return any(json.loads(f).get("type") == "ack" and json.loads(f).get("id") == op_id for f in peer.outbox)


async def _both_edit_through_one_sequencer(h1, h2, doc1, a, doc2, b, doc_id: str) -> None:
    """``a`` (on process 1) and ``b`` (on process 2) each edit ``doc_id`` at revision 1 ("héllo 🌍"):
    both are acknowledged, both processes read the same text, and nobody lost a race or took the
    document's row lock (one process ordered both edits)."""
    from collab.protocol import Submit

    turns = h1.store.exclusive_turns + h2.store.exclusive_turns
    await doc1.submit(a, Submit(1, [7, " 👋"], f"{doc_id}-a", None))
    await doc2.submit(b, Submit(1, ["¡", 7], f"{doc_id}-b", None))
    await asyncio.wait_for(_until(lambda: _acked(a, f"{doc_id}-a") and _acked(b, f"{doc_id}-b")), 30)
    assert await h1.read(doc_id) == await h2.read(doc_id) == (3, "¡héllo 🌍 👋")
    assert h1.conflicts == h2.conflicts == 0
    assert h1.store.exclusive_turns + h2.store.exclusive_turns == turns


async def _until_async(read, cond) -> None:
    """Return once ``cond(await read())`` holds (read every 20 ms)."""
    while not cond(await read()):
        await asyncio.sleep(0.02)


async def test_a_forwarded_edit_moves_its_author_s_cursor_on_both_processes(real_hubs):
    """A client of process 2 types with its cursor after the text; process 1 orders it. Someone who joins
    later, on either process, is welcomed with that cursor (moved by the edits after it), not the one the
    author had when it joined."""
    import json

    from collab.hub import Peer
    from collab.protocol import Cursor, Submit

    h1, h2 = await real_hubs(2)
    a, b = Peer(queue_size=10_000), Peer(queue_size=10_000)
    doc1 = await h1.join("cursor", a, None)
    doc2 = await h2.join("cursor", b, None)
    assert doc2.forwarder.owner == h1.backplane.process_id

    async def until(cond) -> None:
        while not cond():
            await asyncio.sleep(0.02)

    await asyncio.wait_for(until(lambda: b.id in doc1.replica.peers), 30)
    await doc2.submit(b, Submit(0, ["héllo 🌍"], "b1", Cursor(7, 7)))
    assert await asyncio.wait_for(_answer(b, "b1", []), 30) == {"type": "ack", "id": "b1", "rev": 1}
    assert await doc1.submit(None, Submit(1, ["🎉 ", 7], "h2", None)) == 2  # before the cursor: moves it by 2
    await asyncio.wait_for(until(lambda: doc2.snapshot()[0] == 2), 30)
    welcomes = []
    for hub in (h1, h2):
        newcomer = Peer(queue_size=10_000)
        await hub.join("cursor", newcomer, None)
        welcomes.append(json.loads(newcomer.outbox[0]))
    for welcome in welcomes:
        assert welcome["text"] == "🎉 héllo 🌍"
        assert {p["client"]: p["cursor"] for p in welcome["peers"]}[b.id] == {"anchor": 9, "head": 9}


async def _until(cond) -> None:
    """Return once ``cond()`` holds (checked every 20 ms)."""
    while not cond():
        await asyncio.sleep(0.02)


async def _silent_owner(h1, doc):
    """A process of ``h1``'s deployment that takes the edits ``doc`` forwards, and never answers: made
    ``doc``'s owner. Returns it (close it when done) and the op ids it received, in order."""
    from collab.backplane.redis import RedisBackplane

    silent = RedisBackplane(f"{h1.backplane.url}?prefix={h1.backplane.prefix}", heartbeat_ttl=3)
    silent.seal = h1.cluster.seal
    got: list[str] = []
    await silent.start(lambda doc, msg: None, lambda: None, lambda msg: got.extend(i["id"] for i in msg["items"]))
    doc.forwarder.owner = silent.process_id
    return silent, got


async def test_edits_waiting_for_the_owner_s_answer_fill_the_inbox(real_hubs, monkeypatch):
    """With an inbox of 2, a process whose 2 forwarded edits the owner has not answered yet takes no
    third from its client until one is answered: the client is held back (its socket is not read), as on
    the owner, and nothing grows without bound while the owner is slow. Then all are acknowledged."""
    import collab.ownership
    from collab.hub import Peer
    from collab.protocol import Submit

    monkeypatch.setattr(collab.ownership, "OVERDUE_SECONDS", 3600.0)  # the silent owner is not replaced meanwhile
    h1, h2 = await real_hubs(2, inbox_size=2)
    a, b = Peer(queue_size=10_000), Peer(queue_size=10_000)
    await h1.join("held", a, None)
    doc2 = await h2.join("held", b, None)
    assert doc2.forwarder.owner == h1.backplane.process_id
    silent, got = await _silent_owner(h1, doc2)
    try:
        assert doc2.offer(b, Submit(0, ["a"], "s1", None)) and doc2.offer(b, Submit(0, ["b"], "s2", None))
        await asyncio.wait_for(_until(lambda: got == ["s1", "s2"]), 30)
        assert not doc2.offer(b, Submit(0, ["🌍"], "s3", None))  # full: the connection would wait in submit()
        third = asyncio.create_task(doc2.submit(b, Submit(0, ["🌍"], "s3", None)))
        doc2.forwarder.resend(h1.backplane.process_id)  # the real owner: it answers, and that makes room
        seen: list[dict] = []
        answers = [await asyncio.wait_for(_answer(b, op_id, seen), 30) for op_id in ("s1", "s2", "s3")]
        await asyncio.wait_for(third, 30)
    finally:
        await silent.close()
    assert [m["type"] for m in answers] == ["ack"] * 3 and got == ["s1", "s2"]
    state = await h1.store.load("held", 10)
    assert state.rev == 3 and sorted(state.text) == sorted("ab🌍")


async def test_edits_made_over_http_on_another_process_keep_their_authors_names(real_hubs):
    """Two HTTP edits (each with its token's name) on a process that forwards them, at once: the owner
    records each with its own name, as it would have recorded them itself."""
    from collab.hub import Peer
    from collab.protocol import Submit

    h1, h2 = await real_hubs(2)
    await h1.join("named", Peer(queue_size=10_000), None)
    doc2 = await h2.join("named", Peer(queue_size=10_000), None)
    assert doc2.forwarder.owner == h1.backplane.process_id
    revs = await asyncio.wait_for(asyncio.gather(
        doc2.submit(None, Submit(0, ["🌍"], "n1", None, author="Zoë 🦊")),
        doc2.submit(None, Submit(0, ["é"], "n2", None, author="Ana")),
    ), 30)
    assert sorted(revs) == [1, 2]
    history = await h1.store.ops_since("named", 0)
    assert {op.id: op.name for op in history} == {"n1": "Zoë 🦊", "n2": "Ana"}


async def test_a_forwarded_edit_whose_id_another_client_used_is_refused_and_a_true_resend_acknowledged(
        real_hubs, monkeypatch):
    """Two clients of a forwarding process wait for the owner's answer; meanwhile the store gets one op
    with the first one's id but other content, and one that is the second one's op (as after a resend
    from another connection). Integrating them, the process refuses the first and acknowledges the second."""
    import collab.ownership
    from collab import ot
    from collab.hub import Peer
    from collab.protocol import Submit
    from collab.store.base import StoredOp

    monkeypatch.setattr(collab.ownership, "OVERDUE_SECONDS", 3600.0)
    h1, h2 = await real_hubs(2)
    await h1.join("reuse", Peer(queue_size=10_000), None)
    b, c = Peer(queue_size=10_000), Peer(queue_size=10_000)
    doc2 = await h2.join("reuse", b, None)
    await h2.join("reuse", c, None)
    silent, got = await _silent_owner(h1, doc2)
    try:
        assert doc2.offer(b, Submit(0, ["😈"], "dup", None)) and doc2.offer(c, Submit(0, ["🌍"], "same", None))
        await asyncio.wait_for(_until(lambda: sorted(got) == ["dup", "same"]), 30)
        first = StoredOp(1, ["x"], "other", "dup")
        second = StoredOp(2, ot.transform(["🌍"], first.op)[0], "elsewhere", "same")
        await h1.store.append("reuse", [first, second], 2)
        await asyncio.wait_for(doc2.sync(), 30)
        seen_b: list[dict] = []
        seen_c: list[dict] = []
        answer_b = await asyncio.wait_for(_answer(b, "dup", seen_b), 30)
        answer_c = await asyncio.wait_for(_answer(c, "same", seen_c), 30)
    finally:
        await silent.close()
    assert answer_b["type"] == "error" and answer_b["code"] == "bad_op"
    assert answer_c == {"type": "ack", "id": "same", "rev": 2}
    assert doc2.snapshot() == (2, "🌍x") and not doc2.forwarder.awaiting


async def test_forwarded_submits_that_must_wait_keep_their_order(real_hubs):
    """Forwarded submits based on a revision the owner has not read yet wait for it (and, with an
    inbox of 2, for room); those forwarded after them, which need no waiting, still wait behind them:
    everything is committed in the order it was sent."""
    from collab.backplane.redis import RedisBackplane
    from collab.forwarding import Forwarded, submit_msg
    from collab.hub import Peer
    from collab.protocol import Submit
    from collab.store.base import StoredOp

    (h1,) = await real_hubs(1, inbox_size=2)
    await h1.join("queued", Peer(queue_size=10_000), None)
    # Committed behind the owner's back (as by a process that ordered it before this one owned it).
    await h1.store.append("queued", [StoredOp(1, ["x"], "other", "o1")], 1)
    forwarder = RedisBackplane(f"{h1.backplane.url}?prefix={h1.backplane.prefix}", heartbeat_ttl=3)
    forwarder.seal = h1.cluster.seal
    await forwarder.start(lambda doc, msg: None, lambda: None, lambda msg: None)
    try:
        owner = h1.backplane.process_id
        first = [Forwarded("far", Submit(1, [1, "🌍"], f"s{i}", None)) for i in range(6)]  # after o1
        second = [Forwarded("near", Submit(0, ["é"], f"s{i}", None)) for i in range(6, 9)]
        forwarder.send(owner, submit_msg("queued", first))
        forwarder.send(owner, submit_msg("queued", second))

        async def committed() -> None:
            while (await h1.store.load("queued", 0)).rev < 10:
                await asyncio.sleep(0.02)

        await asyncio.wait_for(committed(), 30)
    finally:
        await forwarder.close()
    state = await h1.store.load("queued", 0)
    assert [op.id for op in await h1.store.ops_since("queued", 0)] == ["o1"] + [f"s{i}" for i in range(9)]
    assert sorted(state.text) == sorted("x" + "🌍" * 6 + "é" * 3)


async def test_a_process_that_does_not_own_a_document_forwards_its_clients_edits_to_the_owner(real_hubs):
    """Process 2's client and HTTP edit are ordered and committed by process 1 (the owner), and
    acknowledged on process 2 once it reads the commit from the store; process 2 commits nothing."""
    import json

    from collab.hub import Peer
    from collab.protocol import Cursor, Submit, User

    h1, h2 = await real_hubs(2)
    a, b = Peer(queue_size=10_000), Peer(User("Zoë 🦊", "#ff8800"), queue_size=10_000)
    doc1 = await h1.join("fwd", a, None)
    doc2 = await h2.join("fwd", b, None)
    assert doc2.forwarder.owner == h1.backplane.process_id and doc1.forwarder.owner is None
    arrived = asyncio.Event()
    b.notify = arrived.set

    seen: list[dict] = []

    async def acked(op_id: str) -> dict:
        """The answer to ``op_id`` among the frames sent to ``b`` (the outbox is drained as a connection would)."""
        while True:
            arrived.clear()
            seen.extend(map(json.loads, b.outbox))
            b.outbox.clear()
            for m in seen:
                if m["type"] in ("ack", "error") and m.get("id") == op_id:
                    return m
            await arrived.wait()

    await doc2.submit(b, Submit(0, ["héllo 🌍"], "b1", Cursor(7, 7)))
    assert await asyncio.wait_for(acked("b1"), 30) == {"type": "ack", "id": "b1", "rev": 1}
    assert await asyncio.wait_for(doc2.submit(None, Submit(1, [7, "!"], "http-1", None)), 30) == 2
    await doc2.submit(b, Submit(2, [99, "?"], "b2", None))  # spans the wrong length: the owner refuses it
    refused = await asyncio.wait_for(acked("b2"), 30)
    assert refused["type"] == "error" and refused["code"] == "bad_op"
    state = await h1.store.load("fwd", 10)
    assert (state.rev, state.text) == (2, "héllo 🌍!")
    assert [(o.client, o.id) for o in state.history] == [(b.id, "b1"), ("server", "http-1")]
    assert h2.store.ops_written == 0 and h1.store.ops_written == 2
    assert (await h1.store.ops_since("fwd", 0))[0].name == "Zoë 🦊"  # recorded as its author
    assert h1.conflicts == h2.conflicts == 0
    assert doc1.snapshot() == (2, "héllo 🌍!")
    assert not doc2.forwarder.awaiting


async def test_edits_that_arrive_while_a_forwarder_reads_the_store_are_forwarded_too(real_hubs):
    """A forwarding process reads the owner's commits from the store between batches; a client's edit
    that arrives during that read goes to the owner like the others, never ordered here (which would
    race the owner for the revision and make both take the document's row lock for seconds)."""

    from collab.hub import Peer
    from collab.protocol import Submit

    h1, h2 = await real_hubs(2)
    a, b = Peer(queue_size=10_000), Peer(queue_size=10_000)
    doc1 = await h1.join("reading", a, None)
    doc2 = await h2.join("reading", b, None)
    assert doc2.forwarder.owner == h1.backplane.process_id
    reads = h2.store.ops_since
    reading, release = asyncio.Event(), asyncio.Event()

    async def slow_read(doc: str, rev: int):  # a read that takes a while: the fault this test needs
        reading.set()
        await release.wait()
        return await reads(doc, rev)

    h2.store.ops_since = slow_read
    await doc1.submit(a, Submit(0, ["🌍"], "a1", None))  # process 2 must read it from the store
    await asyncio.wait_for(reading.wait(), 30)
    try:  # based on what b has seen (revision 0): it arrives while process 2 reads
        await asyncio.wait_for(doc2.submit(b, Submit(0, ["é"], "b1", None)), 30)
    finally:
        release.set()

    assert (await asyncio.wait_for(_answer(b, "b1", []), 30))["type"] == "ack"
    assert h2.store.ops_written == 0 and h1.store.ops_written == 2, "ordered by the owner only"
    assert h1.conflicts == h2.conflicts == 0 and h2.store.exclusive_turns == 0
    assert doc2.snapshot() == doc1.snapshot() and doc1.snapshot()[0] == 2 and sorted(doc1.snapshot()[1]) == ["é", "🌍"]


async def test_when_the_owner_dies_a_forwarder_takes_the_lease_and_its_edits_are_acknowledged(real_hubs):
    """Process 1 owns the document and vanishes (its lease connection closes, it answers nothing):
    process 2's forwarded edits go unanswered, so it takes the lease and orders them itself."""
    import json

    from collab.hub import Peer
    from collab.protocol import Submit

    h1, h2 = await real_hubs(2)
    a, b = Peer(queue_size=10_000), Peer(queue_size=10_000)
    doc1 = await h1.join("heir", a, None)
    doc2 = await h2.join("heir", b, None)
    assert await doc1.submit(None, Submit(0, ["🌱"], "a1", None)) == 1
    assert doc2.forwarder.owner == h1.backplane.process_id
    # A crash: no more messages either way, and PostgreSQL drops the lease with the connection.
    for task in h1.backplane._tasks:
        task.cancel()
    await h1.cluster.stop_watching()
    await h1.cluster.ownership.stop_watching()
    await h1.cluster.ownership.leases._conn.close()
    arrived = asyncio.Event()
    b.notify = arrived.set

    seen: list[dict] = []

    async def acked(op_id: str) -> dict:
        """The answer to ``op_id`` among the frames sent to ``b`` (the outbox is drained as a connection would)."""
        while True:
            arrived.clear()
            seen.extend(map(json.loads, b.outbox))
            b.outbox.clear()
            for m in seen:
                if m["type"] in ("ack", "error") and m.get("id") == op_id:
                    return m
            await arrived.wait()

    async def reaches(rev: int) -> None:
        while doc2.snapshot()[0] < rev:
            await asyncio.sleep(0.02)

    await asyncio.wait_for(reaches(1), 30)
    await doc2.submit(b, Submit(1, [1, "🌳"], "b1", None))
    assert await asyncio.wait_for(acked("b1"), 30) == {"type": "ack", "id": "b1", "rev": 2}
    assert h2.cluster.ownership.owns("heir") and doc2.forwarder.owner is None
    await doc2.submit(b, Submit(2, [2, "🍎"], "b2", None))
    assert await asyncio.wait_for(acked("b2"), 30) == {"type": "ack", "id": "b2", "rev": 3}
    state = await h2.store.load("heir", 10)
    assert (state.rev, state.text) == (3, "🌱🌳🍎")
    assert [o.id for o in state.history] == ["a1", "b1", "b2"]


async def test_a_resend_of_an_op_committed_elsewhere_is_acked_once_and_never_echoed(real_hubs):
    """A client resends an op that another process committed, which this process has not integrated
    yet, and whose id only the store still knows (older than the kept ids): this process catches up
    first, then acknowledges it once; the op is not also sent to its author as someone else's."""
    import json

    from collab.hub import Peer
    from collab.protocol import Submit
    from collab.store.base import StoredOp

    (h1,) = await real_hubs(1, history_depth=2)
    b = Peer(queue_size=10_000)
    doc = await h1.join("echo", b, None)
    for i, ch in enumerate("🌱🌳🍎🍐"):
        assert await doc.submit(None, Submit(i, [i, ch] if i else [ch], f"a{i}", None)) == i + 1
    assert doc.seq.history_start > 0  # ids of the first ops are only in the store now
    # Another process commits b's op (its first try) and announces nothing that reaches here.
    await h1.store.append("echo", [StoredOp(5, [4, "🎉"], b.id, "x1")], 5)
    arrived = asyncio.Event()
    b.notify = arrived.set
    frames: list[dict] = []

    async def answered(op_id: str) -> None:
        while not any(m.get("id") == op_id and m["type"] == "ack" for m in frames):
            arrived.clear()
            frames.extend(json.loads(f) for f in b.outbox)
            b.outbox.clear()
            if not any(m.get("id") == op_id and m["type"] == "ack" for m in frames):
                await arrived.wait()

    frames.extend(json.loads(f) for f in b.outbox)
    b.outbox.clear()
    await doc.submit(b, Submit(4, [4, "🎉"], "x1", None))  # b resends it here
    await asyncio.wait_for(answered("x1"), 30)
    assert await doc.submit(None, Submit(4, [4, "!"], "a4", None)) == 6  # integrates rev 5 on the way
    frames.extend(json.loads(f) for f in b.outbox)
    assert [m for m in frames if m.get("id") == "x1"] == [{"type": "ack", "id": "x1", "rev": 5}]
    assert [(m["type"], m["rev"]) for m in frames if m["type"] in ("op", "ack")][-2:] == [("ack", 5), ("op", 6)]
    assert doc.snapshot() == (6, "🌱🌳🍎🍐!🎉")  # "!" was based on rev 4: it goes first at the tie


async def test_ops_beyond_kept_history_cost_no_id_lookup_and_an_old_resend_is_still_acked_once(real_hubs):
    """On PostgreSQL the append refuses an op id applied before, so new ops of a document longer than
    its kept history are not looked up first; a resend of an op only the store remembers, transformed
    to the current base, is refused there, looked up, and acknowledged with its first revision."""
    import json

    from collab.hub import Peer
    from collab.protocol import Submit

    (h1,) = await real_hubs(1, history_depth=2)
    lookups: list[list[str]] = []
    find_ops = h1.store.find_ops

    async def counted(doc: str, op_ids: list[str]) -> dict[str, int]:
        lookups.append(list(op_ids))
        return await find_ops(doc, op_ids)

    h1.store.find_ops = counted  # a spy: the real lookup runs
    b = Peer(queue_size=10_000)
    doc = await h1.join("fenced", b, None)
    assert await doc.submit(None, Submit(0, ["🌱"], "dup", None)) == 1
    for i, ch in enumerate("🌳🍎🍐é", start=1):
        assert await doc.submit(None, Submit(i, [i, ch], f"a{i}", None)) == i + 1
    assert doc.seq.history_start > 0 and "dup" not in doc.seq.ids
    assert lookups == []  # new ids past the kept history: the append is the check
    b.outbox.clear()
    await doc.submit(b, Submit(5, [5, "🌱"], "dup", None))  # its ack was lost: rebased and resent
    assert await doc.submit(None, Submit(5, [5, "!"], "a5", None)) == 6  # ordered after it
    assert len(lookups) == 1 and "dup" in lookups[0]  # once, after the append refused it
    state = await h1.store.load("fenced", 10)
    assert (state.rev, state.text) == (6, "🌱🌳🍎🍐é!")
    frames = [json.loads(f) for f in b.outbox]
    assert [m for m in frames if m.get("id") == "dup"] == [{"type": "ack", "id": "dup", "rev": 1}]


async def test_a_process_that_found_no_owner_record_forwards_once_there_is_one(real_hubs):
    """Process 2 opens a document whose lease process 1 holds before its owner record reached Redis:
    it orders the document itself at first (correct, only slower), and forwards once the record shows."""
    import json

    from collab.hub import Peer
    from collab.protocol import Submit

    h1, h2 = await real_hubs(2)
    owner = h1.backplane.process_id
    assert await h1.cluster.ownership.leases.acquire(["late"]) == {"late"}  # the lease, no record yet
    b = Peer(queue_size=10_000)
    doc2 = await h2.join("late", b, None)
    assert doc2.forwarder.owner is None and not h2.cluster.ownership.owns("late")
    a = Peer(queue_size=10_000)
    await h1.join("late", a, None)  # takes the lease it holds and writes the record

    async def forwarding() -> None:
        while doc2.forwarder.owner != owner:
            await asyncio.sleep(0.05)

    await asyncio.wait_for(forwarding(), 30)
    written = h2.store.ops_written
    await doc2.submit(b, Submit(0, ["🌍"], "b1", None))

    async def acked() -> None:
        while not any(json.loads(f).get("id") == "b1" for f in b.outbox):
            await asyncio.sleep(0.02)

    await asyncio.wait_for(acked(), 30)
    assert h2.store.ops_written == written and h1.store.ops_written == 1


async def test_a_race_lost_before_forwarding_leaves_no_row_lock_behind(real_hubs):
    """A process that lost a race on a document while it ordered it, then learned the owner, forwards
    its edits without taking the document's row lock: a turn taken only to forward would hold the row
    the owner appends to, on every batch, for as long as the document is open."""

    from collab.hub import Peer
    from collab.protocol import Submit

    h1, h2 = await real_hubs(2)
    owner = h1.backplane.process_id
    assert await h1.cluster.ownership.leases.acquire(["raced"]) == {"raced"}  # the lease, no record yet
    b = Peer(queue_size=10_000)
    doc2 = await h2.join("raced", b, None)
    assert doc2.forwarder.owner is None
    doc2._losses = 1  # a race lost here a moment ago (when it happens depends on Redis's timing)
    await h1.join("raced", Peer(queue_size=10_000), None)  # writes the owner record

    async def forwarding() -> None:
        while doc2.forwarder.owner != owner:
            await asyncio.sleep(0.05)

    await asyncio.wait_for(forwarding(), 30)
    turns, written = h2.store.exclusive_turns, h2.store.ops_written
    seen: list[dict] = []
    for k, text in enumerate(["🌍", "é", "!"]):
        await doc2.submit(b, Submit(k, [k, text] if k else [text], f"b{k}", None))
        assert (await asyncio.wait_for(_answer(b, f"b{k}", seen), 30))["type"] == "ack"
    assert (h2.store.exclusive_turns, h2.store.ops_written) == (turns, written), "forwarded, no turn taken"
    assert h1.store.ops_written == 3 and str(doc2.text) == "🌍é!"


@contextlib.asynccontextmanager
async def _racing_hubs(name: str) -> AsyncIterator[tuple[list, list]]:
    """Two hubs on one PostgreSQL schema and no backplane: no owners, so both order a document's edits
    and their commits race (the store's unique revisions settle it)."""
    reason = await _unavailable()
    if reason:
        pytest.skip(reason)
    from collab.hub import Hub, HubConfig
    from collab.store.postgres import PostgresStore

    schema = f"collab_{name}_{secrets.token_hex(5)}"
    stores = [PostgresStore(PG_URL, schema=schema) for _ in range(2)]
    hubs: list = []
    try:
        for store in stores:
            await store.open()
            hubs.append(Hub(store, HubConfig(idle_unload_seconds=600)))
        yield stores, hubs
    finally:
        for hub in hubs:
            await hub.close()
        for store in stores:
            await store.close()
        await _drop_test_state(schema, f"collab-{name}-{schema}")


@pytest.mark.parametrize("resends", [False, True], ids=["edits", "edits-and-resends"])
async def test_pipelined_batches_that_lose_a_race_are_ordered_again_with_those_built_on_them(resends, caplog):
    """Two processes with no backplane (so no owners) both write one document, each keeping several
    batches in flight: a batch that loses its revisions takes the batches queued after it down with
    it, and all of them are ordered again. Every submit is committed once, in one history. A batch
    of resends only (it writes nothing) that was behind a lost one is ordered again too, not taken
    for one the store let through (which fails the document)."""
    from collab.hub import Peer
    from collab.protocol import Submit

    async with _racing_hubs("race") as (stores, hubs):
        docs = [await hub.join("race", Peer(queue_size=10_000), None) for hub in hubs]

        async def writer(doc, tag: str) -> list[int]:
            pending, resent = [], []
            for i in range(40):  # one submit per loop turn: batches start while earlier ones are in flight
                sub = Submit(0, [f"{tag}{i:02}🙂"], f"{tag}{i}", None)
                pending.append(asyncio.ensure_future(doc.submit(None, sub)))
                await asyncio.sleep(0)
                if resends:  # and its resend, alone in the next batch (which writes nothing)
                    resent.append(asyncio.ensure_future(doc.submit(None, sub)))
                    await asyncio.sleep(0)
            revs = list(await asyncio.gather(*pending))
            assert list(await asyncio.gather(*resent)) == (revs if resends else [])
            return revs

        revs = await asyncio.wait_for(asyncio.gather(writer(docs[0], "a"), writer(docs[1], "b")), 60)
        committed = sorted(revs[0] + revs[1])
        assert committed == list(range(1, 81)), committed
        assert sum(hub.conflicts for hub in hubs) > 0, "the processes never raced: the test proves nothing"
        assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        state = await stores[0].load("race", 100)
        assert state.rev == 80
        for tag in "ab":
            for i in range(40):
                assert state.text.count(f"{tag}{i:02}🙂") == 1
                assert await stores[1].find_op("race", f"{tag}{i}") == (revs[0] if tag == "a" else revs[1])[i]


async def test_a_batch_lost_with_an_earlier_one_before_its_early_encoding_is_ordered_again_quietly(caplog):
    """Process 1's batch loses its race to process 2's commit just as process 1 starts its next batch
    (built on it): the refusal is settled before that batch's frames are encoded early, so the later
    batch is lost, its submits queued again without results, before its early encoding runs, which must
    then skip it (encoding it raised in a callback). Both submits are committed once, in one history; no
    error is logged, nobody is disconnected, and the two processes converge."""
    import json

    from collab.hub import Peer
    from collab.protocol import Submit
    from collab.store.base import RevisionConflict

    async with _racing_hubs("early") as (stores, hubs):
        a, b = Peer(queue_size=10_000), Peer(queue_size=10_000)
        doc1 = await hubs[0].join("early", a, None)
        assert await doc1.submit(None, Submit(0, ["🌱"], "seed", None)) == 1
        doc2 = await hubs[1].join("early", b, None)
        assert await doc2.submit(None, Submit(1, [1, "🍎"], "b1", None)) == 2  # process 1 does not hear of it

        # The one wrapped call: process 1's first append is written (and refused) as usual, but the document
        # hears of it only when its next append starts, as if the refusal had come in the loop turn that
        # starts the next batch: the document's callback is queued before the store refuses the next append
        # (built on the refused one) and before that batch's early encoding, which then finds it lost.
        start_append = stores[0].start_append
        commits: list[asyncio.Future] = []  # process 1's appends, in order
        held: list = []  # the first one's callback (the document's), until the next append starts
        refused_first: list[bool] = []

        def refusal_heard_at_next_start(doc, ops, size, snapshot=None, on_done=None, nbytes=None):
            if not commits:  # the first: written as usual, its callback held
                held.append(on_done)
                commits.append(start_append(doc, ops, size, snapshot, None, nbytes))
                return commits[0]
            stores[0].start_append = start_append  # (once)
            refused_first.append(commits[0].done() and isinstance(commits[0].exception(), RevisionConflict))
            commits[0].add_done_callback(held.pop())  # done: queued at once, as the store's refusal queued it
            commits.append(start_append(doc, ops, size, snapshot, on_done, nbytes))
            return commits[1]

        stores[0].start_append = refusal_heard_at_next_start
        first = asyncio.ensure_future(doc1.submit(None, Submit(1, [1, "🌍"], "a1", None)))  # revision 2: taken
        await asyncio.wait_for(_until(lambda: commits and commits[0].done()), 30)
        second = asyncio.ensure_future(doc1.submit(None, Submit(1, [1, "é👩‍💻"], "a2", None)))  # built on it
        revs = await asyncio.wait_for(asyncio.gather(first, second), 30)

        assert refused_first == [True], "the first batch was not refused before the next one started"
        assert isinstance(commits[1].exception(), RevisionConflict), "the later batch was not lost with it"
        assert sorted(revs) == [3, 4] and hubs[0].conflicts == 1
        assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert not doc1.failed and not doc2.failed and not a.closed and not b.closed
        await asyncio.wait_for(doc2.sync(), 30)
        state = await stores[1].load("early", 100)
        assert [o.id for o in state.history] == ["seed", "b1", "a1", "a2"]
        assert state.rev == 4 and doc1.snapshot() == doc2.snapshot() == (4, state.text)
        assert state.text == "🌱é👩‍💻🌍🍎"  # all inserted at 1: at a tie the op ordered later goes first
        assert (stores[0].ops_written, stores[1].ops_written) == (3, 1)  # each op written once
        for peer, since in ((a, 0), (b, 1)):  # every op shown once, in order, to a client of each process
            ops = [m["rev"] for m in map(json.loads, peer.take()) if m["type"] == "op"]
            assert ops == list(range(since + 1, 5)), ops
