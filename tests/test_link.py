"""The owner's end of a relay link (:mod:`collab.link`), driven by hand against a real server process.

A link is what a relaying process opens to an owner's process: one TCP
connection, many relayed clients as streams of frames. Here the test is the
relaying process: it writes the frames itself (WebSocket handshakes and
messages made by websockets' sans-I/O client), reads the owner's back, and
chooses when to credit what it read. Needs ``COLLAB_TEST_DATABASE_URL`` and
``COLLAB_TEST_REDIS_URL`` (a relay address is only taken with Redis).
"""

from __future__ import annotations

import asyncio
import json
from typing import AsyncIterator, Callable

import pytest
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from collab.link import (CLOSE, CREDIT, DATA, HEADER, MAX_STREAM, OPEN, PREFACE_V1, READY, RESET, WINDOW, LinkError,
                         Preface, connect, next_stream, preface, read_preface)
from conftest import ServerProcess, http_get, metric
from test_scaleout import fresh_state

RELAY_LINKS = "collab_guard_relay_links_total"
RELAYED_IN = "collab_guard_relayed_in_connections_total"
ENDED = object()

#: Limits that let one client send and be sent as much as a test needs.
UNLIMITED = {f"COLLAB_{name}": "1e12" for name in ("MSG_RATE", "BYTES_RATE", "ADDR_MSG_RATE", "ADDR_BYTES_RATE")}
UNLIMITED.update({f"COLLAB_{name}": str(10**12) for name in ("MSG_BURST", "BYTES_BURST", "ADDR_MSG_BURST",
                                                               "ADDR_BYTES_BURST")})


class Stream:
    """One relayed client on a :class:`HandLink`: a sans-I/O WebSocket client and what arrived."""

    def __init__(self, link: "HandLink", sid: int, doc: str, credit: bool) -> None:
        self.link, self.sid, self.credit = link, sid, credit
        self.ws = ClientProtocol(parse_uri(f"ws://127.0.0.1/ws/{doc}"))
        self.events: asyncio.Queue = asyncio.Queue()
        self.received = 0
        self.ended: int | None = None

    def request(self) -> bytes:
        """The WebSocket handshake, marked as relayed (as a relaying process sends it)."""
        self.ws.send_request(self.ws.connect())
        return b"".join(self.ws.data_to_send()).replace(b"\r\n", b"\r\ncollab-relayed: 1\r\n", 1)

    def send(self, message: dict) -> None:
        self.ws.send_text(json.dumps(message).encode())
        self.link.frame(DATA, self.sid, b"".join(self.ws.data_to_send()))

    async def recv(self, timeout: float = 30) -> dict | object:
        """The next text message as a dict, or :data:`ENDED` once the owner ended the stream."""
        while True:
            event = await asyncio.wait_for(self.events.get(), timeout)
            if event is ENDED:
                return ENDED
            if isinstance(event, Frame) and event.opcode == Opcode.TEXT:
                return json.loads(event.data)

    async def recv_type(self, kind: str) -> dict:
        while (m := await self.recv()) is not ENDED:
            assert m["type"] != "error", m
            if m["type"] == kind:
                return m
        raise AssertionError(f"the stream ended before a {kind!r}")


class HandLink:
    """A relaying process's end of a link, by hand."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.streams: dict[int, Stream] = {}
        self.closed = asyncio.Event()
        self._task = asyncio.ensure_future(self._read())

    @classmethod
    async def open(cls, port: int, version: int = 2, process: str = "elsewhere") -> "HandLink":
        """A link to ``process`` at ``port``, once it answered (a process not on that machine: the one
        reached serves it); version 1 names no process and gets no answer."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        if version == 1:
            writer.write(PREFACE_V1)
        else:
            writer.write(preface(process))
            assert await asyncio.wait_for(reader.readexactly(len(READY)), 30) == READY
        return cls(reader, writer)

    def frame(self, kind: int, sid: int, payload: bytes = b"") -> None:
        self.writer.write(HEADER.pack(kind, sid, len(payload)) + payload)

    async def stream(self, sid: int, doc: str, credit: bool = True) -> Stream:
        """Open stream ``sid`` to ``doc``; returns once the owner accepted its WebSocket handshake."""
        stream = self.streams[sid] = Stream(self, sid, doc, credit)
        self.frame(OPEN, sid, stream.request())
        response = await asyncio.wait_for(stream.events.get(), 30)
        assert isinstance(response, Response) and response.status_code == 101, response
        return stream

    async def _read(self) -> None:
        try:
            while True:
                kind, sid, length = HEADER.unpack(await self.reader.readexactly(HEADER.size))
                if kind == CREDIT:
                    continue
                payload = await self.reader.readexactly(length)
                stream = self.streams.get(sid)
                assert stream is not None, f"a frame for stream {sid}, which was never opened"
                if kind == DATA:
                    stream.received += len(payload)
                    stream.ws.receive_data(payload)
                    for event in stream.ws.events_received():
                        stream.events.put_nowait(event)
                    if stream.credit:
                        self.writer.write(HEADER.pack(CREDIT, sid, length))
                elif kind in (CLOSE, RESET):
                    stream.ended = kind
                    stream.events.put_nowait(ENDED)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.closed.set()
            for stream in self.streams.values():
                stream.events.put_nowait(ENDED)

    async def close(self) -> None:
        self.writer.close()
        self._task.cancel()


async def _edit(ws, rev: int, op: list, op_id: str) -> int:
    """Send ``op`` at ``rev`` from a direct client; the revision of its ack."""
    await ws.send({"type": "op", "rev": rev, "op": op, "id": op_id})
    return (await ws.recv_type("ack", 30))["rev"]


@pytest.fixture
async def owner(tmp_path) -> AsyncIterator[Callable[..., ServerProcess]]:
    """``await owner(trusted=..., **env)``: one server process that takes relay links at its own port."""
    async with fresh_state("link") as state:
        procs: list[ServerProcess] = []

        async def start(trusted: str = "127.0.0.0/8", **env: str) -> ServerProcess:
            p = ServerProcess(str(tmp_path / "data"), env=dict(state.env, COLLAB_TRUSTED_PROXIES=trusted, **env))
            p.env["COLLAB_RELAY_ADDRESS"] = f"127.0.0.1:{p.port}"
            procs.append(p)
            return await asyncio.to_thread(p.start)

        try:
            yield start
        finally:
            for p in procs:
                p.kill()


@pytest.mark.parametrize("version", [2, 1])
async def test_the_streams_of_one_link_are_served_as_clients_of_their_own(owner, ws_open, version):
    """Version 1 (a relaying process of the first version: no answer to its preface) is served too."""
    server = await owner()
    direct = await ws_open(f"{server.ws_url}/ws/linked")
    rev = (await direct.join(user={"name": "Dee 🦉"}))["rev"]
    link = await HandLink.open(server.port, version)
    a = await link.stream(1, "linked")
    a.send({"type": "join", "user": {"name": "Ari 🐝"}})
    assert (await a.recv_type("welcome"))["rev"] == rev
    # The second stream's handshake arrives a byte at a time: frames split anywhere are put together.
    b = Stream(link, 2, "linked", credit=True)
    link.streams[2] = b
    request = b.request()
    for byte in HEADER.pack(OPEN, 2, len(request)) + request:
        link.writer.write(bytes([byte]))
        await link.writer.drain()
    assert (await b.events.get()).status_code == 101
    b.send({"type": "join", "user": {"name": "Bo 🐻"}})
    await b.recv_type("welcome")
    a.send({"type": "op", "rev": rev, "op": ["🎉 hi"], "id": "a1"})
    rev = (await a.recv_type("ack"))["rev"]
    for client in (b, direct):
        m = await client.recv_type("op")
        assert (m["rev"], m["op"]) == (rev, ["🎉 hi"])
    link.frame(DATA, 99, b"for a stream that is not there")  # ignored: it may have just ended
    b.send({"type": "op", "rev": rev, "op": [4, " 🌍"], "id": "b1"})
    rev = (await b.recv_type("ack"))["rev"]
    assert (await a.recv_type("op"))["op"] == [4, " 🌍"]
    assert (await direct.recv_type("op"))["rev"] == rev
    assert await metric(server, RELAY_LINKS) == 1
    assert await metric(server, RELAYED_IN) == 2
    # A stream the relaying process closes is a client that left.
    link.frame(CLOSE, 1)
    assert (await direct.recv_type("leave"))["type"] == "leave"
    assert (await http_get(f"{server.base_url}/api/docs/linked/text")).text == "🎉 hi 🌍"
    await link.close()


async def test_a_stream_that_is_not_read_does_not_hold_up_the_others(owner, ws_open):
    """Stream ``slow`` never credits what it is sent: the owner sends it one window and then holds
    the rest, as for a client that does not read, until it drops it; ``quick``, on the same link,
    gets every edit meanwhile."""
    server = await owner(COLLAB_CLIENT_QUEUE_BYTES="1000000", COLLAB_HISTORY_DEPTH="20", **UNLIMITED)
    writer = await ws_open(f"{server.ws_url}/ws/wide")
    rev = (await writer.join())["rev"]
    link = await HandLink.open(server.port)
    slow = await link.stream(1, "wide", credit=False)
    quick = await link.stream(2, "wide")
    for stream in (slow, quick):
        stream.send({"type": "join"})
        await stream.recv_type("welcome")
    chunk, length, i = "🐢" + "y" * 60_000, 0, 0
    while slow.ended is None:
        assert i < 200, "the owner never dropped the stream that is not read"
        rev = await _edit(writer, rev, [-length, chunk] if length else [chunk], f"w{i}")
        length, i = len(chunk), i + 1
        m = await quick.recv_type("op")
        assert m["rev"] == rev
    assert slow.received < WINDOW + 2 * 70_000, slow.received  # a window, and what was in flight
    assert await metric(server, "collab_guard_slow_client_drops_total") == 1
    rev = await _edit(writer, rev, [-length, "🐇"], "last")
    assert (await quick.recv_type("op"))["rev"] == rev
    assert not link.closed.is_set()
    await link.close()


@pytest.mark.parametrize("breach", ["unknown kind", "too long", "opened twice"])
async def test_a_frame_that_breaks_the_rules_ends_its_link_and_nothing_else(owner, ws_open, breach):
    server = await owner()
    direct = await ws_open(f"{server.ws_url}/ws/broken")
    rev = (await direct.join())["rev"]
    link = await HandLink.open(server.port)
    stream = await link.stream(1, "broken")
    stream.send({"type": "join", "user": {"name": "Eve 🦊"}})
    await stream.recv_type("welcome")
    await direct.recv_type("join")
    if breach == "unknown kind":
        link.frame(9, 1, b"?")
    elif breach == "too long":
        link.writer.write(HEADER.pack(DATA, 1, 1 << 30))
    else:
        link.frame(OPEN, 1, b"GET /ws/broken HTTP/1.1\r\n\r\n")
    await asyncio.wait_for(link.closed.wait(), 30)
    assert (await direct.recv_type("leave"))["type"] == "leave"  # its client left the document
    rev = await _edit(direct, rev, ["still 🆗"], "d1")
    other = await HandLink.open(server.port)  # the next link is served
    again = await other.stream(1, "broken")
    again.send({"type": "join"})
    assert (await again.recv_type("welcome"))["text"] == "still 🆗"
    await other.close()


async def test_a_link_from_an_address_that_is_not_trusted_is_plain_http(owner):
    """Only a trusted proxy may relay: from anywhere else the preface is a bad HTTP request."""
    server = await owner(trusted="10.255.255.1")
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(preface("elsewhere") + HEADER.pack(OPEN, 1, 0))
    answer = await asyncio.wait_for(reader.read(), 30)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:40]
    writer.close()
    assert await metric(server, RELAY_LINKS) == 0


@pytest.mark.parametrize("bad", [b"COLLAB-LINK/3 elsewhere\r\n", b"COLLAB-LINK/2 \r\n",
                                 b"COLLAB-LINK/2 not/an/id\r\n", b"COLLAB-LINK/2 " + b"x" * 200])
async def test_a_link_whose_preface_breaks_the_rules_is_refused(owner, ws_open, bad):
    server = await owner()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(bad)
    try:
        answer = await asyncio.wait_for(reader.read(), 30)
    except ConnectionError:
        answer = b""
    assert answer == b""  # aborted: no answer, no HTTP error page either
    writer.close()
    assert await metric(server, RELAY_LINKS) == 0
    ws = await ws_open(f"{server.ws_url}/ws/after-a-bad-link")  # the next client is served
    assert (await ws.join())["text"] == ""


async def test_a_process_that_answers_the_preface_otherwise_is_not_linked_to():
    """A process of the first version answers this version's preface as a bad HTTP request: the
    relaying process opens no link (its clients are served where they arrived)."""
    async def first_version(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n")
        writer.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
        await writer.drain()
        await reader.read()  # until the relaying process closes
        writer.close()

    server = await asyncio.start_server(first_version, "127.0.0.1", 0)
    try:
        assert await connect(server.sockets[0].getsockname()[:2], "0123abcd") is None
    finally:
        server.close()
        await server.wait_closed()


def test_a_preface_names_its_version_and_process():
    assert read_preface(preface("0123abcd") + b"more") == Preface(2, "0123abcd", len(preface("0123abcd")))
    assert read_preface(PREFACE_V1 + HEADER.pack(OPEN, 1, 0)) == Preface(1, None, len(PREFACE_V1))
    assert read_preface(b"GET / HTTP/1.1\r\n") is None
    for bad, why in ((b"COLLAB-LINK/2 abc", "no end"), (b"COLLAB-LINK/9 abc\r\n", "versions 1 and 2"),
                     (b"COLLAB-LINK/2 a b\r\n", "names no process")):
        with pytest.raises(LinkError, match=why):
            read_preface(bad)


def test_stream_ids_wrap_past_the_header_and_skip_the_open_ones():
    assert next_stream(0, {}) == 1
    assert next_stream(41, {42: None, 43: None}) == 44
    assert next_stream(MAX_STREAM - 1, {}) == MAX_STREAM
    assert next_stream(MAX_STREAM, {1: None, 2: None}) == 3  # never 0, never past what a header holds
    HEADER.pack(DATA, next_stream(MAX_STREAM - 1, {}), 0)
