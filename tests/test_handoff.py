"""Connections handed or relayed to the owner's process: two real server processes.

Handed: both share a hand-over directory (``COLLAB_HANDOFF_DIR``),
PostgreSQL and Redis. A WebSocket connection to a document that the other
process owns is passed to it, socket and all, and served there; the client
sees an ordinary connection. Relayed: the processes share no directory (as
on two machines) but each says where the other reaches it
(``COLLAB_RELAY_ADDRESS``); such a connection's bytes are copied to the
owner, which serves it. Needs ``COLLAB_TEST_DATABASE_URL`` and
``COLLAB_TEST_REDIS_URL``.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from types import SimpleNamespace
from typing import AsyncIterator, Awaitable, Callable

import pytest

import collab.client as cc
from collab.addresses import auto_port, own_relay_address
from collab.handoff import MAX_HANDED_BYTES, HandOff, mark_relayed, relayed, split_address, ws_document
from conftest import ServerProcess, metric
from test_guard import NON_READER
from test_link import HandLink
from test_scaleout import fresh_state
from test_supervisor import group  # noqa: F401  (a fixture)

REDIS_URL = os.environ.get("COLLAB_TEST_REDIS_URL", "")

HANDED_OVER = "collab_guard_handed_over_connections_total"
HANDED_IN = "collab_guard_handed_in_connections_total"
RELAYED = "collab_guard_relayed_connections_total"
RELAYED_IN = "collab_guard_relayed_in_connections_total"


def test_the_document_is_read_from_a_whole_request_line_only():
    assert ws_document(b"GET /ws/notes HTTP/1.1\r\nHost: x\r\n\r\n") == "notes"
    assert ws_document(b"GET /ws/notes?token=abc HTTP/1.1\r\n") == "notes"
    assert ws_document(b"GET /ws/a%2Db.txt HTTP/1.1\r\n") == "a-b.txt"
    assert ws_document(b"GET /ws/notes HTTP/1.1") is None  # the line is not whole yet: served here
    assert ws_document(b"GET /api/docs HTTP/1.1\r\n") is None
    assert ws_document(b"POST /ws/notes HTTP/1.1\r\n") is None
    assert ws_document(b"GET /ws/.hidden HTTP/1.1\r\n") is None  # not a document name
    assert ws_document("GET /ws/caf\u00e9 HTTP/1.1\r\n".encode()) is None
    assert ws_document(b"GET /ws/%F0%9F%8E%89 HTTP/1.1\r\n") is None  # an emoji is no document name
    assert ws_document(b"GET /ws/%ZZ HTTP/1.1\r\n") is None


async def test_a_socket_is_passed_whole_and_a_full_queue_at_the_receiver_is_waited_out(tmp_path):
    """Real sockets: the receiver stands for a busy owner (it reads nothing until told). A send finds its
    queue full and waits; once the receiver takes one, the send goes. Each received descriptor is the
    socket that was sent: bytes written to it reach the other end of its pair."""
    sender = HandOff(str(tmp_path))
    sender.listen("sender", lambda sock, data: sock.close())
    busy = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    busy.bind(str(tmp_path / "busy.sock"))
    busy.setblocking(False)  # its queue is full when it is read: nothing to wait for
    pairs = []
    try:
        waiting = None
        while waiting is None:  # fill the receiver's queue: the first send that cannot go at once waits
            a, b = socket.socketpair()
            pairs.append((a, b))
            task = asyncio.ensure_future(sender.send(sender.path("busy"), a.fileno(), "GET /ws/x 🎉".encode()))
            await asyncio.sleep(0)  # one step of the task: done unless the queue is full
            if not task.done():
                waiting = task
            else:
                assert task.result() is True
            assert len(pairs) < 10_000, "the receiver's queue never filled"
        data, fds, _, _ = socket.recv_fds(busy, 1024, 1)
        assert data == "GET /ws/x 🎉".encode() and len(fds) == 1
        assert await asyncio.wait_for(waiting, 10) is True
        with socket.socket(fileno=fds[0]) as received:
            received.sendall(b"through")
        assert pairs[0][1].recv(16) == b"through"
    finally:
        sender.close()
        busy.close()
        for a, b in pairs:
            a.close()
            b.close()
    assert not (tmp_path / "sender.sock").exists()


async def test_a_connection_is_not_passed_to_a_process_that_is_gone_nor_with_more_than_it_reads(tmp_path):
    sender = HandOff(str(tmp_path))
    sender.listen("sender", lambda sock, data: sock.close())
    gone = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    gone.bind(str(tmp_path / "gone.sock"))
    gone.close()  # killed: its socket file stays, nobody reads it
    a, b = socket.socketpair()
    try:
        assert await sender.send(sender.path("gone"), a.fileno(), b"GET /ws/x HTTP/1.1\r\n") is False
        # More than a receiver reads of one hand-over would reach it cut short: served where it is.
        too_much = b"COLLAB-LINK/2 sender\r\n" + b"\0" * MAX_HANDED_BYTES
        assert await sender.send(sender.path("sender"), a.fileno(), too_much) is False
    finally:
        sender.close()
        a.close()
        b.close()


Pair = tuple[ServerProcess, ServerProcess, str]


@pytest.fixture
async def processes(tmp_path) -> AsyncIterator[Callable[[Callable[[ServerProcess], dict]], Awaitable[Pair]]]:
    """``await processes(env_of)``: two processes sharing a fresh schema and a Redis prefix (the third
    item), each started with ``env_of(itself)`` on top of that; killed and cleaned after the test."""
    async with fresh_state("handoff") as state:
        env = dict(state.env, COLLAB_IDLE_UNLOAD_SECONDS="600")
        procs: list[ServerProcess] = []

        async def start(env_of: Callable[[ServerProcess], dict]) -> Pair:
            for i in range(2):
                p = ServerProcess(str(tmp_path / f"data{i}"), env=dict(env))
                p.env.update(env_of(p))
                procs.append(p)
                await asyncio.to_thread(p.start)
            return procs[0], procs[1], state.prefix

        try:
            yield start
        finally:
            for p in procs:
                p.kill()


@pytest.fixture
async def pair(tmp_path, processes) -> Pair:
    """Two processes sharing a hand-over directory."""
    handoff = tmp_path / "handoff"
    handoff.mkdir()
    return await processes(lambda p: {"COLLAB_HANDOFF_DIR": str(handoff)})


def _relaying(trusted: str = "127.0.0.0/8") -> Callable[[ServerProcess], dict]:
    """Each process takes relayed connections at its own port, at the address it finds (``auto``: toward
    Redis, here 127.0.0.1); ``trusted``: the proxies (and processes) it trusts."""
    return lambda p: {"COLLAB_RELAY_ADDRESS": "auto", "COLLAB_TRUSTED_PROXIES": trusted}


async def _edit(ws, rev: int, op: list, op_id: str) -> int:
    """Send ``op`` at ``rev``; the revision of its ack."""
    await ws.send({"type": "op", "rev": rev, "op": op, "id": op_id})
    while (m := await ws.recv(30))["type"] != "ack":
        assert m["type"] != "error", m
    return m["rev"]


async def test_a_connection_to_a_document_owned_by_the_other_process_is_served_there(pair, ws_open):
    owner, other, prefix = pair
    first = await ws_open(f"{owner.ws_url}/ws/handed")
    rev = await _edit(first, (await first.join())["rev"], ["🎉 hello"], "a1")
    await _owner_recorded(prefix, "handed")
    assert await metric(other, HANDED_OVER) == 0
    second = await ws_open(f"{other.ws_url}/ws/handed")
    welcome = await second.join()
    assert (welcome["rev"], welcome["text"]) == (rev, "🎉 hello")
    rev = await _edit(second, rev, [7, " 🌍 world"], "b1")
    m = await first.recv_type("op")
    assert (m["rev"], m["op"]) == (rev, [7, " 🌍 world"])
    assert await metric(other, HANDED_OVER) == 1
    assert await metric(owner, HANDED_IN) == 1
    # Served on the owner: the other process never opened the document, nor forwarded an edit.
    assert await metric(other, "collab_ops_applied_total") == 0
    assert await metric(other, "collab_remote_ops_total") == 0
    assert await metric(other, "collab_backplane_published_total") == 0


async def _owner_recorded(prefix: str, doc: str) -> None:
    """Wait until Redis names ``doc``'s owner (its record is written beside the lease, asynchronously)."""
    import redis.asyncio as aioredis

    r = aioredis.from_url(REDIS_URL)
    try:
        while await r.get(f"{prefix}:owner:{doc}") is None:
            await asyncio.sleep(0.02)
    finally:
        await r.aclose()


async def test_the_workers_of_one_server_serve_a_document_s_clients_in_one_process(group):  # noqa: F811
    """``collab serve --workers 2``: the kernel spreads connections over both workers, and each one to
    a document the other worker owns is passed to it, so no edit crosses Redis."""
    g, base = await group(2)
    doc = "gathered"
    first = await cc.connect(base, doc)
    clients = [first]
    try:
        await first.insert(0, "🧭")
        await first.synced(timeout=30)
        await _owner_recorded(g.prefix, doc)
        clients += [await cc.connect(base, doc) for _ in range(7)]
        for i, d in enumerate(clients):
            await d.insert(0, f"{i}🙂")
        for d in clients:
            await d.synced(timeout=30)
        text = clients[-1].text
        for d in clients:
            await d.wait_for(lambda t: t == text, timeout=30)
        assert sorted(text[:-1].split("🙂")[:-1]) == [str(i) for i in range(8)]
        serving = await _serving(g.prefix, doc, len(clients))
    finally:
        for d in clients:
            await d.close()
    assert len(set(serving.values())) == 1, f"the clients are served by several workers: {serving}"


async def _serving(prefix: str, doc: str, clients: int) -> dict[str, str]:
    """Each client of ``doc`` and the process serving it, from the presence records in Redis, once all
    ``clients`` are there."""
    import redis.asyncio as aioredis

    r = aioredis.from_url(REDIS_URL)
    try:
        while len(records := await r.hgetall(f"{prefix}:peers:{doc}")) < clients:
            await asyncio.sleep(0.02)
    finally:
        await r.aclose()
    return {k.decode(): json.loads(v[v.index(b"{"):])["proc"] for k, v in records.items()}


async def test_a_connection_whose_owner_died_is_served_where_it_arrived(pair, ws_open):
    """The owner's record still names it and its socket file is still there, but nobody reads it:
    the connection is served by the process it reached, which takes the document over."""
    owner, other, prefix = pair
    first = await ws_open(f"{owner.ws_url}/ws/orphan")
    await _edit(first, (await first.join())["rev"], ["🦄"], "a1")
    await _owner_recorded(prefix, "orphan")
    owner.kill()
    second = await ws_open(f"{other.ws_url}/ws/orphan")
    welcome = await second.join()
    assert welcome["text"] == "🦄"
    rev = welcome["rev"]
    for i in range(3):  # acknowledged once the lease of the dead owner is taken over (within 30 s each)
        rev = await _edit(second, rev, [i + 1, "!"], f"b{i}")
    assert await metric(other, HANDED_OVER) == 0


def test_relay_addresses_and_the_relayed_mark():
    assert split_address("10.0.0.5:8000") == ("10.0.0.5", 8000)
    assert split_address("[fd00::5]:8000") == ("fd00::5", 8000)
    assert split_address("collab-2.internal:80") == ("collab-2.internal", 80)
    for bad in ("10.0.0.5", ":8000", "host:port", "host:0", "host:70000"):
        with pytest.raises(ValueError, match="host:port"):
            split_address(bad)
    first = b"GET /ws/notes HTTP/1.1\r\nHost: x\r\n\r\n"
    marked = mark_relayed(first)
    assert marked == b"GET /ws/notes HTTP/1.1\r\ncollab-relayed: 1\r\nHost: x\r\n\r\n"
    assert relayed(marked) and not relayed(first)
    assert ws_document(marked) == "notes"


async def test_auto_is_this_machine_s_address_toward_redis_with_the_server_s_port():
    assert await own_relay_address("auto", 8123, "redis://127.0.0.1:6379/0") == "127.0.0.1:8123"
    assert await own_relay_address("auto:9000", 8123, "rediss://:secret@127.0.0.1:6380/1") == "127.0.0.1:9000"
    assert await own_relay_address("10.0.0.5:8000", 8123, "redis://127.0.0.1/0") == "10.0.0.5:8000"
    if socket.has_ipv6:
        try:
            assert await own_relay_address("auto", 8123, "redis://[::1]:6379/0") == "[::1]:8123"
        except OSError:  # no IPv6 loopback here
            pass
    assert auto_port("autobahn:80", 8000) is None  # a host named so
    for bad in ("auto", "auto:", "auto:x", "auto:70000"):
        with pytest.raises(ValueError, match="auto:8000"):
            auto_port(bad, 0)


async def test_a_connection_to_a_document_owned_elsewhere_is_relayed_there(processes, ws_open):
    """No shared directory: the connection's bytes are copied to the owner, which serves it. The other
    process decodes nothing: it never opens the document, nor forwards an edit."""
    owner, other, prefix = await processes(_relaying())
    first = await ws_open(f"{owner.ws_url}/ws/relayed")
    rev = await _edit(first, (await first.join())["rev"], ["🎉 hello"], "a1")
    await _owner_recorded(prefix, "relayed")
    second = await ws_open(f"{other.ws_url}/ws/relayed")
    welcome = await second.join(user={"name": "Bea 🐝"})
    assert (welcome["rev"], welcome["text"]) == (rev, "🎉 hello")
    assert (await first.recv_type("join"))["user"]["name"] == "Bea 🐝"
    rev = await _edit(second, rev, [7, " 🌍 world"], "b1")
    m = await first.recv_type("op")
    assert (m["rev"], m["op"]) == (rev, [7, " 🌍 world"])
    rev = await _edit(first, rev, [15, "!"], "a2")
    m = await second.recv_type("op")
    assert (m["rev"], m["op"]) == (rev, [15, "!"])
    third = await ws_open(f"{other.ws_url}/ws/relayed")  # relayed over the same link
    assert (await third.join())["text"] == "🎉 hello 🌍 world!"
    rev = await _edit(third, rev, ["¡", 16], "c1")
    for client in (first, second):
        assert (await client.recv_type("op"))["rev"] == rev
    assert await metric(other, RELAYED) == 2
    assert await metric(owner, RELAYED_IN) == 2
    assert await metric(owner, "collab_guard_relay_links_total") == 1
    assert await metric(other, HANDED_OVER) == 0
    assert await metric(other, "collab_ops_applied_total") == 0
    assert await metric(other, "collab_remote_ops_total") == 0
    assert await metric(other, "collab_backplane_published_total") == 0
    # The client leaves: the owner sees it go.
    await second.close()
    assert (await first.recv_type("leave"))["type"] == "leave"


async def test_a_link_reaches_the_worker_that_owns_the_document_though_the_workers_share_an_address(
        group, tmp_path, ws_open):  # noqa: F811
    """Machine A runs ``collab serve --workers 2`` (one port, so one relay address for both workers);
    machine B one process. B relays each client to the worker that owns its document: a link lands on
    whichever worker the kernel picks, and is passed to the one it names."""
    relaying = {"COLLAB_RELAY_ADDRESS": "auto", "COLLAB_TRUSTED_PROXIES": "127.0.0.0/8"}
    g, base = await group(2, **relaying)
    a_ws = base.replace("http://", "ws://")
    owned: dict[str, tuple[str, object]] = {}  # a worker's id -> one of its documents, and a client of it
    for i in range(200):  # new documents on A until each worker owns one (the kernel spreads the connections)
        doc = f"worker-{i}"
        first = await ws_open(f"{a_ws}/ws/{doc}")
        await _edit(first, (await first.join())["rev"], [f"🧭 {i}"], f"a{i}")
        await _owner_recorded(g.prefix, doc)
        (owner,) = (await _serving(g.prefix, doc, 1)).values()  # the worker it reached owns it
        owned.setdefault(owner, (doc, first))
        if len(owned) == 2:
            break
    assert len(owned) == 2, "the kernel gave every connection to one worker"
    other = ServerProcess(str(tmp_path / "b"), env=dict(g.state_env, COLLAB_IDLE_UNLOAD_SECONDS="600", **relaying))
    await asyncio.to_thread(other.start)
    try:
        for owner, (doc, first) in owned.items():
            second = await ws_open(f"{other.ws_url}/ws/{doc}")
            welcome = await second.join()
            rev = await _edit(second, welcome["rev"], [len(welcome["text"]), " 🌍"], f"b-{doc}")
            assert (await first.recv_type("op"))["rev"] == rev
            serving = await _serving(g.prefix, doc, 2)
            assert set(serving.values()) == {owner}, f"{doc}'s clients are not all on its owner: {serving}"
        assert await metric(other, RELAYED) == 2
        assert await metric(other, "collab_remote_ops_total") == 0
        workers = SimpleNamespace(base_url=base)  # each worker's values reach /metrics within a second
        await asyncio.wait_for(_until(lambda: metric(workers, "collab_guard_relay_links_total"), 2), 30)
        assert await metric(workers, "collab_guard_relay_links_total") == 2  # one link to each worker
        # Links by hand, for each worker in turn: whichever worker the kernel gives one to, the named one
        # serves its streams (were they served where they landed, all eight would have to land right).
        port = int(base.rsplit(":", 1)[1])
        links = []
        try:
            for n in range(8):
                owner, (doc, _) = list(owned.items())[n % 2]
                links.append(link := await HandLink.open(port, process=owner))
                stream = await link.stream(1, doc)
                stream.send({"type": "join", "user": {"name": f"Hand {n} ✋"}})
                await stream.recv_type("welcome")
            for owner, (doc, _) in owned.items():
                serving = await _serving(g.prefix, doc, 6)
                assert set(serving.values()) == {owner}, f"{doc}'s clients are not all on its owner: {serving}"
        finally:
            for link in links:
                await link.close()
    finally:
        other.kill()


async def _until(read: Callable[[], Awaitable[float]], value: float) -> None:
    """Read until ``read`` gives at least ``value``."""
    while await read() < value:
        await asyncio.sleep(0.05)


async def test_a_client_not_behind_a_trusted_proxy_is_not_relayed(processes, ws_open):
    """The owner would not know such a client's address: it is served where it arrived (forwarded)."""
    owner, other, prefix = await processes(_relaying(trusted="10.255.255.1"))
    first = await ws_open(f"{owner.ws_url}/ws/direct")
    rev = await _edit(first, (await first.join())["rev"], ["🦊"], "a1")
    await _owner_recorded(prefix, "direct")
    second = await ws_open(f"{other.ws_url}/ws/direct")
    assert (await second.join())["text"] == "🦊"
    rev = await _edit(second, rev, [1, "🐇"], "b1")
    assert (await first.recv_type("op"))["rev"] == rev
    assert await metric(other, RELAYED) == 0
    assert await metric(other, "collab_backplane_published_total") > 0  # forwarded to the owner


@pytest.mark.parametrize("end", ["killed", "stopped"])
async def test_a_relayed_connection_ends_with_its_owner_and_the_next_is_served_where_it_arrives(
        processes, ws_open, end):
    """Killed (SIGKILL): the link ends with the owner's process. Stopped (SIGTERM): the owner tells
    its links before it closes its clients' connections, so that those clients, reconnecting, are
    served where they arrive rather than relayed to the process that is going away."""
    owner, other, prefix = await processes(_relaying())
    first = await ws_open(f"{owner.ws_url}/ws/orphan")
    await _edit(first, (await first.join())["rev"], ["🦄"], "a1")
    await _owner_recorded(prefix, "orphan")
    second = await ws_open(f"{other.ws_url}/ws/orphan")
    assert (await second.join())["text"] == "🦄"
    if end == "killed":
        owner.kill()
    else:
        owner.proc.terminate()
    with pytest.raises(Exception):  # the relayed connection ends with the owner
        while True:
            await second.recv(30)
    third = await ws_open(f"{other.ws_url}/ws/orphan")  # not relayed again: served here
    welcome = await third.join()
    assert welcome["text"] == "🦄"
    rev = welcome["rev"]
    for i in range(3):  # acknowledged once the lease of the owner is taken over
        rev = await _edit(third, rev, [i + 1, "!"], f"c{i}")
    assert rev == welcome["rev"] + 3
    assert await metric(other, RELAYED) == 1
    if end == "stopped":
        assert owner.proc.wait(30) in (0, -15)  # uvicorn ends with the signal it stopped for


@pytest.mark.parametrize("way", ["handed", "relayed"])
async def test_a_full_owner_s_new_clients_are_served_where_they_arrive_until_it_has_room(
        processes, tmp_path, ws_open, way):
    """A document's audience gathers on its owner only while the owner has room. From its crowded
    mark on (``max_connections`` less the reserve: 5 of 6 here) the other process serves the
    document's new clients itself, forwarding their edits; back under the mark, the owner takes them again."""
    handoff = tmp_path / "handoff"
    caps = iter(["6", "100"])  # the owner (started first), the other

    def env_of(p: ServerProcess) -> dict:
        routed = {"COLLAB_HANDOFF_DIR": str(handoff)} if way == "handed" else _relaying()(p)
        return dict(routed, COLLAB_MAX_CONNECTIONS=next(caps))

    handoff.mkdir()
    owner, other, prefix = await processes(env_of)
    counted = HANDED_OVER if way == "handed" else RELAYED

    async def owner_full() -> bool:
        if way == "handed":
            return any(handoff.glob("*.full"))
        return await metric(other, "collab_guard_full_owner_links") == 1

    first = await ws_open(f"{owner.ws_url}/ws/crowd")
    rev = await _edit(first, (await first.join())["rev"], ["🐝"], "a1")
    await _owner_recorded(prefix, "crowd")
    routed: list = []
    while not await owner_full():  # the owner says so before it answers the client that filled it
        assert len(routed) < 6, "the owner never said it was full"
        client = await ws_open(f"{other.ws_url}/ws/crowd")
        assert (await client.join())["text"] == "🐝"
        routed.append(client)
    assert routed and await metric(other, counted) == len(routed)
    spilled = await ws_open(f"{other.ws_url}/ws/crowd")
    welcome = await spilled.join()
    assert (welcome["rev"], welcome["text"]) == (rev, "🐝")
    assert await metric(other, counted) == len(routed)
    assert await metric(other, "collab_guard_spilled_connections_total") == 1
    rev = await _edit(spilled, rev, [1, " 🌍"], "s1")  # forwarded to the owner
    assert (await first.recv_type("op"))["rev"] == rev
    rev = await _edit(first, rev, [3, "!"], "a2")
    assert (await spilled.recv_type("op"))["rev"] == rev
    for client in routed:
        await client.close()
    for _ in range(600):  # the owner, back under its mark, says so
        if not await owner_full():
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("the owner never said it had room again")
    again = await ws_open(f"{other.ws_url}/ws/crowd")
    assert (await again.join())["text"] == "🐝 🌍!"
    assert await metric(other, counted) == len(routed) + 1
    assert await metric(other, "collab_guard_spilled_connections_total") == 1


async def test_a_relayed_client_that_never_reads_is_dropped_by_the_owner(processes, ws_open):
    """Back-pressure through the relay: the relaying process stops reading from the owner once its
    client does not read, so the owner's queue for that client fills and the owner drops it; the
    relaying process holds no more than its buffers meanwhile."""
    import psutil

    limits = {"COLLAB_CLIENT_QUEUE_BYTES": "1000000", "COLLAB_HISTORY_DEPTH": "20", "COLLAB_HANDSHAKE_TIMEOUT": "30"}
    for name in ("MSG_RATE", "BYTES_RATE", "ADDR_MSG_RATE", "ADDR_BYTES_RATE"):
        limits[f"COLLAB_{name}"] = "1e12"
    for name in ("MSG_BURST", "BYTES_BURST", "ADDR_MSG_BURST", "ADDR_BYTES_BURST"):
        limits[f"COLLAB_{name}"] = str(10**12)
    relaying = _relaying()
    owner, other, prefix = await processes(lambda p: dict(relaying(p), **limits))
    writer = await ws_open(f"{owner.ws_url}/ws/big")
    rev = (await writer.join())["rev"]
    rev = await _edit(writer, rev, ["🐢"], "w0")
    await _owner_recorded(prefix, "big")
    reader = await asyncio.create_subprocess_exec(sys.executable, "-c", NON_READER, str(other.port),
                                                  stdout=subprocess.PIPE)
    try:
        assert (await reader.stdout.readline()).strip() == b"joined"
        while await metric(owner, RELAYED_IN) < 1:  # the join went through the relay
            await asyncio.sleep(0.05)
        rss_start = psutil.Process(other.proc.pid).memory_info().rss
        chunk, length, i = "y" * 60_000, 1, 0
        while await metric(owner, "collab_guard_slow_client_drops_total") < 1:
            assert i < 2_000, "the owner never dropped the relayed client that does not read"
            rev = await _edit(writer, rev, [-length, chunk], f"w{i + 1}")
            length, i = len(chunk), i + 1
        growth = psutil.Process(other.proc.pid).memory_info().rss - rss_start
        assert growth < 12e6, f"the relaying process grew {growth / 1e6:.1f} MB"
        assert await metric(other, "collab_guard_slow_client_drops_total") == 0
    finally:
        reader.kill()
        await reader.wait()
