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
from typing import Callable, TypeVar

from . import ot
from .doctext import DocText
from .protocol import (
    BAD_OP,
    BAD_REV,
    CLOSE_INTERNAL,
    CLOSE_POLICY,
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
    op_msg,
    peer_json,
    presence_msg,
)
from .store import RevisionConflict, Store, StoredOp

log = logging.getLogger("collab.hub")
T = TypeVar("T")


class DocumentFailed(Exception):
    """The document hit a storage error and was dropped from memory; load it again."""


@dataclass
class HubConfig:
    """The hub's share of :class:`collab.config.Settings`."""

    history_depth: int = 1000
    snapshot_every: int = 100
    max_doc_chars: int = 10_000_000
    queue_size: int = 1000
    idle_unload_seconds: float = 30.0

    @classmethod
    def from_settings(cls, s) -> "HubConfig":
        return cls(s.history_depth, s.snapshot_every, s.max_doc_chars, s.client_queue_size, s.idle_unload_seconds)


class Peer:
    """One connected client of one document, as the hub sees it.

    The transport drains :attr:`outbox` whenever :attr:`ready` is set, and
    closes the connection with :attr:`close_code` once :attr:`closed` is true.
    """

    __slots__ = ("id", "user", "role", "cursor", "outbox", "ready", "closed", "close_code", "close_reason", "limit", "doc", "flush", "batch")

    def __init__(self, user: User | None = None, role: str = "edit", queue_size: int = 1000) -> None:
        self.id = secrets.token_hex(6)
        self.user = user
        self.role = role
        self.cursor: Cursor | None = None
        self.outbox: deque[str] = deque()
        self.ready = asyncio.Event()
        self.closed = False
        self.close_code = 1000
        self.close_reason = ""
        #: Whether the transport sends what is queued before closing.
        self.flush = True
        #: The client accepts ``batch`` frames, so queued messages may be coalesced.
        self.batch = False
        self.limit = queue_size
        self.doc: Document | None = None

    def send(self, frame: str) -> None:
        """Queue one encoded frame; drop the peer if it is not keeping up."""
        if self.closed:
            return
        if len(self.outbox) >= self.limit:
            self.kick(CLOSE_POLICY, "too slow: the outgoing queue is full; reconnect and resume with 'since'", flush=False)
            return
        self.outbox.append(frame)
        self.ready.set()

    def send_msg(self, msg: dict) -> None:
        self.send(encode(msg))

    def kick(self, code: int, reason: str, flush: bool = True) -> None:
        """Ask the transport to close this connection, after what is queued if ``flush``."""
        if self.closed:
            return
        self.closed = True
        self.flush = flush
        self.close_code = code
        self.close_reason = reason
        self.ready.set()
        if self.doc is not None:
            self.doc.remove(self)


# An item of a document's inbox: who submitted, what, and for internal
# submits (the HTTP API) a future that receives the revision.
_Item = tuple["Peer | None", Submit, "asyncio.Future[int] | None"]


class Document:
    """The live state of one open document."""

    def __init__(self, hub: "Hub", doc_id: str, rev: int, text: str, history: list[StoredOp]) -> None:
        self.hub = hub
        self.id = doc_id
        self.config = hub.config
        self.store = hub.store
        self.text = DocText(text)
        self.rev = rev
        #: Kept operations, ``history[i].rev == history_start + 1 + i``.
        self.history: deque[StoredOp] = deque(history)
        self.history_start = rev - len(self.history)
        #: Op id -> revision, for every op in :attr:`history`.
        self.ids: dict[str, int] = {o.id: o.rev for o in history}
        self.peers: dict[str, Peer] = {}
        self.last_snapshot = rev
        self._inbox: list[_Item] = []
        self._deferred: list[tuple[Callable[[], object], asyncio.Future]] = []
        self._committer: asyncio.Task[None] | None = None
        self._unload_handle: asyncio.TimerHandle | None = None
        self.failed = False

    # -- joining and leaving -------------------------------------------------

    async def join(self, peer: Peer, since: int | None) -> None:
        """Admit ``peer``: queue its ``welcome`` and tell the others.

        Raises :class:`ProtocolError` (``bad_rev``) for a ``since`` in the future.
        """
        await self._quietly(lambda: self._admit(peer, since))

    def _admit(self, peer: Peer, since: int | None) -> None:
        if since is not None and since > self.rev:
            raise ProtocolError(BAD_REV, f"'since' is {since} but the document is at revision {self.rev}")
        if self._unload_handle is not None:
            self._unload_handle.cancel()
            self._unload_handle = None
        welcome: dict = {
            "type": "welcome",
            "client": peer.id,
            "rev": self.rev,
            "role": peer.role,
            "peers": [peer_json(p.id, p.user, p.cursor) for p in self.peers.values()],
        }
        if since is not None and since >= self.history_start:
            welcome["ops"] = [o.to_json() for o in itertools.islice(self.history, since - self.history_start, None)]
        else:
            welcome["text"] = str(self.text)
        peer.doc = self
        peer.send_msg(welcome)
        self._broadcast(encode(join_msg(peer.id, peer.user)))
        self.peers[peer.id] = peer

    def remove(self, peer: Peer) -> None:
        """Forget ``peer`` and tell the others it left."""
        if self.peers.pop(peer.id, None) is None:
            return
        self._broadcast(encode(leave_msg(peer.id)))
        if not self.peers:
            self._schedule_unload()

    # -- presence ------------------------------------------------------------

    async def presence(self, peer: Peer, msg: Presence) -> None:
        """Record ``peer``'s selection (moved to the current revision) and broadcast it."""
        await self._quietly(lambda: self._presence(peer, msg))

    def _presence(self, peer: Peer, msg: Presence) -> None:
        if msg.rev > self.rev:
            raise ProtocolError(BAD_REV, f"presence 'rev' is {msg.rev} but the document is at revision {self.rev}")
        cursor = msg.cursor
        if cursor is not None:
            if msg.rev < self.history_start:
                cursor = None  # too old to move; the client's next presence puts it right
            else:
                anchor, head = cursor.anchor, cursor.head
                for entry in itertools.islice(self.history, msg.rev - self.history_start, None):
                    anchor, head = ot.transform_cursor(anchor, head, entry.op)
                size = len(self.text)
                cursor = Cursor(min(anchor, size), min(head, size))
        if msg.user is not None:
            peer.user = msg.user
        peer.cursor = cursor
        if peer.id in self.peers:
            self._broadcast(encode(presence_msg(peer.id, self.rev, cursor, peer.user)), skip=peer)

    # -- submitting ----------------------------------------------------------

    async def submit(self, peer: Peer | None, sub: Submit) -> int | None:
        """Queue ``sub`` for the next batch.

        For a peer, the answer (``ack`` or ``error``) goes to its outbox and
        this returns ``None`` at once. For ``peer=None`` (the HTTP API) it
        waits and returns the revision, or raises :class:`ProtocolError`.
        """
        if peer is not None and peer.role != "edit":
            raise ProtocolError(FORBIDDEN, "this connection is read-only: its token does not allow editing", sub.id)
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
        fut = None if peer is not None else asyncio.get_running_loop().create_future()
        self._inbox.append((peer, sub, fut))
        if self._committer is None:
            self._committer = asyncio.create_task(self._commit_loop())
        return None if fut is None else await fut

    def _apply(self, peer: Peer | None, sub: Submit) -> StoredOp | int:
        """Order one submit into the in-memory state.

        Returns the new entry, or the revision of an earlier application of
        the same id. Raises :class:`ProtocolError` for a refused submit.
        """
        known = self.ids.get(sub.id)
        if known is not None:
            return known
        if sub.rev > self.rev:
            raise ProtocolError(BAD_REV, f"'rev' is {sub.rev} but the document is at revision {self.rev}", sub.id)
        if sub.rev < self.history_start:
            raise ProtocolError(STALE_REV, f"revision {sub.rev} is older than the kept history; rejoin", sub.id)
        op = sub.op
        cursor = sub.cursor
        if sub.rev == self.rev:
            if ot.base_length(op) != len(self.text):
                raise ProtocolError(
                    BAD_OP,
                    f"operation spans {ot.base_length(op)} characters but revision {sub.rev} has {len(self.text)}",
                    sub.id,
                )
        else:
            concurrent = list(itertools.islice(self.history, sub.rev - self.history_start, None))
            expected = ot.base_length(concurrent[0].op)
            if ot.base_length(op) != expected:
                raise ProtocolError(
                    BAD_OP, f"operation spans {ot.base_length(op)} characters but revision {sub.rev} has {expected}", sub.id
                )
            for entry in concurrent:
                op, other = ot.transform(op, entry.op)
                if cursor is not None:
                    cursor = Cursor(*ot.transform_cursor(cursor.anchor, cursor.head, other))
        new_len = ot.target_length(op)
        if new_len > self.config.max_doc_chars and new_len > len(self.text):
            raise ProtocolError(
                TOO_LARGE, f"the document would have {new_len} characters; the limit is {self.config.max_doc_chars}", sub.id
            )
        self.text.apply(op)
        self.rev += 1
        entry = StoredOp(self.rev, op, peer.id if peer is not None else "server", sub.id)
        self.history.append(entry)
        self.ids[sub.id] = self.rev
        while len(self.history) > self.config.history_depth:
            old = self.history.popleft()
            self.history_start = old.rev
            self.ids.pop(old.id, None)
        for other_peer in self.peers.values():
            if other_peer.cursor is not None and other_peer is not peer:
                other_peer.cursor = Cursor(*ot.transform_cursor(other_peer.cursor.anchor, other_peer.cursor.head, op))
        if peer is not None:
            if cursor is not None:
                size = len(self.text)
                cursor = Cursor(min(cursor.anchor, size), min(cursor.head, size))
            peer.cursor = cursor
        return entry

    async def _commit_loop(self) -> None:
        """Apply, commit and announce batches until the inbox is empty."""
        try:
            while self._inbox or self._deferred:
                self._run_deferred()
                if not self._inbox:
                    continue
                batch, self._inbox = self._inbox, []
                applied: list[tuple[Peer | None, Submit, asyncio.Future[int] | None, StoredOp | int]] = []
                for peer, sub, fut in batch:
                    try:
                        applied.append((peer, sub, fut, self._apply(peer, sub)))
                    except ProtocolError as exc:
                        if fut is not None:
                            fut.set_exception(exc)
                        elif peer is not None:
                            peer.send_msg(error_msg(exc.code, exc.message, exc.id))
                new = [r for *_, r in applied if isinstance(r, StoredOp)]
                if new:
                    await self._persist(new)
                self._announce(applied)
        except Exception:
            log.exception("document %s failed; disconnecting its clients so they resume from the store", self.id)
            self._fail()
        finally:
            self._committer = None
            if not self.peers:
                self._schedule_unload()

    async def _persist(self, new: list[StoredOp]) -> None:
        snapshot = None
        if self.rev - self.last_snapshot >= max(self.config.snapshot_every, len(self.text) // 1024):
            snapshot = (self.rev, str(self.text))
        try:
            await self.store.append(self.id, new, len(self.text), snapshot)
        except RevisionConflict:
            # Another process wrote these revisions: this process's view is
            # stale. Start over from the store; the clients resend.
            raise
        if snapshot is not None:
            self.last_snapshot = self.rev
        self.hub.ops_applied += len(new)

    def _announce(self, applied: list) -> None:
        """Acknowledge and broadcast a committed batch, in revision order."""
        for peer, sub, fut, result in applied:
            if isinstance(result, int):  # a resend of an op applied earlier
                if fut is not None:
                    fut.set_result(result)
                elif peer is not None:
                    peer.send_msg(ack_msg(sub.id, result))
                continue
            if fut is not None:
                fut.set_result(result.rev)
            elif peer is not None:
                peer.send_msg(ack_msg(sub.id, result.rev))
            cursor = peer.cursor if peer is not None else None
            self._broadcast(encode(op_msg(result.rev, result.op, result.client, cursor)), skip=peer)

    def _broadcast(self, frame: str, skip: Peer | None = None) -> None:
        for p in list(self.peers.values()):
            if p is not skip:
                p.send(frame)

    # -- between batches -------------------------------------------------------

    async def _quietly(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` when the in-memory state is all committed: now, or between two batches.

        ``fn`` runs synchronously there, so no batch can start while it looks.
        """
        if self.failed:
            raise DocumentFailed(self.id)
        if self._committer is None:
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

    def _fail(self) -> None:
        self.failed = True
        for peer, sub, fut in self._inbox:
            if fut is not None and not fut.done():
                fut.set_exception(DocumentFailed(self.id))
        self._inbox = []
        for _, fut in self._deferred:
            if not fut.done():
                fut.set_exception(DocumentFailed(self.id))
        self._deferred = []
        for peer in list(self.peers.values()):
            peer.kick(CLOSE_INTERNAL, "storage failed; reconnect to resume")
        self.hub._forget(self)


    def _schedule_unload(self) -> None:
        if self._unload_handle is not None or self.failed:
            return
        loop = asyncio.get_running_loop()
        self._unload_handle = loop.call_later(self.config.idle_unload_seconds, self._unload_if_idle)

    def _unload_if_idle(self) -> None:
        self._unload_handle = None
        if not self.peers and self._committer is None and not self._inbox:
            self.hub._forget(self)

    def snapshot(self) -> tuple[int, str]:
        """The committed revision and text (call between batches)."""
        return self.rev, str(self.text)


class Hub:
    """The open documents of one process."""

    def __init__(self, store: Store, config: HubConfig | None = None) -> None:
        self.store = store
        self.config = config or HubConfig()
        self.docs: dict[str, Document] = {}
        self._loading: dict[str, asyncio.Future[Document]] = {}
        self.ops_applied = 0

    async def document(self, doc_id: str) -> Document:
        """The open document ``doc_id``, loading it once however many ask at once."""
        doc = self.docs.get(doc_id)
        if doc is not None:
            return doc
        loading = self._loading.get(doc_id)
        if loading is None:
            loading = asyncio.get_running_loop().create_future()
            self._loading[doc_id] = loading
            try:
                state = await self.store.load(doc_id, self.config.history_depth)
                doc = Document(self, doc_id, state.rev, state.text, state.history)
                self.docs[doc_id] = doc
                loading.set_result(doc)
            except BaseException as exc:
                loading.set_exception(exc)
                loading.exception()  # mark retrieved if nobody else waits
                raise
            finally:
                del self._loading[doc_id]
            doc._schedule_unload()  # unloaded again unless someone joins
            return doc
        return await asyncio.shield(loading)

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
        """The committed revision and text of ``doc_id``."""
        doc = await self.document(doc_id)
        return await doc._quietly(doc.snapshot)

    async def replace(self, doc_id: str, text: str, op_id: str | None = None) -> int:
        """Replace the text of ``doc_id`` with ``text`` as one ordinary edit; returns its revision."""
        doc = await self.document(doc_id)
        rev, current = await doc._quietly(doc.snapshot)
        op = diff_op(current, text)
        return await doc.submit(None, Submit(rev, op, op_id or "http-" + secrets.token_hex(8), None))  # type: ignore[return-value]

    def _forget(self, doc: Document) -> None:
        if self.docs.get(doc.id) is doc:
            del self.docs[doc.id]

    async def close(self) -> None:
        """Let in-flight commits finish."""
        tasks = [d._committer for d in self.docs.values() if d._committer is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    @property
    def connections(self) -> int:
        return sum(len(d.peers) for d in self.docs.values())


def diff_op(old: str, new: str) -> ot.Operation:
    """The operation turning ``old`` into ``new`` by replacing only the middle that differs."""
    limit = min(len(old), len(new))
    prefix = 0
    while prefix < limit and old[prefix] == new[prefix]:
        prefix += 1
    suffix = 0
    while suffix < limit - prefix and old[-1 - suffix] == new[-1 - suffix]:
        suffix += 1
    return ot.from_splice(len(old), prefix, len(old) - prefix - suffix, new[prefix : len(new) - suffix])
