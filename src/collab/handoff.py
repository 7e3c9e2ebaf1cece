"""Hand a new WebSocket connection to the process on this machine that orders its document.

Behind a balancer without affinity (workers sharing one port, or processes
on one machine behind a router) a document's clients land on different
processes, and every edit of a client that is not on the owner's process
is handled twice: received and forwarded here, ordered there, and its
result sent back over Redis. Processes on one machine can do better: the
one that accepts a connection reads its request line and, when it is
``GET /ws/{doc}`` and another process here owns ``doc``, passes the socket
itself (``SCM_RIGHTS`` over a Unix datagram socket), with the bytes already
read, to the owner. The owner serves it as if it had accepted it; the
client sees nothing. Every process that shares a directory
(``COLLAB_HANDOFF_DIR``; the workers of one ``collab serve --workers N`` do
by themselves) listens on ``{dir}/{process id}.sock``.

A connection is served where it arrived whenever handing it over is not
simple: no owner elsewhere, an owner with no socket in the directory (on
another machine), a send that fails (the owner died; its receive buffer is
full), a request line that did not come whole in the first read, or a
first read larger than :data:`MAX_HANDED_BYTES`. Forwarding then does what
it did before. A handed connection is never handed again.

Processes on other machines cannot take a socket, but they can take its
bytes: a process that says where the others reach it
(``COLLAB_RELAY_ADDRESS``, kept in its heartbeat record in Redis) is
*relayed* the connections to the documents it owns. The process that
accepted such a connection sends what it read (with a ``collab-relayed``
header after the request line, so that the owner never routes it again)
over its link to the owner (:mod:`collab.link`: one TCP connection between
the two processes carries all the connections one relays to the other) and
from then on only copies bytes both ways, with back-pressure: the owner
parses, orders and answers every message, and the relaying process no
longer decodes any. Only connections that came through a trusted proxy are
relayed (their ``X-Forwarded-For`` names the client to the owner, which
must trust the relaying process in turn); when the owner does not accept
the link within :data:`collab.link.CONNECT_WAIT` the connection is served
where it arrived, and when either end closes, so does the other (the
client reconnects, as after any dropped connection). Processes on one
machine that share a port share a relay address: a link names the process
it is for, and the one that accepts it hands it (socket and all, as a
connection) to that process when it is another one here.

This module holds the socket work and the request-line parsing; the guard
(:mod:`collab.guard`) decides when to ask, and the server
(:mod:`collab.server`) wires the owner lookup and the receiving side.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import logging
import os
import socket
from dataclasses import dataclass
from typing import Awaitable, Callable
from urllib.parse import unquote

from .link import OwnerLink, RelayLink, RelayStream, connect
from .metrics import COUNTERS, track
from .protocol import valid_doc_name

log = logging.getLogger("collab.handoff")

#: The most bytes of a connection's first read that are handed over with it (more: served where it arrived).
MAX_HANDED_BYTES = 16 * 1024

#: Receive buffer of each process's hand-off socket: room for many connections handed at once.
RECEIVE_BUFFER = 4 * 1024 * 1024

#: Connections one receive callback takes at most, so a burst of hand-overs is spread over loop turns.
RECEIVE_PER_TURN = 64

#: Seconds a hand-over waits for room in the receiver's queue before the connection is served here.
SEND_WAIT = 1.0

#: Owners' relay addresses remembered (a process's address does not change while its id lives).
ADDRESSES_KEPT = 4096

#: The header a relaying process puts after the request line: the owner does not route the connection again.
RELAYED_HEADER = b"collab-relayed: 1\r\n"

_PREFIX = b"GET /ws/"


@dataclass(frozen=True)
class Destination:
    """Where a new connection goes: a process on this machine (``path``, its hand-over socket) or a
    process elsewhere that takes relayed connections (``address``, host and port, and its ``process`` id:
    processes that share a port share an address)."""

    path: str | None = None
    address: tuple[str, int] | None = None
    process: str | None = None


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` or ``[ipv6]:port`` as host and port; ``ValueError`` with what is wrong otherwise."""
    host, sep, port = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{address!r} is not host:port (for example 10.0.0.5:8000 or [fd00::5]:8000)")
    return host, int(port)


def relayed(data: bytes) -> bool:
    """Whether a first read is of a connection another process relayed here (its header follows the request line)."""
    end = data.find(b"\r\n", 0, MAX_HANDED_BYTES)
    return end >= 0 and data.startswith(RELAYED_HEADER, end + 2)


def mark_relayed(data: bytes) -> bytes:
    """A first read with :data:`RELAYED_HEADER` put after its (whole) request line."""
    end = data.index(b"\r\n") + 2
    return data[:end] + RELAYED_HEADER + data[end:]


def ws_document(data: bytes) -> str | None:
    """The document of a first read that begins a ``GET /ws/{doc}`` request, if its request line is whole."""
    if not data.startswith(_PREFIX):
        return None
    end = data.find(b"\r\n", 0, MAX_HANDED_BYTES)
    if end < 0:
        return None
    target = data[len(_PREFIX):end].rsplit(b" ", 1)[0]
    path = target.split(b"?", 1)[0]
    try:
        doc = unquote(path.decode("ascii"), errors="strict")
    except (UnicodeDecodeError, ValueError):
        return None
    return doc if valid_doc_name(doc) else None


class HandOff:
    """One process's end of the hand-over: where a new connection goes (a process here, or one
    elsewhere that takes relayed connections), and receiving the connections handed to this one.

    ``directory``: the hand-over directory shared with the processes on this
    machine ("": none). :meth:`start` (called by the server once the hub
    runs) gives the lookups: ``owner_elsewhere(doc)`` answers the process id
    of the document's owner when that is another process, else ``None``;
    ``address_of(process_id)`` answers where that process takes relayed
    connections, if it does. ``accept(sock, data)`` serves a connection
    handed to this process, ``data`` being what its first process had read of it.
    """

    def __init__(self, directory: str = "") -> None:
        self.directory = directory
        self.process_id: str | None = None
        self.owner_elsewhere: Callable[[str], Awaitable[str | None]] | None = None
        self.address_of: Callable[[str], Awaitable[str | None]] | None = None
        self._addresses: dict[str, tuple[str, int] | None] = {}
        self._sock: socket.socket | None = None
        #: A socket connected to each process handed a connection so far, by its path.
        self._out: dict[str, socket.socket] = {}
        self._sending: dict[str, asyncio.Lock] = {}
        self._accept: Callable[[socket.socket, bytes], None] | None = None
        #: This process's links to the processes it relays connections to, by process id (processes
        #: that share a port share an address), and those being opened.
        self._links: dict[str, RelayLink] = {}
        self._linking: dict[str, asyncio.Future[RelayLink | None]] = {}
        #: What serves the connections other processes relay here (set when this process takes them).
        self.stream_factory: Callable[[], asyncio.Protocol] | None = None
        #: The links other processes opened to this one.
        self.owner_links: set[OwnerLink] = set()
        #: Whether this process is stopping (:meth:`close`): a link opened from now on is told at once.
        self.closing = False
        #: Whether this process holds so many connections that the others serve its documents' new
        #: clients where those arrive (:meth:`set_crowded`); a link opened meanwhile is told at once.
        self.crowded = False
        track(self)

    def path(self, process_id: str) -> str:
        return os.path.join(self.directory, f"{process_id}.sock")

    def full_mark(self, process_id: str) -> str:
        """A file beside ``process_id``'s socket while that process is crowded (:meth:`set_crowded`)."""
        return os.path.join(self.directory, f"{process_id}.full")

    def set_crowded(self, crowded: bool) -> None:
        """Whether the other processes should stop passing or relaying connections here: this one
        nears its connection cap, so a document's audience spreads over the cluster rather than
        being refused by its owner (the clients served elsewhere have their edits forwarded here)."""
        if crowded == self.crowded:
            return
        self.crowded = crowded
        log.warning("%s: the other processes serve this one's documents' new clients where they arrive",
                    "this process is nearly full" if crowded else "this process has room again; it takes them back")
        for link in list(self.owner_links):
            link.set_full(crowded)
        if self._sock is not None and self.process_id is not None:
            mark = self.full_mark(self.process_id)
            try:
                if crowded:
                    open(mark, "wb").close()
                else:
                    os.unlink(mark)
            except OSError as exc:
                log.warning("could not %s %s (%s)", "create" if crowded else "remove", mark, exc)

    def gauges(self) -> dict[str, int]:
        """``crowded`` (0 or 1), and ``full_owner_links``: links to processes that said they are full."""
        return {"crowded": int(self.crowded),
                "full_owner_links": sum(1 for link in self._links.values() if link.full and not link.closed)}

    def start(self, process_id: str, owner_elsewhere: Callable[[str], Awaitable[str | None]],
              address_of: Callable[[str], Awaitable[str | None]] | None = None) -> None:
        """Route new connections from now on: ``process_id`` is this process's, the lookups are the hub's."""
        self.process_id, self.owner_elsewhere, self.address_of = process_id, owner_elsewhere, address_of

    @property
    def active(self) -> bool:
        """Whether new connections are looked at for a hand-over or a relay (the lookups are set)."""
        return self.owner_elsewhere is not None

    @property
    def listening(self) -> bool:
        return self._sock is not None

    def listen(self, process_id: str, accept: Callable[[socket.socket, bytes], None]) -> None:
        """Bind ``{dir}/{process_id}.sock`` and call ``accept`` for each connection handed here."""
        path = self.path(process_id)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            sock.bind(path)
            sock.setblocking(False)
            asyncio.get_running_loop().add_reader(sock.fileno(), self._readable)
        except BaseException:
            sock.close()
            raise
        self._sock, self._accept, self.process_id = sock, accept, process_id

    def close(self) -> None:
        """Stop receiving, and remove this process's socket from the directory; end the links to
        other processes (their clients here reconnect), and tell those linked here to open no more."""
        self.closing = True
        for out in self._out.values():
            out.close()
        self._out.clear()
        for link in self._links.values():
            link.close()
        self._links.clear()
        for owner_link in list(self.owner_links):  # before uvicorn closes their streams: in that order
            owner_link.drain()
        sock, self._sock = self._sock, None
        if sock is None:
            return
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(sock.fileno())
        sock.close()
        if self.process_id is not None:
            for path in (self.path(self.process_id), self.full_mark(self.process_id)):
                with contextlib.suppress(OSError):
                    os.unlink(path)

    async def destination(self, doc: str, relay: bool = False) -> Destination | None:
        """Where to hand (or, if ``relay``, relay) a connection to ``doc``, or ``None`` to serve it here."""
        lookup = self.owner_elsewhere
        if lookup is None or (self._sock is None and not (relay and self.address_of)):
            return None
        try:
            owner = await lookup(doc)
            if owner is None or owner == self.process_id:
                return None
            path = self.local_path(owner)
            if path is not None:
                if os.path.exists(self.full_mark(owner)):
                    COUNTERS.spilled_connections += 1
                    return None
                return Destination(path=path)
            address = await self._address(owner) if relay else None
        except Exception as exc:  # served here, which is correct
            log.warning("finding the owner of %s for a new connection failed: %s", doc, exc)
            return None
        return Destination(address=address, process=owner) if address is not None else None

    def local_path(self, process_id: str) -> str | None:
        """The hand-over socket of ``process_id`` if that is another process on this machine, else ``None``."""
        if self._sock is None or process_id == self.process_id:
            return None
        path = self.path(process_id)
        return path if os.path.exists(path) else None

    async def _address(self, process_id: str) -> tuple[str, int] | None:
        """Where ``process_id`` takes relayed connections (``None``: it does not, or it is gone)."""
        if process_id in self._addresses:
            return self._addresses[process_id]
        found = await self.address_of(process_id) if self.address_of is not None else None
        try:
            address = split_address(found) if found else None
        except ValueError:
            address = None
        if found is not None:  # a live process's answer stays true; a gone one is asked again (not kept)
            if len(self._addresses) >= ADDRESSES_KEPT:
                self._addresses.clear()
            self._addresses[process_id] = address
        return address

    async def relay(self, address: tuple[str, int], process_id: str, client: asyncio.Transport,
                    data: bytes) -> RelayStream | None:
        """Relay ``client``'s connection, of which ``data`` was read, to the process ``process_id`` at
        ``address`` over this process's link to it (opened if need be); ``None``: served here."""
        link = self._links.get(process_id)
        if link is None or link.closed or link.draining:
            pending = self._linking.get(process_id)
            if pending is None:  # one connect per process, however many clients wait for it
                pending = self._linking[process_id] = asyncio.ensure_future(connect(address, process_id))
                pending.add_done_callback(lambda _: self._linking.pop(process_id, None))
            link = await asyncio.shield(pending)
            if link is None or link.closed or link.draining:
                return None
            for gone in [k for k, old in self._links.items() if old.closed]:  # links to processes since gone
                del self._links[gone]
            self._links[process_id] = link
        if link.full:
            COUNTERS.spilled_connections += 1
            return None
        return link.open(client, mark_relayed(data))

    async def send(self, path: str, fd: int, data: bytes) -> bool:
        """Pass the socket ``fd`` and ``data`` to the process at ``path``; whether it went.

        Each destination has a connected socket of its own, so that a full queue at the receiver
        (a burst of connections; Linux queues few datagrams per socket) is waited out, for at most
        :data:`SEND_WAIT` seconds, rather than taken for a dead process."""
        if self._sock is None or len(data) > MAX_HANDED_BYTES:  # the receiver reads at most that much
            return False
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SEND_WAIT
        lock = self._sending.setdefault(path, asyncio.Lock())  # one waiter per destination, the rest in turn
        try:
            if lock.locked():
                await asyncio.wait_for(lock.acquire(), SEND_WAIT)
            else:
                await lock.acquire()  # at once
        except asyncio.TimeoutError:
            log.info("could not hand a connection to %s (its queue stayed full); serving it here", path)
            return False
        try:
            return await self._send(path, rights, data, deadline)
        finally:
            lock.release()

    async def _send(self, path: str, rights: list, data: bytes, deadline: float) -> bool:
        loop = asyncio.get_running_loop()
        try:
            out = self._out.get(path)
            if out is None:
                out = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                out.setblocking(False)
                try:
                    out.connect(path)
                except OSError:
                    out.close()
                    raise
                self._out[path] = out
            while True:
                try:
                    out.sendmsg([data], rights)
                    return True
                except BlockingIOError:
                    if loop.time() >= deadline:
                        raise
                    await _writable(loop, out, deadline - loop.time())
        except OSError as exc:  # the owner died, or is swamped: served here
            if not isinstance(exc, BlockingIOError) and path in self._out:  # dead: connect anew next time
                self._out.pop(path).close()
            log.info("could not hand a connection to %s (%s); serving it here", path, exc)
            return False

    def _readable(self) -> None:
        sock, accept = self._sock, self._accept
        if sock is None or accept is None:
            return
        for _ in range(RECEIVE_PER_TURN):
            try:
                data, fds, flags, _addr = socket.recv_fds(sock, MAX_HANDED_BYTES, 4)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("receiving a handed connection failed: %s", exc)
                return
            if len(fds) != 1 or flags & socket.MSG_TRUNC:  # not from a collab process, or cut: nothing to serve
                for fd in fds:
                    os.close(fd)
                continue
            try:
                conn = socket.socket(fileno=fds[0])
            except OSError:
                os.close(fds[0])
                continue
            if conn.type != socket.SOCK_STREAM:
                conn.close()
                continue
            conn.setblocking(False)
            accept(conn, data)



async def _writable(loop: asyncio.AbstractEventLoop, sock: socket.socket, timeout: float) -> None:
    """Wait until ``sock`` may be written (its peer's queue has room), or ``timeout`` seconds."""
    ready = loop.create_future()
    loop.add_writer(sock.fileno(), lambda: ready.done() or ready.set_result(None))
    try:
        await asyncio.wait_for(ready, max(timeout, 0.0))
    except asyncio.TimeoutError:
        pass
    finally:
        loop.remove_writer(sock.fileno())
