"""collab.connection and the limits of collab.transport, against the real app on real sockets.

A :class:`RawWS` is a WebSocket client on a bare socket that reads only when
told to: a client that never reads is a real slow reader, and frames can be
sent header first, cut short or fragmented, as a hostile client would.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import socket

import httpx
import pytest
import websockets

from collab import transport
from collab.app import create_app
from collab.config import Settings
from collab.metrics import COUNTERS
from collab.store.memory import MemoryStore
from conftest import http_get, metric

TEXT, BINARY, CONT, CLOSE, PING, PONG = 1, 2, 0, 8, 9, 10
#: Settings that keep the message limiters out of the way of a test about something else.
WIDE_OPEN = dict(msg_rate=100_000, msg_burst=100_000, bytes_rate=1e12, bytes_burst=10**12,
                 addr_msg_rate=100_000, addr_msg_burst=100_000, addr_bytes_rate=1e12, addr_bytes_burst=10**12)


def frame(opcode: int, payload: bytes = b"", fin: bool = True, declared: int | None = None) -> bytes:
    """A masked client frame; ``declared`` claims another payload length in the header."""
    n = len(payload) if declared is None else declared
    head = bytes([(0x80 if fin else 0) | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload  # a zero mask leaves the payload as is


class RawWS:
    """A WebSocket client on a bare non-blocking socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    @classmethod
    async def open(cls, port: int, path: str, rcvbuf: int | None = None) -> "RawWS":
        sock = socket.socket()
        if rcvbuf is not None:  # before connect, so the window is small from the start
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(sock, ("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        await loop.sock_sendall(sock, (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                                       f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                                       "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        ws = cls(sock)
        while b"\r\n\r\n" not in ws.buf:
            await ws._more()
        head, ws.buf = ws.buf.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101"), head
        return ws

    async def _more(self) -> None:
        data = await asyncio.get_running_loop().sock_recv(self.sock, 65536)
        if not data:
            raise EOFError
        self.buf += data

    async def _exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            await self._more()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    async def send(self, data: bytes) -> None:
        await asyncio.get_running_loop().sock_sendall(self.sock, data)

    async def text(self, msg: dict | str) -> None:
        await self.send(frame(TEXT, (msg if isinstance(msg, str) else json.dumps(msg)).encode()))

    async def read_frame(self) -> tuple[int, bytes]:
        b0, b1 = await self._exact(2)
        n = b1 & 0x7F
        if n == 126:
            n = int.from_bytes(await self._exact(2), "big")
        elif n == 127:
            n = int.from_bytes(await self._exact(8), "big")
        return b0 & 0x0F, await self._exact(n)

    async def recv(self, timeout: float = 10) -> dict:
        """The next text message, as JSON."""
        while True:
            opcode, payload = await asyncio.wait_for(self.read_frame(), timeout)
            if opcode == TEXT:
                return json.loads(payload)
            assert opcode != CLOSE, payload

    async def sync(self) -> None:
        """Ping and wait for the pong: the server has processed everything sent before."""
        await self.send(frame(PING, b"sync"))
        while (await asyncio.wait_for(self.read_frame(), 10))[0] != PONG:
            pass

    async def close_code(self, timeout: float = 10) -> int | None:
        """Read until the server's close frame (its code) or the end of the connection (``None``)."""
        async def until_close() -> int | None:
            try:
                while True:
                    opcode, payload = await self.read_frame()
                    if opcode == CLOSE:
                        return int.from_bytes(payload[:2], "big")
            except (EOFError, ConnectionError):
                return None

        return await asyncio.wait_for(until_close(), timeout)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
async def raw_open():
    opened: list[RawWS] = []

    async def open_(server, doc: str, **kwargs) -> RawWS:
        ws = await RawWS.open(server.settings.port, f"/ws/{doc}", **kwargs)
        opened.append(ws)
        return ws

    yield open_
    for ws in opened:
        ws.close()


async def until(condition, timeout: float = 15, what: str = "the condition") -> None:
    """Wait for ``condition()`` to hold, looking every few milliseconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def session_of(server, doc: str):
    """The server-side :class:`collab.connection.Session` of the one client joined to ``doc``."""
    peer = next(iter(server.hub.docs[doc].peers.values()))
    return peer.notify.__self__


# -- slow readers ---------------------------------------------------------------


async def test_a_client_that_stops_reading_is_dropped_and_its_slots_released(server_factory, ws_open, raw_open):
    server = await server_factory(client_queue_bytes=256 * 1024, **WIDE_OPEN)
    slow = await raw_open(server, "slow", rcvbuf=4096)
    await slow.text({"type": "join"})  # and never reads again, not even the welcome
    writer = await ws_open(server.ws("slow"))
    await writer.join()
    await until(lambda: len(server.hub.docs["slow"].peers) == 2, what="both clients joined")
    drops = COUNTERS.slow_client_drops
    held = await metric(server, "collab_guard_open_connections")  # the two clients and this request
    text = ""
    for i in range(1000):  # 64 KiB edits, each broadcast to the slow reader, until it is dropped
        new = f"{i:05d}" * 13107
        await writer.send({"type": "op", "rev": i, "op": [new, -len(text)] if text else [new], "id": f"w{i}"})
        assert (await writer.recv_type("ack"))["rev"] == i + 1
        text = new
        if COUNTERS.slow_client_drops > drops:
            break
    assert COUNTERS.slow_client_drops == drops + 1
    assert len(server.hub.docs["slow"].peers) == 1  # gone from presence
    assert await slow.close_code(timeout=30) in (1008, None)  # 1008 if it took it in time, else aborted
    # Its accept-time slot is back: only the writer and the metrics request remain.
    for _ in range(200):
        if await metric(server, "collab_guard_open_connections") == held - 1:
            break
        await asyncio.sleep(0.05)
    assert await metric(server, "collab_guard_open_connections") == held - 1
    await writer.send({"type": "op", "rev": i + 1, "op": ["still here ", len(text)], "id": "after"})
    assert (await writer.recv_type("ack"))["rev"] == i + 2


async def test_a_flooder_that_does_not_read_is_closed_without_waiting_for_it(server_factory, ws_open, raw_open):
    """Closing after a flood normally sends what was queued, then 1008; a client that reads
    nothing must not keep its connection by never taking them."""
    server = await server_factory(client_queue_bytes=1 << 30, msg_rate=5, msg_burst=5)
    flooder = await raw_open(server, "deaf", rcvbuf=4096)
    await flooder.text({"type": "join"})
    writer = await ws_open(server.ws("deaf"))
    await writer.join()
    await until(lambda: len(server.hub.docs["deaf"].peers) == 2, what="both clients joined")
    port = flooder.sock.getsockname()[1]
    session = next(s for s in (p.notify.__self__ for p in server.hub.docs["deaf"].peers.values())
                   if s.scope["client"][1] == port)
    text = ""
    for i in range(4):  # 4 MiB the flooder never reads: the server's writes to it stall
        new = f"{i:04d}" * (1 << 18)
        await writer.send({"type": "op", "rev": i, "op": [new, -len(text)] if text else [new], "id": f"w{i}"})
        assert (await writer.recv_type("ack", timeout=30))["rev"] == i + 1
        text = new
    await until(lambda: not session.direct.writable.is_set(), what="the writes to the flooder to stall")
    drops = COUNTERS.slow_client_drops
    await flooder.send(frame(TEXT, json.dumps({"type": "presence", "rev": 0, "cursor": None}).encode()) * 200)
    await until(lambda: session.direct.disconnected, timeout=30, what="the flooder's connection to be let go")
    assert COUNTERS.slow_client_drops == drops  # closed for flooding, not counted as a slow reader
    assert len(server.hub.docs["deaf"].peers) == 1


# -- incoming size and memory -----------------------------------------------------


async def test_an_oversized_frame_is_refused_from_its_header(server_factory, raw_open):
    server = await server_factory(max_message_bytes=64 * 1024)
    raw = await raw_open(server, "big")
    await raw.text({"type": "join"})
    assert (await raw.recv())["type"] == "welcome"
    await raw.send(frame(TEXT, b'{"type":', declared=1024 * 1024))  # the payload never comes
    assert await raw.close_code() == 1009


async def test_the_ceiling_is_exactly_max_message_bytes_fragments_included(server_factory, raw_open):
    limit = 64 * 1024
    server = await server_factory(max_message_bytes=limit)

    def op(op_id: str, size: int) -> bytes:
        head = json.dumps({"type": "op", "rev": 0, "op": ["x"], "id": op_id})[:-1]
        return (head + " " * (size - len(head) - 1) + "}").encode()

    fits = await raw_open(server, "exact")
    await fits.text({"type": "join"})
    await fits.recv()
    await fits.send(frame(TEXT, op("fits", limit)))
    assert (await fits.recv())["type"] == "ack"  # exactly the limit: taken
    over = await raw_open(server, "exact")
    await over.text({"type": "join"})
    await over.recv()
    await over.send(frame(TEXT, op("over", limit + 1)))
    assert await over.close_code() == 1009
    # Fragments count together: the second header takes the message past the limit.
    frag = await raw_open(server, "exact")
    await frag.text({"type": "join"})
    await frag.recv()
    await frag.send(frame(TEXT, b" " * (40 * 1024), fin=False))
    await frag.send(frame(CONT, b"", declared=40 * 1024))
    assert await frag.close_code() == 1009
    assert (await http_get(f"{server.base_url}/api/docs/exact/text")).text == "x"


async def test_a_client_still_uploading_an_oversized_message_reads_1009_not_a_reset(server_factory):
    server = await server_factory(max_message_bytes=64 * 1024)
    async with websockets.connect(server.ws("upload"), max_size=None) as ws:
        await ws.send(json.dumps({"type": "join"}))
        await ws.recv()
        await ws.send("x" * (4 * 1024 * 1024))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    assert closed.value.rcvd.reason == "message larger than 65536 bytes: split the edit"


async def test_large_messages_uploaded_together_are_read_a_little_per_turn_and_arrive_whole(server_factory, raw_open):
    server = await server_factory(**WIDE_OPEN)
    piece = "👋🏽 writes, 世界 reads. " * 20_000  # about 500 KiB of UTF-8
    writers = []
    for _ in range(6):
        raw = await raw_open(server, "uploads")
        await raw.text({"type": "join"})
        assert (await raw.recv())["type"] == "welcome"
        writers.append(raw)
    polite = await raw_open(server, "elsewhere")
    await polite.text({"type": "join"})
    await polite.recv()
    deferred = COUNTERS.deferred_reads

    def fragmented(i: int) -> bytes:
        body = json.dumps({"type": "op", "rev": 0, "op": [piece * 3], "id": f"big-{i}"}, ensure_ascii=False).encode()
        chunks = [body[k:k + 64 * 1024] for k in range(0, len(body), 64 * 1024)]
        return b"".join(frame(TEXT if k == 0 else CONT, c, fin=k == len(chunks) - 1) for k, c in enumerate(chunks))

    await asyncio.gather(*(raw.send(fragmented(i)) for i, raw in enumerate(writers)))
    await polite.text({"type": "op", "rev": 0, "op": ["🙂"], "id": "small"})
    assert (await polite.recv())["type"] == "ack"
    for raw in writers:  # every upload arrives whole, each acked once among the others' ops
        while (msg := await raw.recv())["type"] != "ack":
            assert msg["type"] in ("op", "join", "presence"), msg
    assert COUNTERS.deferred_reads > deferred  # six at once were more than a turn's allowance
    text = (await http_get(f"{server.base_url}/api/docs/uploads/text")).text
    assert text == piece * 18


async def test_unfinished_messages_share_one_budget(server_factory, raw_open):
    server = await server_factory(max_message_bytes=128 * 1024, incoming_bytes=256 * 1024)
    start = '{"type": "join"'.encode()
    holders = []
    for _ in range(2):  # two unfinished 100 KiB messages: 200 KiB held
        raw = await raw_open(server, "budget")
        await raw.send(frame(TEXT, start + b" " * (100 * 1024), fin=False))
        await raw.sync()
        holders.append(raw)
    third = await raw_open(server, "budget")
    await third.send(frame(TEXT, start + b" " * (100 * 1024), fin=False))
    assert await third.close_code() == 1013  # over the server's budget: try again later
    await holders[0].send(frame(CONT, b"}"))  # the others' messages go through
    assert (await holders[0].recv())["type"] == "welcome"


async def test_an_unfinished_message_has_a_deadline(server_factory, raw_open):
    server = await server_factory(message_timeout=0.5)
    raw = await raw_open(server, "late")
    await raw.send(frame(TEXT, b'{"type": "jo', fin=False))  # and the rest never comes
    assert await raw.close_code() == 1008


async def test_invalid_utf8_closes_1007_with_one_log_line(server_factory, raw_open, caplog):
    caplog.set_level(logging.INFO)
    server = await server_factory()
    before = await raw_open(server, "utf8")
    await before.send(frame(TEXT, b'{"type": "join", "x": "\xff"}'))  # taken by the session's task
    assert await before.close_code() == 1007
    joined = await raw_open(server, "utf8")
    await joined.text({"type": "join"})
    assert (await joined.recv())["type"] == "welcome"
    await joined.send(frame(TEXT, b"\xc3("))  # taken inline, in data_received
    assert await joined.close_code() == 1007
    lines = [r for r in caplog.records if "1007" in r.getMessage()]
    assert len(lines) == 2 and all(r.exc_info is None for r in lines), lines
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


async def test_the_byte_budget_counts_utf8_bytes(server_factory, ws_open):
    server = await server_factory(bytes_rate=1, bytes_burst=3000)
    a = await ws_open(server.ws("bytes"))
    await a.join()

    def op(rev: int, op_id: str) -> str:  # 400 emoji: 400 code points, 1,600 bytes
        return json.dumps({"type": "op", "rev": rev, "op": ([rev * 400] if rev else []) + ["😀" * 400], "id": op_id},
                          ensure_ascii=False)

    await a.send(op(0, "e1"))
    assert (await a.recv_type("ack"))["rev"] == 1
    await a.send(op(1, "e2"))  # counted in code points it would fit in the 3,000
    error = await a.recv_type("error")
    assert error["code"] == "rate_limited"


# -- the document's inbox and the cost of transforms ---------------------------------


class GatedStore(MemoryStore):
    """A memory store whose writes wait for :attr:`gate`: a disk that is slow for as long as a test says."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def append(self, *args, **kwargs) -> None:
        await self.gate.wait()
        await super().append(*args, **kwargs)


async def test_a_full_document_inbox_stops_reading_the_connection(server_factory, ws_open):
    store = GatedStore()
    server = await server_factory(app=create_app(Settings(doc_inbox_size=2), store))
    a = await ws_open(server.ws("inbox"))
    await a.join()
    store.gate.set()
    await a.send({"type": "op", "rev": 0, "op": ["a"], "id": "first"})
    await a.recv_type("ack")
    store.gate.clear()
    n = 30
    ops = [{"type": "op", "rev": 1 + i, "op": [1 + i, "b"], "id": f"o{i}"} for i in range(n)]
    a.conn.transport.write(b"".join(frame_for_client(json.dumps(o)) for o in ops))  # all in one write
    session = session_of(server, "inbox")
    doc = server.hub.docs["inbox"]
    await until(lambda: len(doc._inbox) >= 2 and not session.direct.transport.is_reading(),
                what="the inbox to fill and reading to pause")
    assert len(doc._inbox) == 2  # bounded: the rest waits unread or in the session
    store.gate.set()
    acks = [(await a.recv_type("ack"))["rev"] for _ in range(n)]
    assert acks == list(range(2, n + 2))
    assert session.direct.transport.is_reading()
    assert (await http_get(f"{server.base_url}/api/docs/inbox/text")).text == "a" + "b" * n


def frame_for_client(text: str) -> bytes:
    return frame(TEXT, text.encode())


async def test_an_op_transformed_against_old_history_costs_more_of_the_budget(server_factory, ws_open):
    server = await server_factory(app=create_app(Settings(msg_rate=0.01, msg_burst=12, addr_msg_rate=1000,
                                                          addr_msg_burst=1000), MemoryStore()))
    b = await ws_open(server.ws("old"))
    await b.join()  # 11 left
    async with httpx.AsyncClient(timeout=10) as client:
        for i in range(250):  # 250 revisions B has not seen: its next op is transformed against them all
            r = await client.put(f"{server.base_url}/api/docs/old/text", content=f"v{i}".encode())
            assert r.status_code == 200
    await b.send({"type": "op", "rev": 0, "op": ["x"], "id": "late"})  # 10 left
    assert (await b.recv_type("ack"))["rev"] == 251
    for _ in range(7):  # charged 250 / 50 = 5 on the next message: only 5 of these fit
        await b.send({"type": "presence", "rev": 251, "cursor": None})
    assert (await b.recv_type("error"))["code"] == "rate_limited"


# -- HTTP ---------------------------------------------------------------------------


async def _http(server, request: bytes, body_parts: list[bytes], src: str = "127.0.0.1") -> bytes:
    """Send ``request`` and ``body_parts``, then read the status line: the server must answer without the rest."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.settings.port, local_addr=(src, 0))
    try:
        writer.write(request)
        for part in body_parts:
            writer.write(part)
        await writer.drain()
        return await asyncio.wait_for(reader.readline(), 10)
    finally:
        writer.close()


async def test_a_body_over_the_limit_is_refused_before_it_is_read(server_factory):
    server = await server_factory(max_message_bytes=1000)
    head = b"PUT /api/docs/body/text HTTP/1.1\r\nHost: x\r\n"
    status = await _http(server, head + b"Content-Length: 500000000\r\n\r\n", [b"x" * 100], src="127.0.0.2")
    assert status.startswith(b"HTTP/1.1 413"), status
    # 500 MB announced is charged to its address as if read: that address backs off.
    try:
        status = await _http(server, head + b"Content-Length: 5\r\n\r\n", [b"hello"], src="127.0.0.2")
    except (ConnectionResetError, BrokenPipeError):  # refused at accept
        status = b""
    assert status == b"", status
    chunk = b"258\r\n" + b"y" * 600 + b"\r\n"  # 0x258 = 600 bytes; the terminating chunk never comes
    status = await _http(server, head + b"Transfer-Encoding: chunked\r\n\r\n", [chunk, chunk])
    assert status.startswith(b"HTTP/1.1 413"), status
    share = b"POST /api/docs/body/share HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
    assert (await _http(server, share, [])).startswith(b"HTTP/1.1 413")
    assert (await http_get(f"{server.base_url}/api/docs/body/text")).text == ""


async def test_healthz_reports_the_stores_problem(server):
    store = server.app.state.collab.store
    assert (await http_get(f"{server.base_url}/healthz")).status_code == 200
    store.health = lambda: "fsync failed: the disk reported an I/O error; restart after checking it"  # a sick disk
    r = await http_get(f"{server.base_url}/healthz")
    assert r.status_code == 503
    assert r.json() == {"status": "unavailable", "reason": store.health()}


# -- the start-up check ------------------------------------------------------------


async def test_a_missing_uvicorn_internal_falls_back_to_plain_asgi(server_factory, ws_open, monkeypatch, caplog):
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

    assert transport.support_problem() is None
    real_init = WebSocketsSansIOProtocol.__init__

    def init_like_an_older_uvicorn(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        del self.frames  # uvicorn < 0.53 has no such attribute

    monkeypatch.setattr(WebSocketsSansIOProtocol, "__init__", init_like_an_older_uvicorn)
    transport.support_problem.cache_clear()
    caplog.set_level(logging.WARNING)
    try:
        problem = transport.support_problem()
        assert problem is not None and "frames" in problem
        server = await server_factory()
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "plain ASGI" in r.getMessage()]
        assert len(warnings) == 1 and "frames" in warnings[0]
        a = await ws_open(server.ws("fallback"))
        await a.join()
        await a.send({"type": "op", "rev": 0, "op": ["plain 😀"], "id": "p"})
        assert (await a.recv_type("ack"))["rev"] == 1
        assert session_of(server, "fallback").direct is None  # no direct path
    finally:
        monkeypatch.undo()
        transport.support_problem.cache_clear()
    assert transport.support_problem() is None
