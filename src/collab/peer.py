"""One connected client as the hub sees it: a bounded queue of encoded frames, and how to close it.

A :class:`Peer` collects the frames for one WebSocket connection; the
transport drains them. The queue is capped in messages and in bytes: a
client that lets it fill up is dropped (1008 "too slow") instead of growing
the server's memory or slowing the document down. A :class:`RemotePeer` is
a client of another process on the same document. Knows nothing of
Starlette, of the store or of other processes.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Callable, Iterable, Protocol

from .protocol import CLOSE_NORMAL, CLOSE_POLICY, FORBIDDEN, Cursor, ProtocolError, User, encode, title_msg


class Room(Protocol):
    """Where a peer is joined (a document session): told when the peer is closed."""

    def remove(self, peer: "Peer") -> None: ...


def frame_bytes(frame: str) -> int:
    """The size of ``frame`` on the wire (UTF-8); ASCII frames, the usual case, cost one ``len``."""
    return len(frame) if frame.isascii() else len(frame.encode())


class Peer:
    """One connected client of one document.

    Frames for the client collect in :attr:`outbox`. Its consumer either
    sets :attr:`notify` (called when the outbox goes from empty to not
    empty, and on :meth:`kick`) or waits on :attr:`ready`; it takes the
    frames with :meth:`take`, and closes the connection with
    :attr:`close_code` once :attr:`closed` is true.
    """

    __slots__ = (
        "id", "user", "role", "cursor", "cursor_rev", "_outbox", "_bytes", "notify", "_ready", "closed", "close_code",
        "close_reason", "limit", "byte_limit", "doc", "flush", "batch", "titles", "transformed",
    )

    def __init__(self, user: User | None = None, role: str = "edit", queue_size: int = 1000,
                 notify: Callable[[], None] | None = None, queue_bytes: int | None = None) -> None:
        self.id = secrets.token_hex(6)
        self.user = user
        self.role = role
        self.cursor: Cursor | None = None
        #: The revision :attr:`cursor` is valid at; the document moves it forward lazily.
        self.cursor_rev = 0
        self._outbox: list[str] = []
        #: Bytes (UTF-8) of the frames in the outbox, the ``welcome`` not counted.
        self._bytes = 0
        #: Called when there is something new to send (instead of setting :attr:`ready`).
        self.notify = notify
        self._ready: asyncio.Event | None = None
        self.closed = False
        self.close_code = CLOSE_NORMAL
        self.close_reason = ""
        #: Whether the transport sends what is queued before closing.
        self.flush = True
        #: The client accepts ``batch`` frames, so queued messages may be coalesced.
        self.batch = False
        #: The client asked for ``title`` messages (they are not in every client's vocabulary).
        self.titles = False
        self.limit = queue_size
        #: Bytes the outbox may hold; ``None``: the document's ``HubConfig.queue_bytes``, set on join.
        self.byte_limit = queue_bytes
        #: History operations this peer's submits were transformed against (a cost the transport charges).
        self.transformed = 0
        self.doc: Room | None = None

    @property
    def outbox(self) -> list[str]:
        """The frames queued for the client, oldest first (replace it, or :meth:`take` it, to empty it)."""
        return self._outbox

    @outbox.setter
    def outbox(self, frames: list[str]) -> None:
        self._outbox = frames
        self._bytes = sum(map(frame_bytes, frames)) if frames else 0

    @property
    def queued_bytes(self) -> int:
        """Bytes of the frames queued, the ``welcome`` not counted."""
        return self._bytes

    @property
    def ready(self) -> asyncio.Event:
        """Set when there is something to send, for a consumer without :attr:`notify` (made on first use)."""
        if self._ready is None:
            self._ready = asyncio.Event()
        return self._ready

    def _wake(self) -> None:
        if self.notify is not None:
            self.notify()
        else:
            self.ready.set()

    def send(self, frame: str, nbytes: int = -1) -> None:
        """Queue one encoded frame (of ``nbytes`` bytes, if known); drop the peer if it is not keeping up."""
        if self.closed:
            return
        outbox = self._outbox
        if nbytes < 0:
            nbytes = len(frame) if frame.isascii() else len(frame.encode())
        size = self._bytes + nbytes
        if outbox and (len(outbox) >= self.limit or (self.byte_limit is not None and size > self.byte_limit)):
            self._fell_behind()
            return
        outbox.append(frame)
        self._bytes = size
        if len(outbox) == 1:
            self._wake()

    def greet(self, frame: str) -> None:
        """Queue the ``welcome``: not counted against the byte cap (the document's size bounds it)."""
        if not self.closed:
            self._outbox.append(frame)
            if len(self._outbox) == 1:
                self._wake()

    def send_many(self, frames: list[str], nbytes: int = -1) -> None:
        """Queue several encoded frames (``nbytes`` in all, if known), in order, as :meth:`send` would."""
        if self.closed or not frames:
            return
        outbox = self._outbox
        was_empty = not outbox
        if nbytes < 0:
            nbytes = sum(map(frame_bytes, frames))
        size = self._bytes + nbytes
        if len(outbox) + len(frames) > self.limit or (self.byte_limit is not None and size > self.byte_limit):
            for frame in frames:  # as send() would, frame by frame, up to the one that does not fit
                self.send(frame)
            return
        outbox.extend(frames)
        self._bytes = size
        if was_empty:
            self._wake()

    def _fell_behind(self) -> None:
        """The outbox is full: drop the connection without sending what it holds."""
        self.kick(CLOSE_POLICY, "too slow: the outgoing queue is full; reconnect and resume with 'since'", flush=False)

    def send_msg(self, msg: dict) -> None:
        self.send(encode(msg))

    def take(self) -> list[str]:
        """The queued frames, oldest first, leaving the outbox empty."""
        frames, self._outbox = self._outbox, []
        self._bytes = 0
        return frames

    def kick(self, code: int, reason: str, flush: bool = True) -> None:
        """Ask the transport to close this connection, after what is queued if ``flush``."""
        if self.closed:
            return
        self.closed = True
        self.flush = flush
        self.close_code = code
        self.close_reason = reason
        self._wake()
        if self.doc is not None:
            self.doc.remove(self)


class RemotePeer:
    """A client of another process on the same document, as this process knows it."""

    __slots__ = ("id", "proc", "user", "cursor", "cursor_rev")

    def __init__(self, id: str, proc: str, user: User | None, cursor: Cursor | None, cursor_rev: int = 0) -> None:
        self.id = id
        self.proc = proc
        self.user = user
        self.cursor = cursor
        self.cursor_rev = cursor_rev


def may_edit(peer: Peer, op_id: str | None) -> None:
    """Refuse (``forbidden``) an op from a read-only connection."""
    if peer.role != "edit":
        raise ProtocolError(FORBIDDEN, "this connection is read-only: its token does not allow editing", op_id)


def announce_title(peers: Iterable[Peer], title: str | None) -> None:
    """Send a title set by hand to the connections that asked for ``title`` messages at ``join``."""
    frame = encode(title_msg(title))
    for p in list(peers):
        if p.titles:
            p.send(frame)
