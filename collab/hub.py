"""Per-document sessions: one total order of revisions, presence, fan-out.

A :class:`Hub` owns the open :class:`Document` objects of one process. A
document orders submitted operations (transforming each against what was
applied after its base revision), commits them to the store in batches
(*group commit*: what arrives while a commit is in flight goes into the next
one), and only then acknowledges the senders and broadcasts to the others,
so nothing is ever shown that a crash could take back. Joins and presence
updates are handled between batches, when the in-memory state equals the
durable state, which keeps every client's stream in strict revision order.

Each connected client is a :class:`Peer` with a bounded outgoing queue of
encoded frames; a peer that lets it fill up is dropped instead of growing
memory or slowing the document down. Knows nothing of Starlette: a
transport drains :attr:`Peer.outbox` and feeds parsed messages in.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, TypeVar

from . import ot
from .doctext import DocText
from .protocol import (
    BAD_OP,
    BAD_REV,
    CLOSE_INTERNAL,
    CLOSE_POLICY,
    CLOSE_RESTART,
    FORBIDDEN,
    STALE_REV,
    TOO_LARGE,
    Cursor,
    Presence,
    ProtocolError,
    Submit,
    User,
    ack_msg,
    encode,
    error_msg,
    join_msg,
    leave_msg,
    op_frames,
    op_msg,
    peer_json,
    presence_msg,
    _cur,
    _usr,
)
from .store import RevisionConflict, Store, StoredOp

if TYPE_CHECKING:
    from .backplane import Backplane

log = logging.getLogger("collab.hub")

#: Seconds after another process's commit (or a conflict) during which this
#: process commits to the document holding its turn in the store, instead of
#: optimistically (and likely losing the race, which costs a whole retry).
CONTENDED_SECONDS = 2.0
#: A snapshot writes the whole text, so a document of N characters is snapshotted
#: every N / SNAPSHOT_BYTES_PER_OP operations at the most: snapshots cost about
#: this many characters per operation, whatever the document's size, and a load
#: replays at most that many operations after the last one.
SNAPSHOT_BYTES_PER_OP = 256
#: Batches of one document whose commits may be in flight at once (pipelined stores).
MAX_IN_FLIGHT = 4
T = TypeVar("T")


class DocumentFailed(Exception):
    """The document hit a storage error and was dropped from memory; load it again."""


@dataclass
class HubConfig:
    """The hub's share of :class:`collab.config.Settings`."""

    history_depth: int = 1000
    snapshot_every: int = 1000
    max_doc_chars: int = 10_000_000
    queue_size: int = 1000
    idle_unload_seconds: float = 30.0
    #: The transport's frame limit, announced in ``welcome`` so clients split larger edits.
    max_message_bytes: int = 4 * 1024 * 1024
    #: Bytes a peer's outbox may hold (beyond its ``welcome``) before it is dropped as too slow.
    queue_bytes: int = 8 * 1024 * 1024
    #: Submits a document's inbox holds; beyond, ``offer`` declines and ``submit`` waits for room.
    inbox_size: int = 1024

    @classmethod
    def from_settings(cls, s) -> "HubConfig":
        return cls(
            s.history_depth, s.snapshot_every, s.max_doc_chars, s.client_queue_size, s.idle_unload_seconds,
            s.max_message_bytes, s.client_queue_bytes, s.doc_inbox_size,
        )


class Peer:
    """One connected client of one document, as the hub sees it.

    Frames for the client collect in :attr:`outbox`. Its consumer either
    sets :attr:`notify` (called when the outbox goes from empty to not
    empty, and on :meth:`kick`) or waits on :attr:`ready`; it takes the
    frames with :meth:`take`, and closes the connection with
    :attr:`close_code` once :attr:`closed` is true.
    """

    __slots__ = (
        "id", "user", "role", "cursor", "cursor_rev", "_outbox", "_bytes", "notify", "_ready", "closed", "close_code",
        "close_reason", "limit", "byte_limit", "doc", "flush", "batch", "transformed",
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
        self.close_code = 1000
        self.close_reason = ""
        #: Whether the transport sends what is queued before closing.
        self.flush = True
        #: The client accepts ``batch`` frames, so queued messages may be coalesced.
        self.batch = False
        self.limit = queue_size
        #: Bytes the outbox may hold; ``None``: the document's ``HubConfig.queue_bytes``, set on join.
        self.byte_limit = queue_bytes
        #: History operations this peer's submits were transformed against (a cost the transport charges).
        self.transformed = 0
        self.doc: Document | None = None

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


def frame_bytes(frame: str) -> int:
    """The size of ``frame`` on the wire (UTF-8); ASCII frames, the usual case, cost one ``len``."""
    return len(frame) if frame.isascii() else len(frame.encode())


class RemotePeer:
    """A client of another process on the same document, as this process knows it."""

    __slots__ = ("id", "proc", "user", "cursor", "cursor_rev")

    def __init__(self, id: str, proc: str, user: User | None, cursor: Cursor | None, cursor_rev: int = 0) -> None:
        self.id = id
        self.proc = proc
        self.user = user
        self.cursor = cursor
        self.cursor_rev = cursor_rev


def _user_of(value: object) -> User | None:
    """A :class:`User` from its JSON form (trusted: it comes from another collab process)."""
    if isinstance(value, dict) and isinstance(value.get("name"), str) and isinstance(value.get("color"), str):
        return User(value["name"], value["color"])
    return None


def _cursor_of(value: object) -> Cursor | None:
    if isinstance(value, dict) and isinstance(value.get("anchor"), int) and isinstance(value.get("head"), int):
        return Cursor(value["anchor"], value["head"])
    return None


# An item of a document's inbox: who submitted, what, and for internal
# submits (the HTTP API) a future that receives the revision.
_Item = tuple["Peer | None", Submit, "asyncio.Future[int] | None"]


#: What :meth:`Document._announce` sends for one applied item: the author's ``ack``
#: frame (``None`` if it is not a connection), the ``op`` frame for the others
#: (``None`` for a resend of an op applied earlier), and the author's selection in it.
_Frames = tuple["str | None", "str | None", "Cursor | None"]


def _may_edit(peer: Peer, sub: Submit) -> None:
    """Refuse ``sub`` from a read-only connection (both ways in: :meth:`Document.offer` and ``submit``)."""
    if peer.role != "edit":
        raise ProtocolError(FORBIDDEN, "this connection is read-only: its token does not allow editing", sub.id)


def _reused(op_id: str, rev: int) -> ProtocolError:
    return ProtocolError(
        BAD_OP, f"operation id {op_id!r} was already used for a different operation (applied at revision {rev}); "
        "send each new operation with a fresh id", op_id)


@dataclass(slots=True)
class _RemoteOp:
    """An operation another process announced committing, checked for shape (not yet for content)."""

    entry: StoredOp
    cursor: Cursor | None
    #: The length of the text it applies to.
    spans: int


def _remote_op(item: object) -> _RemoteOp | None:
    """``[rev, op, client, id, cursor]`` from the backplane as a :class:`_RemoteOp`, or ``None`` if malformed."""
    if type(item) is not list or len(item) != 5:
        return None
    rev, op, client, op_id, cursor = item
    if type(rev) is not int or rev < 1 or type(client) is not str or type(op_id) is not str:
        return None
    try:
        op, spans, _ = ot.checked(op)
    except ValueError:
        return None
    return _RemoteOp(StoredOp(rev, op, client, op_id), _cursor_of(cursor), spans)


class _Resync(Exception):
    """The store no longer holds the operations this process missed: reload the document."""


@dataclass(slots=True)
class _Flight:
    """A batch applied in memory whose commit was started (pipelined stores)."""

    commit: "asyncio.Future[None]"
    applied: list
    #: Its frames, encoded while the commit is written (see :meth:`Document._encode_flight`).
    frames: "list[_Frames] | None" = None


@dataclass(slots=True)
class _Saved:
    """In-memory state before a batch, to roll back to when another process took its revisions."""

    text: DocText
    rev: int
    history_len: int
    cursors: dict[str, tuple[Cursor | None, int]]
    remote_cursors: dict[str, tuple[Cursor | None, int]]


class Document:
    """The live state of one open document.

    With a shared store (``store.may_conflict``) or a backplane, other
    processes commit to the same document too. Their operations arrive as
    backplane messages or are read from the store (after a conflict, a gap
    in revisions, or a missed message), and are integrated by the commit
    loop between batches, like the deferred joins: every client's stream
    stays in strict revision order.
    """

    def __init__(self, hub: "Hub", doc_id: str, rev: int, text: str, history: list[StoredOp]) -> None:
        self.hub = hub
        self.id = doc_id
        self.config = hub.config
        self.store = hub.store
        self.backplane = hub.backplane
        #: Whether other processes may commit to this document.
        self.shared = hub.backplane is not None or hub.store.may_conflict
        self.text = DocText(text)
        self.rev = rev
        #: Kept operations, ``history[i].rev == history_start + 1 + i``.
        self.history: deque[StoredOp] = deque(history)
        self.history_start = rev - len(self.history)
        #: Op id -> revision, for every op in :attr:`history`.
        self.ids: dict[str, int] = {o.id: o.rev for o in history}
        self.peers: dict[str, Peer] = {}
        #: Clients of other processes on this document.
        self.remote_peers: dict[str, RemotePeer] = {}
        self.last_snapshot = rev
        self._inbox: list[_Item] = []
        #: Submitters waiting for room in a full inbox.
        self._room_waiters: list[asyncio.Future[None]] = []
        self._deferred: list[tuple[Callable[[], object], asyncio.Future]] = []
        self._committer: asyncio.Task[None] | None = None
        self._unload_handle: asyncio.TimerHandle | None = None
        self.failed = False
        # Other processes' work, integrated between batches.
        self._remote_ops: dict[int, _RemoteOp] = {}
        self._remote_events: list[dict] = []
        #: The highest revision known to be committed somewhere.
        self._known_rev = rev
        #: Read the store for missed operations before the next batch.
        self._check_store = False
        self._store_waiters: list[asyncio.Future[None]] = []
        #: Batches retried after a conflict, and operations learned from others (for metrics).
        self.conflicts = 0
        self.remote_applied = 0
        #: Until then, commit holding the document's turn: other processes are writing it too.
        self._contended_until = 0.0
        #: With a pipelined store (``store.pipelined``): batches applied in memory whose
        #: commit was started but not yet announced, oldest first. The next batch is
        #: applied while the previous one is being written (its fsync overlaps the work).
        self.pipelined = hub.store.pipelined and not self.shared
        self._flight: deque[_Flight] = deque()
        self._settle_waiters: list[asyncio.Future[None]] = []

    # -- joining and leaving -------------------------------------------------

    async def join(self, peer: Peer, since: int | None) -> None:
        """Admit ``peer``: queue its ``welcome`` and tell the others.

        Raises :class:`ProtocolError` (``bad_rev``) for a ``since`` in the future.
        """
        if self.shared and since is not None and since > self.rev:
            await self.sync()  # it may come from another process that is ahead of this one
        await self._quietly(lambda: self._admit(peer, since))

    def _admit(self, peer: Peer, since: int | None) -> None:
        if since is not None and since > self.rev:
            raise ProtocolError(BAD_REV, f"'since' is {since} but the document is at revision {self.rev}")
        if self._unload_handle is not None:
            self._unload_handle.cancel()
            self._unload_handle = None
        peers = [peer_json(p.id, p.user, self._cursor_now(p)) for p in self.peers.values()]
        peers.extend(peer_json(p.id, p.user, self._cursor_now(p)) for p in self.remote_peers.values())
        welcome: dict = {
            "type": "welcome", "client": peer.id, "rev": self.rev, "role": peer.role, "peers": peers,
            "max_message_bytes": self.config.max_message_bytes,
        }
        if since is not None and since >= self.history_start:
            welcome["ops"] = [o.to_json() for o in self._after(since)]
        else:
            welcome["text"] = str(self.text)
        peer.doc = self
        if peer.byte_limit is None:
            peer.byte_limit = self.config.queue_bytes
        peer.greet(encode(welcome))
        self._broadcast(encode(join_msg(peer.id, peer.user)))
        self.peers[peer.id] = peer
        if self.backplane is not None:
            self.backplane.set_peer(self.id, peer.id, self._peer_info(peer))
            self.backplane.publish(self.id, {"t": "join", "client": peer.id, "user": _usr(peer.user)})

    def remove(self, peer: Peer) -> None:
        """Forget ``peer`` and tell the others it left."""
        if self.peers.pop(peer.id, None) is None:
            return
        self._broadcast(encode(leave_msg(peer.id)))
        if self.backplane is not None:
            self.backplane.forget_peer(self.id, peer.id)
            self.backplane.publish(self.id, {"t": "leave", "client": peer.id})
        if not self.peers:
            self._schedule_unload()

    def _peer_info(self, peer: Peer) -> dict:
        return {"user": _usr(peer.user), "cursor": _cur(self._cursor_now(peer)), "rev": self.rev}

    # -- presence ------------------------------------------------------------

    async def presence(self, peer: Peer, msg: Presence) -> None:
        """Record ``peer``'s selection (moved to the current revision) and broadcast it."""
        if self.shared and msg.rev > self.rev:
            await self.sync()
        await self._quietly(lambda: self._presence(peer, msg))

    def _move_cursor(self, cursor: Cursor | None, rev: int) -> Cursor | None:
        """``cursor``, valid at ``rev``, in current coordinates (``None`` if ``rev`` is out of the kept history)."""
        if cursor is None or rev < self.history_start or rev > self.rev:
            return None
        anchor, head = cursor.anchor, cursor.head
        if anchor == head:  # a caret, the usual case: one call per op
            transform_index = ot.transform_index
            for entry in self._after(rev):
                anchor = transform_index(anchor, entry.op)
            head = anchor
        else:
            for entry in self._after(rev):
                anchor, head = ot.transform_cursor(anchor, head, entry.op)
        size = len(self.text)
        return Cursor(min(anchor, size), min(head, size))

    def _cursor_now(self, p: "Peer | RemotePeer") -> Cursor | None:
        """``p``'s selection in current coordinates.

        Cursors are moved through applied operations only when read (here),
        not on every operation for every peer: the per-op cost does not grow
        with the number of people on the document. :meth:`_trim` reads the
        ones that would otherwise fall out of the kept history.
        """
        if p.cursor is not None and p.cursor_rev != self.rev:
            p.cursor = self._move_cursor(p.cursor, p.cursor_rev)
        p.cursor_rev = self.rev
        return p.cursor

    def _presence(self, peer: Peer, msg: Presence) -> None:
        if msg.rev > self.rev:
            raise ProtocolError(BAD_REV, f"presence 'rev' is {msg.rev} but the document is at revision {self.rev}")
        # Too old to move: None; the client's next presence puts it right.
        cursor = self._move_cursor(msg.cursor, msg.rev)
        if msg.user is not None:
            peer.user = msg.user
        peer.cursor, peer.cursor_rev = cursor, self.rev
        if peer.id in self.peers:
            self._broadcast(encode(presence_msg(peer.id, self.rev, cursor, peer.user)), skip=peer)
            if self.backplane is not None:
                self.backplane.set_peer(self.id, peer.id, self._peer_info(peer))
                self.backplane.publish(
                    self.id, {"t": "presence", "client": peer.id, "rev": self.rev, "cursor": _cur(cursor), "user": _usr(peer.user)}
                )

    # -- submitting ----------------------------------------------------------

    def offer(self, peer: Peer, sub: Submit) -> bool:
        """Queue a connection's ``sub`` for the next batch if that needs no waiting.

        Returns ``False``, having done nothing, when it does (the document
        must first read the store): then ``await submit(peer, sub)``. The
        usual case costs no coroutine, and a connection sends one per edit.
        Raises :class:`ProtocolError` as :meth:`submit` does.
        """
        _may_edit(peer, sub)
        if (len(self._inbox) >= self.config.inbox_size or (self.shared and sub.rev > self.rev)
                or (sub.rev < self.history_start and sub.id not in self.ids)):
            return False
        self._inbox.append((peer, sub, None))
        if self._committer is None:
            self._wake()
        return True

    async def submit(self, peer: Peer | None, sub: Submit) -> int | None:
        """Queue ``sub`` for the next batch.

        For a peer, the answer (``ack`` or ``error``) goes to its outbox and
        this returns ``None`` at once. For ``peer=None`` (the HTTP API) it
        waits and returns the revision, or raises :class:`ProtocolError`.
        """
        if peer is not None:
            _may_edit(peer, sub)
        if self.shared and sub.rev > self.rev:
            await self.sync()  # based on a revision this process has not seen yet
        if sub.rev < self.history_start and sub.id not in self.ids:
            # Only the store can tell whether an op this old was applied.
            rev = await self.store.find_op(self.id, sub.id)
            if rev is not None:
                if peer is None:
                    return rev
                peer.send_msg(ack_msg(sub.id, rev))
                return None
            raise ProtocolError(
                STALE_REV,
                f"revision {sub.rev} is older than the kept history (from {self.history_start}); rejoin and resend",
                sub.id,
            )
        while len(self._inbox) >= self.config.inbox_size:
            await self._room()
        fut = None if peer is not None else asyncio.get_running_loop().create_future()
        self._inbox.append((peer, sub, fut))
        self._wake()
        return None if fut is None else await fut

    async def _room(self) -> None:
        """Return once the commit loop took the inbox (a full inbox holds its submitters here)."""
        if self.failed:
            raise DocumentFailed(self.id)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._room_waiters.append(fut)
        self._wake()
        await fut

    def _made_room(self) -> None:
        waiters, self._room_waiters = self._room_waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    def _apply(self, peer: Peer | None, sub: Submit) -> StoredOp | int:
        """Order one submit into the in-memory state.

        Returns the new entry, or the revision of an earlier application of
        the same id. Raises :class:`ProtocolError` for a refused submit.
        """
        op_id, base, rev = sub.id, sub.rev, self.rev
        known = self.ids.get(op_id)
        if known is not None:
            if not self._is_resend(sub, known):
                raise _reused(op_id, known)
            return known
        if base > rev:
            raise ProtocolError(BAD_REV, f"'rev' is {base} but the document is at revision {rev}", op_id)
        if base < self.history_start:
            raise ProtocolError(STALE_REV, f"revision {base} is older than the kept history; rejoin", op_id)
        op = sub.op
        cursor = sub.cursor
        text = self.text
        size = len(text)
        if base == rev:
            spans, new_len = sub.lengths or ot.lengths(op)
            if spans != size:
                raise ProtocolError(BAD_OP, f"operation spans {spans} characters but revision {base} has {size}", op_id)
        else:
            concurrent = self._after(base)
            expected = ot.base_length(concurrent[0].op)
            spans = ot.base_length(op)
            if spans != expected:
                raise ProtocolError(BAD_OP, f"operation spans {spans} characters but revision {base} has {expected}", op_id)
            if peer is not None:
                peer.transformed += len(concurrent)
            for entry in concurrent:
                op, other = ot.transform(op, entry.op)
                if cursor is not None:
                    cursor = Cursor(*ot.transform_cursor(cursor.anchor, cursor.head, other))
            new_len = ot.target_length(op)
        if new_len > size and new_len > self.config.max_doc_chars:
            raise ProtocolError(
                TOO_LARGE, f"the document would have {new_len} characters; the limit is {self.config.max_doc_chars}", op_id
            )
        text.apply(op)
        self.rev = rev = rev + 1
        entry = StoredOp(rev, op, peer.id if peer is not None else "server", op_id)
        # Trimmed to history_depth only once committed (see _trim), so a conflict can roll back.
        self.history.append(entry)
        self.ids[op_id] = rev
        if peer is not None:  # the others' cursors move lazily (_cursor_now)
            if cursor is not None and (cursor.anchor > new_len or cursor.head > new_len):
                cursor = Cursor(min(cursor.anchor, new_len), min(cursor.head, new_len))
            peer.cursor, peer.cursor_rev = cursor, rev
        return entry

    def _is_resend(self, sub: Submit, rev: int) -> bool:
        """Whether ``sub`` is the op applied at ``rev`` (same id) sent again, as is or rebased.

        A client resends its unacknowledged op with the same id, on its
        original base or rebased onto the revisions it saw since (never one
        at or after ``rev``, which it would have taken as its ack). So ``sub``
        transformed up to ``rev - 1`` is the applied op. When ``sub``'s base is
        no longer kept, only the id can be compared, and it is taken as a resend.
        """
        base, start = sub.rev, self.history_start
        if base < start:
            return True
        if base >= rev:
            return False
        history = self.history
        op = sub.op
        if ot.base_length(op) != ot.base_length(history[base - start].op):
            return False
        try:
            for i in range(base - start, rev - start - 1):
                op = ot.transform(op, history[i].op)[0]
        except ValueError:
            return False
        return op == history[rev - start - 1].op

    def _after(self, rev: int) -> list[StoredOp]:
        """The kept operations after revision ``rev`` (which must be kept), oldest first.

        Read from whichever end of the deque is nearer: a submit is usually a
        few revisions behind, and skipping the ~1,000 older entries from the
        left was a tenth of the event loop's time in ``saturate``.
        """
        skip = rev - self.history_start
        count = len(self.history) - skip
        if count <= skip:
            newest = list(itertools.islice(reversed(self.history), count))
            newest.reverse()
            return newest
        return list(itertools.islice(self.history, skip, None))

    def _trim(self) -> None:
        """Keep at most ``history_depth`` operations (after a commit)."""
        excess = len(self.history) - self.config.history_depth
        if excess <= 0:
            return
        new_start = self.history[excess - 1].rev
        for p in itertools.chain(self.peers.values(), self.remote_peers.values()):
            if p.cursor is not None and p.cursor_rev < new_start:
                self._cursor_now(p)  # move it while the ops it needs are still kept
        popleft, forget = self.history.popleft, self.ids.pop
        for _ in range(excess):
            forget(popleft().id, None)
        self.history_start = new_start

    def _save(self) -> _Saved:
        return _Saved(
            self.text.copy(), self.rev, len(self.history),
            {p.id: (p.cursor, p.cursor_rev) for p in self.peers.values()},
            {p.id: (p.cursor, p.cursor_rev) for p in self.remote_peers.values()},
        )

    def _rollback(self, saved: _Saved) -> None:
        """Undo a batch that another process's commit beat: back to the state before it."""
        while len(self.history) > saved.history_len:
            self.ids.pop(self.history.pop().id, None)
        self.text = saved.text
        self.rev = saved.rev
        for pid, (cursor, rev) in saved.cursors.items():
            if pid in self.peers:
                self.peers[pid].cursor, self.peers[pid].cursor_rev = cursor, rev
        for pid, (cursor, rev) in saved.remote_cursors.items():
            if pid in self.remote_peers:
                self.remote_peers[pid].cursor, self.remote_peers[pid].cursor_rev = cursor, rev

    async def _commit_loop(self) -> None:
        """Integrate others' work, then apply, commit and announce batches, until there is nothing left."""
        conflicts_in_a_row = 0
        loop = asyncio.get_running_loop()
        try:
            while self._inbox or self._deferred or self._behind():
                if self._flight and (self._deferred or self._behind() or len(self._flight) >= MAX_IN_FLIGHT):
                    # Joins and presence see only committed state (and the pipeline stays short).
                    await self._settled()
                    continue
                contended = self._inbox and loop.time() < self._contended_until
                if conflicts_in_a_row or contended:
                    # Lost the race for these revisions (or other processes are writing
                    # this document right now): take the document's turn in the store, so
                    # this commit cannot lose the race (a hot document stays fair).
                    if conflicts_in_a_row > 20:
                        raise RuntimeError(f"document {self.id}: 20 conflicts in a row; giving up")
                    async with self.store.exclusive(self.id):
                        applied = await self._turn()
                else:
                    applied = await self._turn()
                if applied is None:
                    conflicts_in_a_row += 1
                    continue
                conflicts_in_a_row = 0
                if applied:
                    self._announce(applied)  # after the store's commit: durable before visible
        except DocumentFailed:
            pass  # a pipelined commit failed while this loop waited: already handled in _landed
        except _Resync:
            log.warning("document %s: missed operations are no longer in the store; clients reconnect", self.id)
            self._fail(CLOSE_RESTART, "this server fell behind; reconnect to resume")
        except Exception:
            log.exception("document %s failed; disconnecting its clients so they resume from the store", self.id)
            self._fail()
        finally:
            self._committer = None
            if not self.peers and not self._flight:
                self._schedule_unload()

    async def _turn(self) -> list | None:
        """One turn of the loop: catch up, run what waited, apply and persist one batch.

        Returns what to announce, or ``None`` if another process took the
        batch's revisions (the batch is rolled back and queued again).
        """
        if self._behind():
            await self._catch_up()
        self._run_deferred()
        if not self._inbox:
            return []
        batch, self._inbox = self._inbox, []
        if self._room_waiters:
            self._made_room()
        earlier = await self._ids_in_store(batch)
        saved = self._save() if self.store.may_conflict else None
        applied: list[tuple[Peer | None, Submit, asyncio.Future[int] | None, StoredOp | int]] = []
        new: list[StoredOp] = []
        for peer, sub, fut in batch:
            try:
                result = earlier.get(sub.id) or self._apply(peer, sub)
            except ProtocolError as exc:
                if fut is not None:
                    fut.set_exception(exc)
                elif peer is not None:
                    peer.send_msg(error_msg(exc.code, exc.message, exc.id))
                continue
            applied.append((peer, sub, fut, result))
            if type(result) is StoredOp:
                new.append(result)
        if self.pipelined:
            if applied:
                self._launch(new, applied)
            return []
        if new:
            try:
                await self._persist(new)
            except RevisionConflict:
                if saved is None:
                    raise
                # Another process committed first: roll back, integrate its operations
                # (next turn), and apply this batch again.
                self.conflicts += 1
                self.hub.conflicts += 1
                self._contended_until = asyncio.get_running_loop().time() + CONTENDED_SECONDS
                self._rollback(saved)
                self._inbox = [(p, s, f) for p, s, f, _ in applied] + self._inbox
                self._check_store = True
                return None
            self._trim()
        return applied

    async def _ids_in_store(self, batch: list[_Item]) -> dict[str, int]:
        """Revisions of ops in ``batch`` applied so long ago that only the store remembers their ids.

        :attr:`ids` covers the kept history only; once older ops exist, an id
        missing from it may still have been applied (a client resending an
        old op on a newer base), so ask the store, once per batch.
        """
        if self.history_start == 0:
            return {}
        unknown = [sub.id for _, sub, _ in batch if sub.id not in self.ids]
        if not unknown:
            return {}
        return await self.store.find_ops(self.id, unknown)

    def _snapshot_due(self) -> tuple[int, str] | None:
        if self.rev - self.last_snapshot >= max(self.config.snapshot_every, len(self.text) // SNAPSHOT_BYTES_PER_OP):
            return (self.rev, str(self.text))
        return None

    async def _persist(self, new: list[StoredOp]) -> None:
        snapshot = self._snapshot_due()
        await self.store.append(self.id, new, len(self.text), snapshot)
        if snapshot is not None:
            self.last_snapshot = self.rev
        self.hub.ops_applied += len(new)

    def _launch(self, new: list[StoredOp], applied: list) -> None:
        """Start committing a batch and return at once; it is announced when it and every earlier one landed.

        A batch with nothing new (only resends of ops applied earlier) still
        waits its turn: its acks must not overtake the commit of the op they
        acknowledge, which may be in flight.
        """
        if new:
            snapshot = self._snapshot_due()
            commit = self.store.start_append(self.id, new, len(self.text), snapshot, on_done=self._landed)
            if snapshot is not None:
                self.last_snapshot = self.rev  # if this commit fails, the document is dropped anyway
            self.hub.ops_applied += len(new)
        else:
            commit = asyncio.get_running_loop().create_future()
            commit.set_result(None)
            commit.add_done_callback(self._landed)
        flight = _Flight(commit, applied)
        self._flight.append(flight)
        # After the store's own call_soon: the commit is under way while this encodes.
        asyncio.get_running_loop().call_soon(self._encode_flight, flight)

    def _encode_flight(self, flight: _Flight) -> None:
        """Encode a batch's acks and broadcasts while its commit is being written.

        The frames do not depend on the commit's outcome, only whether they
        are sent does; encoding them here uses time the loop would otherwise
        spend waiting for the fsync, so they go out sooner once it lands.
        """
        if flight.frames is None and not flight.commit.done() and not self.failed:
            flight.frames = self._frames(flight.applied)

    def _landed(self, _: object = None) -> None:
        """Announce the batches whose commits landed, in order; fail the document if one did not."""
        flight = self._flight
        while flight and flight[0].commit.done():
            done = flight.popleft()
            commit, applied = done.commit, done.applied
            if self.failed:
                self._refuse(applied)
                continue
            exc = DocumentFailed(self.id) if commit.cancelled() else commit.exception()
            if exc is not None:
                log.error("document %s: commit failed; disconnecting its clients so they resume from the store",
                          self.id, exc_info=exc)
                self._refuse(applied)
                self._fail()
                continue
            self._announce(applied, done.frames)
            self._trim()  # only now: the ids of ops in flight must stay in memory (the store can't tell yet)
        if not flight:
            waiters, self._settle_waiters = self._settle_waiters, []
            for w in waiters:
                if not w.done():
                    w.set_result(None)
            if self._deferred or self._inbox:
                self._wake()
            elif not self.peers and self._committer is None:
                self._schedule_unload()

    def _refuse(self, applied: list) -> None:
        for _, _, fut, _ in applied:
            if fut is not None and not fut.done():
                fut.set_exception(DocumentFailed(self.id))

    async def _settled(self) -> None:
        """Return once every commit in flight has landed and been announced."""
        if not self._flight:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._settle_waiters.append(fut)
        await fut

    def _frames(self, applied: list) -> list[_Frames]:
        """For each applied item: its ack for its author (if a connection), its broadcast
        (if new) and the author's selection sent with it, the frames encoded."""
        frames: list[_Frames] = []
        for peer, sub, fut, result in applied:
            if isinstance(result, int):  # a resend of an op applied earlier: nothing to broadcast
                frames.append((encode(ack_msg(sub.id, result)) if fut is None and peer is not None else None, None, None))
                continue
            # The author's selection right after this op (unknown if it sent a later one since).
            cursor = peer.cursor if peer is not None and peer.cursor_rev == result.rev else None
            ack, frame = op_frames(result.rev, result.op, result.client, cursor, result.id)
            frames.append((ack if fut is None and peer is not None else None, frame, cursor))
        return frames

    def _announce(self, applied: list, frames: list[_Frames] | None = None) -> None:
        """Acknowledge and broadcast a committed batch, in revision order; tell the other processes.

        ``frames`` are the batch's frames if :meth:`_encode_flight` encoded them already.
        """
        if frames is None:
            frames = self._frames(applied)
        # Each connection's frames of the whole batch, queued at once at the end
        # (nobody joins or leaves in between): one send_many per connection.
        outs = {p: [] for p in self.peers.values()}
        pairs = [(p, out.append) for p, out in outs.items()]
        # Every connection gets every broadcast but its own: sizes are summed once, then corrected per author.
        shared = 0
        own: dict[Peer, int] = {}
        for (peer, sub, fut, result), (ack, frame, _) in zip(applied, frames):
            if fut is not None:
                fut.set_result(result if isinstance(result, int) else result.rev)
            elif ack is not None and peer in outs:  # else it left: nothing to send
                outs[peer].append(ack)
                own[peer] = own.get(peer, 0) + frame_bytes(ack)
            if frame is not None:
                size = frame_bytes(frame)
                shared += size
                if peer in outs:
                    own[peer] = own.get(peer, 0) - size
                for p, add in pairs:
                    if p is not peer:
                        add(frame)
        for p, out in outs.items():
            if out:
                p.send_many(out, shared + own.get(p, 0))
        if self.backplane is not None:
            published = [
                [r.rev, r.op, r.client, r.id, _cur(cursor)]
                for (*_, r), (_, frame, cursor) in zip(applied, frames) if frame is not None
            ]
            if published:
                self.backplane.publish(self.id, {"t": "ops", "ops": published})

    def _broadcast(self, frame: str, skip: Peer | None = None) -> None:
        for p in list(self.peers.values()):
            if p is not skip:
                p.send(frame)

    # -- other processes' work ---------------------------------------------------

    def _on_remote(self, msg: dict) -> None:
        """Take a backplane message; the commit loop integrates it between batches."""
        kind = msg.get("t")
        if kind == "ops":
            ops = msg.get("ops")
            for item in ops if type(ops) is list else (None,):
                remote = _remote_op(item)
                if remote is None:  # not an operation: the store has the truth
                    self._check_store = True
                    continue
                rev = remote.entry.rev
                if rev in self._remote_ops and self._remote_ops[rev].entry != remote.entry:
                    del self._remote_ops[rev]  # two versions of one revision: trust neither
                    self._check_store = True
                    continue
                self._remote_ops[rev] = remote
                if rev > self._known_rev:
                    self._known_rev = rev
        elif kind in ("join", "leave", "presence") and isinstance(msg.get("client"), str):
            self._remote_events.append(msg)
        else:
            return
        self._wake()

    def sync_later(self, rev: int | None = None) -> None:
        """Note that the store may hold more (revision ``rev`` at least); catch up between batches."""
        if rev is None:
            self._check_store = True
        elif rev > self._known_rev:
            self._known_rev = rev
        else:
            return
        self._wake()

    async def sync(self) -> None:
        """Integrate everything committed to the store so far (by any process) before returning."""
        if self.failed:
            raise DocumentFailed(self.id)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._store_waiters.append(fut)
        self._wake()
        await fut

    def _wake(self) -> None:
        if self._committer is None and not self.failed:
            self._committer = asyncio.create_task(self._commit_loop())

    def _behind(self) -> bool:
        return bool(self._remote_ops or self._remote_events or self._check_store or self._store_waiters
                    or self._known_rev > self.rev)

    async def _catch_up(self) -> None:
        """Integrate other processes' operations and presence, reading the store for what was missed."""
        self._integrate_buffered()
        late_presence = any(e["t"] == "presence" and isinstance(e.get("rev"), int) and e["rev"] > self.rev
                            for e in self._remote_events)
        # What is still buffered lies after a gap (a message lost, or overtaken): the store has it.
        if self._check_store or self._store_waiters or self._known_rev > self.rev or late_presence or self._remote_ops:
            self._check_store = False
            announced = set(self._remote_ops)  # committed before this read, if real: the read must show them
            waiters, self._store_waiters = self._store_waiters, []
            try:
                missed = await self.store.ops_since(self.id, self.rev)
            except BaseException as exc:
                for w in waiters:
                    if not w.done():
                        w.set_exception(exc if isinstance(exc, Exception) else DocumentFailed(self.id))
                raise
            if missed and missed[0].rev > self.rev + 1:
                for w in waiters:
                    if not w.done():
                        w.set_exception(DocumentFailed(self.id))
                raise _Resync(self.id)
            for entry in missed:
                if entry.rev == self.rev + 1:
                    remote = self._remote_ops.get(entry.rev)
                    self._integrate(entry, remote.cursor if remote is not None else None)
            self._integrate_buffered()
            for rev in announced.intersection(self._remote_ops):
                del self._remote_ops[rev]  # announced, yet not in the store: not a real commit
            # Announcements that arrived during the read may be ahead of what it returned.
            self._known_rev = max(self.rev, max(self._remote_ops, default=0))
            for w in waiters:
                if not w.done():
                    w.set_result(None)
        self._process_events()

    def _integrate_buffered(self) -> None:
        """Apply the buffered announcements that extend the document exactly; the store settles the rest."""
        while self.rev + 1 in self._remote_ops:
            remote = self._remote_ops.pop(self.rev + 1)
            if remote.spans != len(self.text):
                self._check_store = True
                break
            self._integrate(remote.entry, remote.cursor)
        for rev in [r for r in self._remote_ops if r <= self.rev]:
            del self._remote_ops[rev]

    def _integrate(self, entry: StoredOp, cursor: Cursor | None) -> None:
        """Apply another process's committed operation (the next revision) and show it to the clients here."""
        self.text.apply(entry.op)
        self.rev = entry.rev
        self.history.append(entry)
        self.ids[entry.id] = entry.rev
        author_remote = self.remote_peers.get(entry.client)
        if author_remote is not None:  # everyone else's cursor moves lazily (_cursor_now)
            author_remote.cursor, author_remote.cursor_rev = cursor, entry.rev
        self._trim()
        self.remote_applied += 1
        self.hub.remote_applied += 1
        if self.store.may_conflict:
            self._contended_until = asyncio.get_running_loop().time() + CONTENDED_SECONDS
        if self.rev > self._known_rev:
            self._known_rev = self.rev
        # The same operation resent here (its author reconnected after the other
        # process committed it): acknowledge it instead of applying it again.
        author: Peer | None = None
        if any(s.id == entry.id for _, s, _ in self._inbox):
            kept = []
            for peer, sub, fut in self._inbox:
                if sub.id != entry.id:
                    kept.append((peer, sub, fut))
                    continue
                refused = None if self._is_resend(sub, entry.rev) else _reused(entry.id, entry.rev)
                if fut is not None:
                    if refused is None:
                        fut.set_result(entry.rev)
                    else:
                        fut.set_exception(refused)
                elif peer is not None and refused is not None:
                    peer.send_msg(error_msg(refused.code, refused.message, refused.id))
                elif peer is not None:
                    peer.send_msg(ack_msg(entry.id, entry.rev))
                    author = peer
            self._inbox = kept
        self._broadcast(encode(op_msg(entry.rev, entry.op, entry.client, cursor, entry.id)), skip=author)

    def _process_events(self) -> None:
        """Other processes' joins, leaves and presence, in arrival order (between batches)."""
        events, self._remote_events = self._remote_events, []
        for e in events:
            client = e["client"]
            kind = e["t"]
            if kind == "leave":
                if self.remote_peers.pop(client, None) is not None:
                    self._broadcast(encode(leave_msg(client)))
                continue
            remote = self.remote_peers.get(client)
            user = _user_of(e.get("user"))
            if remote is None:
                remote = self.remote_peers[client] = RemotePeer(client, str(e.get("proc", "")), user, None)
                self._broadcast(encode(join_msg(client, user)))
            elif user is not None:
                remote.user = user
            if kind == "presence":
                rev = e.get("rev")
                remote.cursor = self._move_cursor(_cursor_of(e.get("cursor")), rev if isinstance(rev, int) else -1)
                remote.cursor_rev = self.rev
                self._broadcast(encode(presence_msg(client, self.rev, remote.cursor, remote.user)))

    def adopt_peers(self, infos: dict[str, dict], dead: set[str]) -> None:
        """Take the presence record of other processes' clients (on load, or after a resync).

        Clients no longer in the record, or of dead processes, are announced as left.
        """
        own = self.backplane.process_id if self.backplane is not None else ""
        current = {c: i for c, i in infos.items() if i.get("proc") not in dead and i.get("proc") != own}
        if self.backplane is not None:
            for client, info in infos.items():
                if info.get("proc") in dead:  # left behind by a crashed process: tidy up
                    self.backplane.forget_peer(self.id, client)
        for client in list(self.remote_peers):
            if client not in current:
                self._remote_events.append({"t": "leave", "client": client})
        for client, info in current.items():
            if client not in self.remote_peers:
                self._remote_events.append({"t": "presence", "client": client, "proc": info.get("proc", ""),
                                            "user": info.get("user"), "cursor": info.get("cursor"),
                                            "rev": info.get("rev", -1)})
        if self._remote_events:
            self._wake()

    def drop_processes(self, dead: set[str]) -> None:
        """Announce the clients of processes whose heartbeat expired as left."""
        for remote in list(self.remote_peers.values()):
            if remote.proc in dead:
                self._remote_events.append({"t": "leave", "client": remote.id})
                if self.backplane is not None:
                    self.backplane.forget_peer(self.id, remote.id)
        if self._remote_events:
            self._wake()

    def reannounce(self) -> None:
        """Record and announce this process's clients again (after the backplane lost them)."""
        if self.backplane is None:
            return
        for peer in self.peers.values():
            self.backplane.set_peer(self.id, peer.id, self._peer_info(peer))
            self.backplane.publish(self.id, {"t": "join", "client": peer.id, "user": _usr(peer.user)})

    # -- between batches -------------------------------------------------------

    async def _quietly(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` when the in-memory state is all committed: now, or between two batches.

        ``fn`` runs synchronously there, so no batch can start while it looks.
        """
        if self.failed:
            raise DocumentFailed(self.id)
        if self._committer is None and not self._flight:
            return fn()
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._deferred.append((fn, fut))
        return await fut

    def _run_deferred(self) -> None:
        deferred, self._deferred = self._deferred, []
        for fn, fut in deferred:
            if fut.done():
                continue
            try:
                fut.set_result(fn())
            except Exception as exc:
                fut.set_exception(exc)

    # -- lifecycle ---------------------------------------------------------------

    def _fail(self, code: int = CLOSE_INTERNAL, reason: str = "storage failed; reconnect to resume") -> None:
        if self.failed:
            return
        self.failed = True
        for flight in self._flight:
            self._refuse(flight.applied)
        waiters, self._settle_waiters = self._settle_waiters, []
        for w in waiters:
            if not w.done():
                w.set_exception(DocumentFailed(self.id))
        for peer, sub, fut in self._inbox:
            if fut is not None and not fut.done():
                fut.set_exception(DocumentFailed(self.id))
        self._inbox = []
        for _, fut in self._deferred:
            if not fut.done():
                fut.set_exception(DocumentFailed(self.id))
        self._deferred = []
        for fut in self._store_waiters + self._room_waiters:
            if not fut.done():
                fut.set_exception(DocumentFailed(self.id))
        self._store_waiters = []
        self._room_waiters = []
        for peer in list(self.peers.values()):
            peer.kick(code, reason)
        self.hub._forget(self)

    def _schedule_unload(self) -> None:
        if self._unload_handle is not None or self.failed:
            return
        loop = asyncio.get_running_loop()
        self._unload_handle = loop.call_later(self.config.idle_unload_seconds, self._unload_if_idle)

    def _unload_if_idle(self) -> None:
        self._unload_handle = None
        if not self.peers and self._committer is None and not self._inbox and not self._flight:
            self.hub._forget(self)

    def snapshot(self) -> tuple[int, str]:
        """The committed revision and text (call between batches)."""
        return self.rev, str(self.text)


class Hub:
    """The open documents of one process.

    With a ``backplane`` (several processes on one PostgreSQL store), the hub
    subscribes to each document it opens, feeds other processes' messages
    to the document, and watches for crashed processes and missed messages.
    """

    def __init__(self, store: Store, config: HubConfig | None = None, backplane: "Backplane | None" = None) -> None:
        self.store = store
        self.config = config or HubConfig()
        self.backplane = backplane
        self.docs: dict[str, Document] = {}
        self._loading: dict[str, asyncio.Future[Document]] = {}
        self.ops_applied = 0
        #: Batches that lost their revisions to another process, and ops integrated from other processes.
        self.conflicts = 0
        self.remote_applied = 0
        self.closing = False
        self._started = False
        self._start_lock: asyncio.Lock | None = None
        self._sub_lock: asyncio.Lock | None = None
        self._watcher: asyncio.Task[None] | None = None
        #: Backplane messages for documents being loaded, replayed once they are.
        self._early: dict[str, list[dict]] = {}

    async def start(self) -> None:
        """Connect the backplane (done on first use; call it to fail early)."""
        if self.backplane is None or self._started:
            return
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
            self._sub_lock = asyncio.Lock()
        async with self._start_lock:
            if self._started:
                return
            await self.backplane.start(self._on_message, self._on_resync)
            self._watcher = asyncio.create_task(self._watch(), name="collab-hub-watch")
            self._started = True

    async def document(self, doc_id: str) -> Document:
        """The open document ``doc_id``, loading it once however many ask at once."""
        doc = self.docs.get(doc_id)
        if doc is not None:
            return doc
        loading = self._loading.get(doc_id)
        if loading is None:
            # A task of its own: a caller that gives up (cancelled) does not cancel the others' load.
            loading = self._loading[doc_id] = asyncio.ensure_future(self._load(doc_id))
            loading.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved even if nobody waits
        return await asyncio.shield(loading)

    async def _load(self, doc_id: str) -> Document:
        try:
            infos: dict[str, dict] = {}
            dead: set[str] = set()
            if self.backplane is not None:
                # Subscribe before loading: nothing committed after the load can be missed.
                await self.start()
                assert self._sub_lock is not None
                async with self._sub_lock:
                    await self.backplane.subscribe(doc_id)
                infos = await self.backplane.peers(doc_id)
                dead = await self.backplane.dead({str(i.get("proc")) for i in infos.values()})
            state = await self.store.load(doc_id, self.config.history_depth)
            doc = Document(self, doc_id, state.rev, state.text, state.history)
            self.docs[doc_id] = doc
            if self.backplane is not None:
                doc.adopt_peers(infos, dead)
                for msg in self._early.pop(doc_id, []):
                    doc._on_remote(msg)
        except BaseException:
            self._early.pop(doc_id, None)
            raise
        finally:
            del self._loading[doc_id]
        doc._schedule_unload()  # unloaded again unless someone joins
        return doc

    async def join(self, doc_id: str, peer: Peer, since: int | None) -> Document:
        """Open ``doc_id`` and admit ``peer`` to it."""
        while True:
            doc = await self.document(doc_id)
            try:
                await doc.join(peer, since)
                return doc
            except DocumentFailed:
                continue  # it was dropped after a storage error: load it afresh

    async def read(self, doc_id: str) -> tuple[int, str]:
        """The committed revision and text of ``doc_id`` (with a shared store: as of now, by any process)."""
        while True:
            doc = await self.document(doc_id)
            try:
                if self.store.may_conflict:
                    await doc.sync()
                return await doc._quietly(doc.snapshot)
            except DocumentFailed:
                continue

    async def replace(self, doc_id: str, text: str, op_id: str | None = None) -> int:
        """Replace the text of ``doc_id`` with ``text`` as one ordinary edit; returns its revision."""
        while True:
            doc = await self.document(doc_id)
            try:
                if self.store.may_conflict:
                    await doc.sync()
                rev, current = await doc._quietly(doc.snapshot)
                op = ot.diff_splice(current, text)
                sub = Submit(rev, op, op_id or "http-" + secrets.token_hex(8), None)
                return await doc.submit(None, sub)  # type: ignore[return-value]
            except DocumentFailed:
                continue  # dropped after a storage error: load it afresh and diff again

    def _forget(self, doc: Document) -> None:
        if self.docs.get(doc.id) is doc:
            del self.docs[doc.id]
            self.store.forget(doc.id)
            if self.backplane is not None and self._started and not self.closing:
                asyncio.get_running_loop().create_task(self._unsubscribe(doc.id))

    async def _unsubscribe(self, doc_id: str) -> None:
        assert self._sub_lock is not None and self.backplane is not None
        async with self._sub_lock:
            if doc_id not in self.docs and doc_id not in self._loading:
                try:
                    await self.backplane.unsubscribe(doc_id)
                except Exception as exc:
                    log.warning("unsubscribing from %s failed: %s", doc_id, exc)

    # -- backplane ---------------------------------------------------------------

    def _on_message(self, doc_id: str, msg: dict) -> None:
        doc = self.docs.get(doc_id)
        if doc is not None:
            doc._on_remote(msg)
        elif doc_id in self._loading:
            self._early.setdefault(doc_id, []).append(msg)

    def _on_resync(self) -> None:
        """Messages may have been lost: re-read the store, re-announce our clients, re-read others'."""
        for doc in list(self.docs.values()):
            doc.sync_later()
            doc.reannounce()
        if self.docs:
            asyncio.get_running_loop().create_task(self._refresh_peers(list(self.docs.values())))

    async def _refresh_peers(self, docs: list[Document]) -> None:
        assert self.backplane is not None
        for doc in docs:
            try:
                infos = await self.backplane.peers(doc.id)
                dead = await self.backplane.dead({str(i.get("proc")) for i in infos.values()})
            except Exception as exc:
                log.warning("reading who is on %s failed: %s", doc.id, exc)
                continue
            if self.docs.get(doc.id) is doc:
                doc.adopt_peers(infos, dead)

    async def _watch(self) -> None:
        """Every ``backplane.check_interval``: drop dead processes' clients, catch up missed commits."""
        assert self.backplane is not None
        while True:
            await asyncio.sleep(self.backplane.check_interval)
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("liveness check failed (%s); retrying", exc)

    async def check(self) -> None:
        """One round of the watch: crashed processes' clients leave; documents behind the store catch up."""
        assert self.backplane is not None
        docs = list(self.docs.values())
        procs = {r.proc for d in docs for r in d.remote_peers.values()}
        if procs:
            dead = await self.backplane.dead(procs)
            if dead:
                for doc in docs:
                    doc.drop_processes(dead)
        watched = [d.id for d in docs if d.peers]
        if watched:
            revs = await self.store.revisions(watched)
            for doc_id, rev in revs.items():
                doc = self.docs.get(doc_id)
                if doc is not None:
                    doc.sync_later(rev)

    # -- shutdown ------------------------------------------------------------------

    async def close(self) -> None:
        """Finish in-flight commits, ask every client to reconnect (1012), and stop the backplane.

        The clients land on another process (or on this one restarted) and
        resume with ``since``: nothing acknowledged is lost, nothing resent is
        applied twice.
        """
        self.closing = True
        tasks = [d._committer for d in self.docs.values() if d._committer is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(d._settled() for d in list(self.docs.values())), return_exceptions=True)
        for doc in list(self.docs.values()):
            for peer in list(doc.peers.values()):
                peer.kick(CLOSE_RESTART, "the server is restarting: reconnect")
        if self._watcher is not None:
            self._watcher.cancel()
            try:
                await self._watcher
            except (asyncio.CancelledError, Exception):
                pass
        if self.backplane is not None and self._started:
            await self.backplane.close()

    @property
    def connections(self) -> int:
        return sum(len(d.peers) for d in self.docs.values())

