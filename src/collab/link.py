"""Relayed connections between two processes, many over one TCP connection (a *link*).

A process that accepts a WebSocket connection to a document ordered by a
process on another machine relays it there (:mod:`collab.handoff`). Given
a TCP connection of its own, each relayed connection would cost every
message a read and a write more in each process than if the client had
reached the owner directly. A link carries all the connections one process
relays to another: what one loop turn has for the other side leaves in one
write and arrives in one read, so that a relayed message costs little more
than a message the owner receives itself. The relaying process still reads
and writes each client's socket, and never decodes a WebSocket frame.

The relaying process opens the link with a preface naming the process it
is for (:func:`preface`: ``COLLAB-LINK/2 {process id}``, a line). Processes
on one machine that share a port (the workers of ``collab serve --workers
N``) share one address, so the link may reach another of them, which
hands it to the one named (:mod:`collab.handoff`). That process answers
with :data:`READY`, and the relaying process opens streams only then: a
process that does not take links of this version answers something else,
and the relaying process serves its clients itself. (A relaying process of
the first version sends :data:`PREFACE_V1` and expects no answer; the link
then has no ``FULL`` / ``ROOM``, which that version does not know.) Then
frames, both ways: a header (:data:`HEADER`: kind, stream, length) and
``length`` bytes:

* ``OPEN`` (relaying to owning process): a new stream, with the client's
  first read; the owner serves it as a connection of its own from the
  relaying process's address (which it must trust as a proxy);
* ``DATA``: bytes of the stream, either way;
* ``CLOSE`` / ``RESET``: the sender's end of the stream closed (what it
  wrote still goes out) or was aborted; the receiver ends its side too;
* ``CREDIT`` (no payload; ``length`` is a byte count): the receiver took
  that many bytes of the stream off the link;
* ``GOAWAY`` (owning to relaying process, stream 0): the owner is stopping;
  open no more streams on this link (those open go on until they close).
* ``FULL`` / ``ROOM`` (owning to relaying process, stream 0): the owner holds
  nearly as many connections as it may: serve new clients where they arrive
  (its documents' edits are forwarded to it) / it has room again.

Each side of a stream may have :data:`WINDOW` bytes sent and not yet
credited, like an HTTP/2 window (a write is never refused, but once a side
is past it, its source pauses): the owner's protocol is told to pause
writing (a client that does not read is then dropped by the owner as
if it were connected directly) and the relaying process stops reading the
client. One stream that is not read therefore never holds up the others on
its link. A frame that breaks these rules ends the link, and with it its
streams (their clients reconnect, as after any dropped connection).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import struct
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

log = logging.getLogger("collab.link")

#: What a relaying process of the first version wrote first on a link (named no process, expected no answer).
PREFACE_V1 = b"COLLAB-LINK/1\r\n"

#: How a link's preface begins (the owner's guard tells a link from HTTP by it).
PREFACE_START = b"COLLAB-LINK/"

#: The owner's answer to a preface of this version: streams may be opened.
READY = b"COLLAB-LINK/2 ready\r\n"

#: The longest preface line taken (a process id is short).
MAX_PREFACE = 128

_PROCESS_ID = re.compile(rb"[A-Za-z0-9_-]{1,64}")


class LinkError(Exception):
    """A preface or frame that breaks the link's rules: the link ends."""


def preface(process_id: str) -> bytes:
    """What a relaying process writes first on a link to the process ``process_id``."""
    return b"COLLAB-LINK/2 " + process_id.encode("ascii") + b"\r\n"


@dataclass(frozen=True)
class Preface:
    """A link's preface, read: its ``version`` (1 or 2), the process it is for (``None`` in version 1),
    and its ``size`` in bytes (the frames follow)."""

    version: int
    process: str | None
    size: int


def read_preface(data: bytes) -> Preface | None:
    """The preface ``data`` begins with, or ``None`` when ``data`` is not a link's (plain HTTP, say);
    :class:`LinkError` for one that begins as a link's and breaks the rules (or is not whole)."""
    if not data.startswith(PREFACE_START):
        return None
    if data.startswith(PREFACE_V1):
        return Preface(1, None, len(PREFACE_V1))
    end = data.find(b"\r\n", 0, MAX_PREFACE)
    if end < 0:
        raise LinkError(f"a preface with no end in its first {MAX_PREFACE} bytes")
    version, _, process = data[len(PREFACE_START):end].partition(b" ")
    if version != b"2":
        raise LinkError(f"a link of version {version[:16]!r}; this process takes versions 1 and 2")
    if not _PROCESS_ID.fullmatch(process):
        raise LinkError(f"a preface that names no process: {process[:64]!r}")
    return Preface(2, process.decode("ascii"), end + 2)

#: A frame's header: kind, stream id, length (of the payload; of the credit for ``CREDIT``).
HEADER = struct.Struct("!BII")

OPEN, DATA, CLOSE, RESET, CREDIT, GOAWAY, FULL, ROOM = 1, 2, 3, 4, 5, 6, 7, 8

#: The largest payload of one frame (a longer write is sent in several).
MAX_FRAME = 1024 * 1024

#: Bytes of one stream, in each direction, sent and not yet credited by the other side.
WINDOW = 256 * 1024

#: Bytes taken off the link that a side credits back at once (fewer wait for more, or for a resume).
CREDIT_STEP = WINDOW // 4

#: Seconds a relaying process waits for the owner's process to accept a link.
CONNECT_WAIT = 1.0

#: Peer ports given to streams (an owner's guard and uvicorn key connections by address; no socket has these).
_STREAM_PORTS = itertools.count(65536)


#: The largest stream id (a header's u32); ids start again at 1 after it.
MAX_STREAM = 2**32 - 1


def next_stream(last: int, in_use: Any) -> int:
    """The stream id after ``last`` that no open stream holds: ids wrap past :data:`MAX_STREAM`, 0 is never one."""
    stream = last
    while True:
        stream = stream % MAX_STREAM + 1
        if stream not in in_use:
            return stream


class _Frames:
    """What both ends of a link share: frames out, written once per loop turn; frames in, parsed."""

    def __init__(self) -> None:
        self.transport: Any = None
        self.streams: dict[int, Any] = {}
        #: Whether the link's own transport holds too much output (every stream then pauses).
        self.write_paused = False
        self.closed = False
        #: Whether the owner is stopping (it said so with ``GOAWAY``): no new streams on this link.
        self.draining = False
        #: Whether the owner is full (it said so with ``FULL``, not yet ``ROOM``): no new streams for now.
        self.full = False
        #: Who is at the other end, for the log.
        self.peer = "the other process"
        self.loop: asyncio.AbstractEventLoop | None = None
        self._out: list[bytes] = []
        self._partial = b""

    def send(self, kind: int, stream: int, payload: bytes = b"") -> None:
        """Queue a frame; the frames of one loop turn go out together."""
        self._queue(HEADER.pack(kind, stream, len(payload)), payload)

    def credit(self, stream: int, nbytes: int) -> None:
        """Queue a ``CREDIT`` of ``nbytes`` taken off the link for ``stream``."""
        self._queue(HEADER.pack(CREDIT, stream, nbytes), b"")

    def _queue(self, header: bytes, payload: bytes) -> None:
        out = self._out
        if not out:
            self.loop.call_soon(self._flush)  # type: ignore[union-attr]
        out.append(header)
        if payload:
            out.append(payload)

    def send_data(self, stream: int, data: bytes) -> None:
        if len(data) <= MAX_FRAME:
            self.send(DATA, stream, data)
            return
        view = memoryview(data)
        for start in range(0, len(data), MAX_FRAME):
            self.send(DATA, stream, bytes(view[start:start + MAX_FRAME]))

    def _flush(self) -> None:
        out, self._out = self._out, []
        transport = self.transport
        if out and not self.closed and not transport.is_closing():
            transport.writelines(out)

    def output_paused(self, paused: bool) -> None:
        """Whether the link's own transport holds too much output: each stream pauses its source, or may resume."""
        self.write_paused = paused
        for stream in list(self.streams.values()):
            stream.check_pause()

    def frames(self, data: bytes) -> None:
        """Parse what arrived and act on each whole frame; a partial one waits for the rest."""
        if self._partial:
            data, self._partial = self._partial + data, b""
        end, pos = len(data), 0
        unpack = HEADER.unpack_from
        while end - pos >= 9:
            kind, stream, length = unpack(data, pos)
            if kind == CREDIT:
                pos += 9
                target = self.streams.get(stream)
                if target is not None:
                    target.credited(length)
                continue
            if length > MAX_FRAME:
                raise LinkError(f"a frame of {length} bytes (at most {MAX_FRAME})")
            stop = pos + 9 + length
            if stop > end:
                break
            self.frame(kind, stream, data[pos + 9:stop])
            pos = stop
        if pos < end:
            self._partial = data[pos:]

    def feed(self, data: bytes) -> None:
        """Bytes from the other process; a frame that breaks the rules ends the link."""
        try:
            self.frames(data)
        except LinkError as exc:
            log.warning("ending the link with %s: %s", self.peer, exc)
            self.transport.abort()

    def frame(self, kind: int, stream: int, payload: bytes) -> None:
        if kind == DATA:
            target = self.streams.get(stream)
            if target is not None:  # else it ended here, and the other side has not heard yet
                target.received(payload)
        elif kind in (CLOSE, RESET):
            target = self.streams.pop(stream, None)
            if target is not None:
                target.peer_ended(kind == RESET)
        else:
            self.control(kind, stream, payload)

    def control(self, kind: int, stream: int, payload: bytes) -> None:  # pragma: no cover - each end has its own
        raise NotImplementedError

    def end(self, stream: int, kind: int) -> None:
        """A stream ended at this side (``CLOSE``, or ``RESET`` if aborted): tell the other."""
        if self.streams.pop(stream, None) is not None and not self.closed:
            self.send(kind, stream)

    def ended(self, exc: Exception | None) -> None:
        """The link's connection ended: so do its streams, as if aborted."""
        self.closed = True
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            stream.peer_ended(True, exc)


# -- the owner's end ---------------------------------------------------------------

class StreamTransport(asyncio.Transport):
    """One relayed connection as the owner's protocols see it: an asyncio transport whose bytes
    travel as frames of the link it came on."""

    def __init__(self, link: "OwnerLink", stream: int, peername: tuple[str, int], sockname: Any) -> None:
        super().__init__({"peername": peername, "sockname": sockname})
        self._link, self._stream = link, stream
        self._protocol: Any = None
        self._closing = False
        self._lost = False
        self._reading_paused = False
        self._inbox: deque[bytes] = deque()
        self._delivering = False
        self._consumed = 0
        #: Bytes written and not yet credited by the relaying process, and the limits on them.
        self._unacked = 0
        self._high, self._low = WINDOW, WINDOW // 2
        self._writing_paused = False

    # -- asyncio.Transport -------------------------------------------------------
    def get_protocol(self) -> Any:
        return self._protocol

    def set_protocol(self, protocol: Any) -> None:
        self._protocol = protocol

    def is_closing(self) -> bool:
        return self._closing

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or not data:
            return
        data = bytes(data) if not isinstance(data, bytes) else data
        self._link.send_data(self._stream, data)
        self._unacked += len(data)
        self.check_pause()

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def can_write_eof(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return self._unacked

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low, self._high

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        high = WINDOW if high is None else min(high, WINDOW)
        self._high, self._low = high, high // 2 if low is None else min(low, high)
        self.check_pause()

    def is_reading(self) -> bool:
        return not self._reading_paused and not self._closing

    def pause_reading(self) -> None:
        self._reading_paused = True

    def resume_reading(self) -> None:
        if not self._reading_paused:
            return
        self._reading_paused = False
        if self._inbox and not self._delivering:
            self._delivering = True
            self._link.loop.call_soon(self._deliver)  # type: ignore[union-attr]  # as a socket's next read would

    def close(self) -> None:
        self._end(CLOSE)

    def abort(self) -> None:
        self._end(RESET)

    # -- what the link calls -----------------------------------------------------
    def received(self, data: bytes) -> None:
        if self._closing:
            return
        if self._reading_paused or self._inbox:
            self._inbox.append(data)
            return
        self._protocol.data_received(data)
        self._taken(len(data))

    def credited(self, nbytes: int) -> None:
        self._unacked = max(self._unacked - nbytes, 0)
        self.check_pause()

    def peer_ended(self, reset: bool, exc: Exception | None = None) -> None:
        """The relaying process's end closed or was aborted (its client left), or the link is gone."""
        if self._closing:
            return
        self._closing = True
        self._inbox.clear()
        self._lose(exc)

    def check_pause(self) -> None:
        pause = self._unacked > self._high or self._link.write_paused
        if pause and not self._writing_paused:
            self._writing_paused = True
            self._protocol.pause_writing()
        elif not pause and self._writing_paused and self._unacked <= self._low:
            self._writing_paused = False
            self._protocol.resume_writing()

    def _taken(self, nbytes: int) -> None:
        self._consumed += nbytes
        if self._consumed >= CREDIT_STEP:
            self._link.credit(self._stream, self._consumed)
            self._consumed = 0

    def _deliver(self) -> None:
        self._delivering = False
        inbox = self._inbox
        while inbox and not self._reading_paused and not self._closing:
            data = inbox.popleft()
            self._protocol.data_received(data)
            self._taken(len(data))

    def _end(self, kind: int) -> None:
        if self._closing:
            return
        self._closing = True
        self._inbox.clear()
        self._link.end(self._stream, kind)
        self._link.loop.call_soon(self._lose, None)  # type: ignore[union-attr]  # after the caller returns, as asyncio does

    def _lose(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        if self._writing_paused:
            self._writing_paused = False
        self._protocol.connection_lost(exc)


class OwnerLink(_Frames):
    """The owner's end of a link: serves each stream the relaying process opens with a protocol
    from ``factory`` (what the server makes for a connection it accepts).

    It is fed by the connection's guard (:class:`collab.guard.GuardedProtocol`), which calls
    :meth:`feed`, :meth:`pause_output`, :meth:`resume_output` and :meth:`close`."""

    def __init__(self, transport: asyncio.BaseTransport, factory: Callable[[], asyncio.Protocol],
                 links: set["OwnerLink"] | None = None, version: int = 2) -> None:
        super().__init__()
        self.transport = transport
        #: The link's version (its preface's): a relaying process of version 1 expects no answer and knows no ``FULL``.
        self.version = version
        self.loop = asyncio.get_running_loop()
        self._factory = factory
        #: The owner's open links, this one among them while it is open.
        self._links = links if links is not None else set()
        self._links.add(self)
        peer = transport.get_extra_info("peername")
        self._peer_host = str(peer[0]) if isinstance(peer, tuple) and peer else "127.0.0.1"
        self.peer = f"the relaying process at {self._peer_host}"
        local = transport.get_extra_info("sockname")
        self._sockname = (str(local[0]), int(local[1])) if isinstance(local, tuple) and len(local) >= 2 else None
        if version >= 2:
            transport.write(READY)  # type: ignore[attr-defined]

    def control(self, kind: int, stream: int, payload: bytes) -> None:
        if kind != OPEN:
            raise LinkError(f"a frame of unknown kind {kind}")
        if stream in self.streams:
            raise LinkError(f"stream {stream} opened twice")
        if self.draining:  # sent before the relaying process heard: its client reconnects
            self.send(RESET, stream)
        else:
            self._open(stream, payload)

    def _open(self, stream: int, payload: bytes) -> None:
        transport = StreamTransport(self, stream, (self._peer_host, next(_STREAM_PORTS)), self._sockname)
        self.streams[stream] = transport
        protocol = self._factory()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)  # the guard may refuse it (the global cap): then it is closing
        transport.received(payload)

    def set_full(self, full: bool) -> None:
        """Tell the relaying process whether to open no new streams here for now (``FULL``) or again (``ROOM``)."""
        if full != self.full and not self.closed:
            self.full = full
            if self.version >= 2:
                self.send(FULL if full else ROOM, 0)

    def drain(self) -> None:
        """This process is stopping: tell the relaying process to open no more streams here."""
        if not self.draining and not self.closed:
            self.draining = True
            self.send(GOAWAY, 0)

    def pause_output(self) -> None:
        """The relaying process reads the link slower than this one writes: every stream pauses."""
        self.output_paused(True)

    def resume_output(self) -> None:
        self.output_paused(False)

    def close(self) -> None:
        """The link's connection ended: so do its streams."""
        if self.closed:
            return
        self._links.discard(self)
        self.ended(ConnectionResetError("the relaying process's link closed"))


# -- the relaying end --------------------------------------------------------------

class RelayStream:
    """One relayed client at the relaying process: what it sends goes out as frames of the link,
    what the owner sends back is written to its transport.

    Fed by the client's guard (:class:`collab.guard.GuardedProtocol`): :meth:`feed` (bytes from
    the client), :meth:`pause_output` / :meth:`resume_output` (the client reads slower than the
    owner writes, and caught up) and :meth:`close` (the client's connection ended)."""

    def __init__(self, link: "RelayLink", stream: int, client: asyncio.Transport) -> None:
        self.link, self.stream, self.client = link, stream, client
        self.ended = False
        self._unacked = 0
        self._consumed = 0
        self._held = False
        self._paused = False

    def feed(self, data: bytes) -> None:
        if self.ended:
            return
        self.link.send_data(self.stream, data)
        self._unacked += len(data)
        if self._unacked > WINDOW:
            self.check_pause()

    def pause_output(self) -> None:
        self._held = True  # credits wait until the client takes what it was sent

    def resume_output(self) -> None:
        self._held = False
        if self._consumed and not self.ended:
            self.link.credit(self.stream, self._consumed)
            self._consumed = 0

    def close(self) -> None:
        if not self.ended:
            self.ended = True
            self.link.end(self.stream, CLOSE)

    # -- what the link calls -----------------------------------------------------
    def received(self, data: bytes) -> None:
        client = self.client
        if client.is_closing():
            return
        client.write(data)
        self._consumed += len(data)
        if not self._held and self._consumed >= CREDIT_STEP:
            self.link.credit(self.stream, self._consumed)
            self._consumed = 0

    def credited(self, nbytes: int) -> None:
        self._unacked = max(self._unacked - nbytes, 0)
        if self._paused:
            self.check_pause()

    def peer_ended(self, reset: bool, exc: Exception | None = None) -> None:
        """The owner closed (what it wrote still goes to the client) or aborted the stream."""
        self.ended = True
        client = self.client
        if not client.is_closing():
            if reset:
                client.abort()
            else:
                client.close()

    def check_pause(self) -> None:
        pause = self._unacked > WINDOW or self.link.write_paused
        if pause != self._paused and not self.client.is_closing():
            self._paused = pause
            if pause:
                self.client.pause_reading()
            else:
                self.client.resume_reading()


class RelayLink(_Frames, asyncio.Protocol):
    """The relaying process's end of a link to the process ``process_id``: usable once :attr:`ready`
    says ``True`` (the owner answered the preface)."""

    def __init__(self, process_id: str) -> None:
        super().__init__()
        self._last = 0
        self.process_id = process_id
        self.peer = f"the owner's process ({process_id})"
        #: ``True`` once the owner answered :data:`READY`; ``False`` if it answered otherwise, or closed.
        self.ready: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._answer = b""

    def open(self, client: asyncio.Transport, data: bytes) -> RelayStream:
        """Relay ``client``'s connection, whose first read (with the relayed mark) is ``data``."""
        self._last = next_stream(self._last, self.streams)
        stream = RelayStream(self, self._last, client)
        self.streams[stream.stream] = stream
        self.send(OPEN, stream.stream, data)
        return stream

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.loop = asyncio.get_running_loop()
        transport.write(preface(self.process_id))  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if self.ready.done():
            self.feed(data)
            return
        self._answer += data
        if len(self._answer) < len(READY) and READY.startswith(self._answer):
            return
        answer, self._answer = self._answer, b""
        if not answer.startswith(READY):
            log.info("%s answered %r to a link's preface: it takes no links of this version (a deployment "
                     "should run one version); its clients here are served here", self.peer, answer[:40])
            self.ready.set_result(False)
            self.transport.close()
            return
        self.ready.set_result(True)
        if len(answer) > len(READY):
            self.feed(answer[len(READY):])

    def control(self, kind: int, stream: int, payload: bytes) -> None:
        if kind == GOAWAY:
            self.draining = True
        elif kind == FULL or kind == ROOM:
            self.full = kind == FULL
        else:
            raise LinkError(f"a frame of kind {kind} from the owner")

    def eof_received(self) -> bool:
        return False

    def pause_writing(self) -> None:
        self.output_paused(True)

    def resume_writing(self) -> None:
        self.output_paused(False)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_result(False)
        self.ended(exc)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


async def connect(address: tuple[str, int], process_id: str) -> RelayLink | None:
    """A link to the process ``process_id`` at ``address``, or ``None`` (logged) when that process does
    not take it in time."""
    loop = asyncio.get_running_loop()
    host, port = address

    async def opened() -> RelayLink | None:
        _, link = await loop.create_connection(lambda: RelayLink(process_id), host, port)
        try:
            if await link.ready:
                return link
        except asyncio.CancelledError:  # no answer in time
            link.close()
            raise
        link.close()
        return None

    try:
        return await asyncio.wait_for(opened(), CONNECT_WAIT)
    except (OSError, asyncio.TimeoutError) as exc:
        log.info("could not link to %s at %s:%s (%s); its clients here are served here",
                 process_id, host, port, exc or "no answer in time")
        return None
