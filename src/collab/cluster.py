"""The cross-process part of the hub: other processes' operations and clients, and the backplane's lifecycle.

With a shared store (PostgreSQL) several processes commit to one document.
Each open document has a :class:`Replica`: it buffers what the backplane
announces (operations, joins, leaves, presence), knows when the store must
be read (a gap, a conflict, a missed message, a forged one), and integrates
it all between batches, in revision order, through the document's public
methods. With the deployment's key (:mod:`collab.seal`), every bundle on the
bus is sealed and the backplane drops the rest, so an announced commit comes
from a process of the deployment: it is applied as it is, and only if it
extends the copy exactly: the revision after this one, after the operation
it names, and spanning the whole text. Anything else (without a key, a gap,
a misfit) only makes the replica read the store, whose rows are what is
applied, so a garbled announcement cannot change a document. Commits and
selection moves are announced only once another process is known to have
the document open (its clients are on it, or it said something about it):
a document open on one process alone costs the bus nothing per edit.

The :class:`Cluster` is the hub's side: it starts the backplane, subscribes
to documents as they load, routes messages to their replica, re-reads after
a reconnect, and watches for crashed processes and missed commits. Who
orders each document (leases, forwarding to the owner) is its
:class:`~collab.ownership.Ownership`'s business.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable

from . import ot
from .aio import cancel_and_wait
from .forwarding import ForwardedAuthor
from .ownership import Ownership
from .hubconfig import DocumentFailed, HubCounters
from .metrics import ACK_LATENCY
from .peer import Peer, RemotePeer, announce_title
from .protocol import (
    Cursor, User, _cur, _usr, ack_msg, encode, error_msg, join_msg, leave_msg, op_msg, presence_msg,
)
from .seal import Seal
from .sequencer import reused
from .store.base import Store, StoredOp
from .titles import clean

if TYPE_CHECKING:
    from .backplane import Backplane

log = logging.getLogger("collab.hub")

#: Seconds after another process's commit (or a conflict) during which this
#: process commits to the document holding its turn in the store, instead of
#: optimistically (and likely losing the race, which costs a whole retry).
CONTENDED_SECONDS = 2.0


class Resync(Exception):
    """The store no longer holds the operations this process missed: reload the document."""


def user_of(value: object) -> User | None:
    """A :class:`User` from its JSON form (from another collab process)."""
    if isinstance(value, dict) and isinstance(value.get("name"), str) and isinstance(value.get("color"), str):
        return User(value["name"], value["color"])
    return None


def cursor_of(value: object) -> Cursor | None:
    if isinstance(value, dict) and type(value.get("anchor")) is int and type(value.get("head")) is int:
        return Cursor(value["anchor"], value["head"])
    return None


@dataclass(slots=True)
class RemoteOp:
    """An operation another process announced committing, checked for shape only.

    Never applied: the store's row of that revision is. Its cursor is shown
    if the stored row is the announced operation.
    """

    entry: StoredOp
    cursor: Cursor | None


def remote_op(item: object) -> RemoteOp | None:
    """``[rev, op, client, id, cursor]`` from the backplane as a :class:`RemoteOp`, or ``None`` if malformed."""
    if type(item) is not list or len(item) != 5:
        return None
    rev, op, client, op_id, cursor = item
    if type(rev) is not int or rev < 1 or type(client) is not str or type(op_id) is not str:
        return None
    try:
        op, _, _ = ot.checked(op)
    except ValueError:
        return None
    return RemoteOp(StoredOp(rev, op, client, op_id), cursor_of(cursor))


class Replica:
    """What one document knows of the other processes serving it.

    ``doc`` (a :class:`collab.document.Document`) provides ``id``, ``seq``
    (its sequencer), ``peers``, ``broadcast(frame, skip)``, ``trim()`` and
    ``take_queued(op_id)``; the replica calls them only between batches.
    """

    def __init__(self, doc: Any, store: Store, backplane: "Backplane | None", counters: HubCounters) -> None:
        self.doc = doc
        #: The document's sequencer (the same object for the document's life).
        self.seq = doc.seq
        self.store = store
        self.backplane = backplane
        self.counters = counters
        #: Clients of other processes on this document.
        self.peers: dict[str, RemotePeer] = {}
        self.ops: dict[int, RemoteOp] = {}
        self.events: list[dict] = []
        #: The highest revision known to be committed somewhere.
        self.known_rev = doc.seq.rev
        #: Read the store for missed operations before the next batch.
        self.check_store = False
        self.store_waiters: list[asyncio.Future[None]] = []
        #: Batches retried after a conflict, and operations learned from others (for metrics).
        self.conflicts = 0
        self.applied = 0
        #: Until then, commit holding the document's turn: other processes are writing it too.
        self.contended_until = 0.0
        #: Authors of submits other processes forwarded here, by (process, client).
        self.forwarded: dict[tuple[str, str], ForwardedAuthor] = {}
        #: The deployment's seal (set by the hub once the backplane started), if the store has a key:
        #: then every announcement comes from a process of the deployment (the backplane dropped the rest).
        self.seal: Seal | None = None
        #: Operations of sealed announcements, by revision, each with the id of the op it must follow.
        self.sealed: dict[int, tuple[RemoteOp, str]] = {}
        #: Whether another process has the document open (it has clients on it, or said something about
        #: it). Until then no other process reads what this one commits or where its clients' selections
        #: are, so neither goes on the bus; joins and leaves always do (that is how the others find out).
        #: Cleared when the other processes' last client leaves.
        self.followed = False
        #: Clients here whose selection moved while no other process followed (told once one does).
        self.unannounced_moves: set[str] = set()

    # -- taking messages ------------------------------------------------------------

    def on_message(self, msg: dict) -> bool:
        """Buffer a backplane message (from another process); ``True`` if the document has something to
        integrate."""
        kind = msg.get("t")
        if not self.followed and kind != "leave":
            self.follow()
        if kind == "ops":
            ops = msg.get("ops")
            if not self._take_sealed(msg):
                for item in ops if type(ops) is list else (None,):
                    self._take_op(item)
        elif kind in ("join", "leave", "presence") and isinstance(msg.get("client"), str):
            self.events.append(msg)
        elif kind == "head":  # another process began announcing: the store may hold what it did before
            rev = msg.get("rev")
            if type(rev) is not int or rev <= self.seq.rev:
                return False
            self.check_store = True
        elif kind == "title":  # set by hand in another process: tell the editors here at once
            title = msg.get("title")
            announce_title(self.doc.peers.values(), clean(title) or None if isinstance(title, str) else None)
            return False
        else:
            return False
        return True

    def _take_op(self, item: object) -> None:
        """Note an announced commit: the store is read for it; the announcement keeps only its cursor."""
        self.check_store = True  # whatever it says: the rows in the store are what gets applied
        remote = remote_op(item)
        if remote is None:
            return
        rev = remote.entry.rev
        held = self.ops.get(rev)
        if held is not None and held.entry != remote.entry:
            del self.ops[rev]  # two versions of one revision: take the cursor of neither
            return
        self.ops[rev] = remote

    def _take_sealed(self, msg: dict) -> bool:
        """Keep the operations of a sealed announcement to apply as they are (if they fit then);
        ``False`` without a seal, without the op they follow, or if they are not consecutive (then the
        announcement is only a hint)."""
        prev, at, ops = msg.get("prev"), msg.get("at"), msg.get("ops")
        if self.seal is None or type(prev) is not str or type(at) is not float or type(ops) is not list:
            return False
        remotes = [remote_op(item) for item in ops]
        if not remotes or any(r is None or r.entry.rev != remotes[0].entry.rev + i  # type: ignore[union-attr]
                               for i, r in enumerate(remotes)):
            return False
        for remote in remotes:
            assert remote is not None
            remote.entry.time = at
            self.sealed[remote.entry.rev] = (remote, prev)
            prev = remote.entry.id
        return True

    def sync_later(self, rev: int | None = None) -> bool:
        """Note that the store may hold more (revision ``rev`` at least); ``True`` if that is news."""
        if rev is None:
            self.check_store = True
        elif rev > self.known_rev:
            self.known_rev = rev
        else:
            return False
        return True

    def wait_for_store(self) -> "asyncio.Future[None]":
        """A future set once everything committed so far (by anyone) is integrated."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.store_waiters.append(fut)
        return fut

    def behind(self) -> bool:
        """Whether there is other processes' work to integrate before the next batch."""
        return bool(self.ops or self.sealed or self.events or self.check_store or self.store_waiters
                    or self.known_rev > self.seq.rev)

    # -- integrating ------------------------------------------------------------------

    async def catch_up(self) -> None:
        """Integrate other processes' operations and their presence.

        Sealed operations that extend the copy exactly are applied as they
        are. Otherwise an announcement only says that the store may hold
        more: the operations applied are the store's rows, whatever the
        announcement carried (a forged or garbled message cannot change a
        document). An announced cursor is shown only with the stored
        operation it was announced with.
        """
        seq = self.doc.seq
        if self.sealed:
            self._apply_sealed()
        if self._needs_store():
            self.check_store = False
            waiters, self.store_waiters = self.store_waiters, []
            # Announced before this read: if real, the read shows them (they are published after the commit).
            announced, self.ops = self.ops, {}
            known_before = self.known_rev
            try:
                missed = await self.store.ops_since(self.doc.id, seq.rev)
            except BaseException as exc:
                _refuse(waiters, lambda e=exc: e if isinstance(e, Exception) else DocumentFailed(self.doc.id))
                raise
            if missed and missed[0].rev > seq.rev + 1:
                _refuse(waiters, lambda: DocumentFailed(self.doc.id))
                raise Resync(self.doc.id)
            if self.known_rev == known_before:  # nothing newer learned during the read: it settles the target
                self.known_rev = seq.rev
            for entry in missed:
                if entry.rev == seq.rev + 1:
                    remote = announced.get(entry.rev) or self.ops.get(entry.rev)
                    same = remote is not None and _same_op(remote.entry, entry)
                    self.integrate(entry, remote.cursor if same else None)
            # Announcements that arrived during the read may be ahead of it: the next turn reads again.
            self.ops = {rev: remote for rev, remote in self.ops.items() if rev > seq.rev}
            for w in waiters:
                if not w.done():
                    w.set_result(None)
        self._process_events()

    def integrate_now(self) -> bool:
        """Integrate at once what needs no read of the store (the document is between batches):
        sealed operations that extend the copy, then presence, as :meth:`catch_up` would.
        ``True`` if nothing is left for :meth:`catch_up`."""
        if self.sealed:
            self._apply_sealed()
        if self.ops or self.sealed or self._needs_store():
            return False
        if self.events:
            self._process_events()
        return True

    def _needs_store(self) -> bool:
        """Whether integrating needs a read of the store: a hint or a gap, someone waiting for it, a
        revision known committed and not here, or presence at a revision this copy has not reached."""
        rev = self.seq.rev
        return (self.check_store or bool(self.store_waiters) or self.known_rev > rev
                or any(e["t"] == "presence" and isinstance(e.get("rev"), int) and e["rev"] > rev for e in self.events))

    def _apply_sealed(self) -> None:
        """Apply the sealed operations that extend the copy exactly, in order; a misfit or a gap
        makes the next read of the store settle what was committed."""
        seq, sealed = self.seq, self.sealed
        while True:
            held = sealed.pop(seq.rev + 1, None)
            if held is None:
                break
            remote, prev = held
            if (seq.rev <= seq.history_start or seq.entry(seq.rev).id != prev
                    or ot.base_length(remote.entry.op) != len(seq.text)):
                self.check_store = True
                break
            self.integrate(remote.entry, remote.cursor)
            self.counters.remote_sealed += 1
        if sealed:
            self.sealed = {rev: held for rev, held in sealed.items() if rev > seq.rev}
            if self.sealed:  # ahead of a gap (a lost message): the store has what is between
                self.check_store = True

    def integrate(self, entry: StoredOp, cursor: Cursor | None) -> None:
        """Apply another process's committed operation (the next revision) and show it to the clients here."""
        doc = self.doc
        doc.seq.integrate(entry)
        author_remote = self.peers.get(entry.client)
        if author_remote is not None:  # everyone else's selection moves lazily
            author_remote.cursor, author_remote.cursor_rev = cursor, entry.rev
        doc.trim()
        self.applied += 1
        self.counters.remote_applied += 1
        if self.store.may_conflict:
            self.contended_until = asyncio.get_running_loop().time() + CONTENDED_SECONDS
        if entry.rev > self.known_rev:
            self.known_rev = entry.rev
        author = self._answer_resends(entry)
        if author is not None:  # a client here whose edit the owner ordered: its selection is the edit's
            author.cursor, author.cursor_rev = cursor, entry.rev
        doc.broadcast(encode(_op_msg(entry, cursor)), skip=author)

    def _answer_resends(self, entry: StoredOp) -> Peer | None:
        """Answer the queued submits of ``entry``'s id: ack a resend, refuse a reuse with new content.

        Its author reconnected here after the other process committed it.
        Returns the connection that resent it (it gets the ack, not the op).
        """
        author: Peer | None = None
        items = self.doc.take_queued(entry.id)
        for item in items:
            # The one submit of that id, from the connection that made the op: the op is that submit (as
            # its owner transformed it), since an earlier one of the id would still wait here, or be known
            # here once committed. Otherwise (another client, several copies) compare, as the owner would.
            own = len(items) == 1 and item.peer is not None and item.peer.id == entry.client
            refused = None if own or self.doc.seq.is_resend(item.sub, entry.rev) else reused(entry.id, entry.rev)
            if item.reply is not None:
                if refused is None:
                    item.reply.set_result(entry.rev)
                    ACK_LATENCY.since(item.arrived)
                else:
                    item.reply.set_exception(refused)
            elif item.peer is not None and refused is not None:
                item.peer.send_msg(error_msg(refused.code, refused.message, refused.id))
            elif item.peer is not None:
                item.peer.send_msg(ack_msg(entry.id, entry.rev))
                ACK_LATENCY.since(item.arrived)
                author = item.peer
        return author

    def _process_events(self) -> None:
        """Other processes' joins, leaves and presence, in arrival order (between batches)."""
        doc, seq = self.doc, self.doc.seq
        events, self.events = self.events, []
        left = joined = False
        for e in events:
            client = e["client"]
            if e["t"] == "leave":
                for key in [k for k in self.forwarded if k[1] == client]:
                    del self.forwarded[key]
                if self.peers.pop(client, None) is not None:
                    doc.broadcast(encode(leave_msg(client)))
                    left = True
                continue
            remote = self.peers.get(client)
            user = user_of(e.get("user"))
            if remote is None:
                remote = self.peers[client] = RemotePeer(client, str(e.get("proc", "")), user, None)
                doc.broadcast(encode(join_msg(client, user)))
                joined = True
            elif user is not None:
                remote.user = user
            if e["t"] == "presence":
                rev = e.get("rev")
                remote.cursor = seq.move_cursor(cursor_of(e.get("cursor")), rev if type(rev) is int else -1)
                remote.cursor_rev = seq.rev
                doc.broadcast(encode(presence_msg(client, seq.rev, remote.cursor, remote.user)))
        if left and not self.peers and not self.forwarded:  # the others' last client left: quiet until one joins
            self.followed = False
        if joined and not doc.peers and doc.on_clients_elsewhere is not None:
            doc.on_clients_elsewhere(doc)

    # -- conflicts ------------------------------------------------------------------------

    def contended(self) -> bool:
        """Whether other processes wrote this document lately (so commit holding its turn)."""
        return bool(self.contended_until) and asyncio.get_running_loop().time() < self.contended_until

    def lost_race(self) -> None:
        """A batch lost its revisions to another process: read what it committed before retrying."""
        self.conflicts += 1
        self.counters.conflicts += 1
        self.contended_until = asyncio.get_running_loop().time() + CONTENDED_SECONDS
        self.check_store = True

    def fail(self) -> None:
        """The document failed: whoever waits for the store to be read gets :class:`DocumentFailed`."""
        waiters, self.store_waiters = self.store_waiters, []
        _refuse(waiters, lambda: DocumentFailed(self.doc.id))

    # -- telling the others -------------------------------------------------------------

    def follow(self) -> None:
        """Another process has the document open: announce from now on, starting with the revision
        reached (it reads the store for what was not announced) and where this process's clients are."""
        self.followed = True
        if self.backplane is not None:
            self.backplane.publish(self.doc.id, {"t": "head", "rev": self.seq.rev})
            for client in self.unannounced_moves:
                peer = self.doc.peers.get(client)
                if peer is not None:
                    self.moved(peer, self.seq.cursor_now(peer))
        self.unannounced_moves.clear()

    def forwarded_author(self, proc: str, client: str) -> ForwardedAuthor:
        """The author standing for ``client`` of process ``proc``, whose submits were forwarded here
        (each submit carries its author's name)."""
        if not self.followed:
            self.follow()
        author = self.forwarded.get((proc, client))
        if author is None:
            assert self.backplane is not None
            author = self.forwarded[(proc, client)] = ForwardedAuthor(self.doc.id, client, proc, self.backplane.send)
        return author

    def info(self, peer: Peer) -> dict:
        return {"user": _usr(peer.user), "cursor": _cur(self.doc.seq.cursor_now(peer)), "rev": self.doc.seq.rev}

    def joined(self, peer: Peer) -> None:
        if self.backplane is not None:
            self.backplane.set_peer(self.doc.id, peer.id, self.info(peer))
            self.backplane.publish(self.doc.id, {"t": "join", "client": peer.id, "user": _usr(peer.user)})

    def left(self, peer: Peer) -> None:
        self.unannounced_moves.discard(peer.id)
        if self.backplane is not None:
            self.backplane.forget_peer(self.doc.id, peer.id)
            self.backplane.publish(self.doc.id, {"t": "leave", "client": peer.id})

    def moved(self, peer: Peer, cursor: Cursor | None) -> None:
        if self.backplane is not None:
            self.backplane.set_peer(self.doc.id, peer.id, self.info(peer))  # what a process that opens it reads
            if not self.followed:
                self.unannounced_moves.add(peer.id)
                return
            self.backplane.publish(self.doc.id, {"t": "presence", "client": peer.id, "rev": self.doc.seq.rev,
                                                 "cursor": _cur(cursor), "user": _usr(peer.user)})

    def committed(self, ops: list[list]) -> None:
        """Announce ``[rev, op, client, id, cursor]`` entries this process committed; with a seal, with
        the id of the op before them (if still in the history) and the commit time, to apply them by."""
        if self.backplane is not None and ops and self.followed:
            peers = self.peers
            if peers:
                for rev, _, client, _, cursor in ops:
                    remote = peers.get(client)
                    if remote is not None:  # another process's client, whose edit it forwarded here
                        remote.cursor, remote.cursor_rev = cursor_of(cursor), rev
            msg = {"t": "ops", "ops": ops}
            seq, first = self.seq, ops[0][0]
            if self.seal is not None and seq.history_start < first - 1 <= seq.rev:
                msg["prev"], msg["at"] = seq.entry(first - 1).id, time.time()
            self.backplane.publish(self.doc.id, msg)

    def reannounce(self) -> None:
        """Record and announce this process's clients again (after the backplane lost them)."""
        for peer in self.doc.peers.values():
            self.joined(peer)

    def adopt_peers(self, infos: dict[str, dict], dead: set[str]) -> bool:
        """Take the presence record of other processes' clients (on load, or after a resync).

        Clients no longer in the record, or of dead processes, are announced
        as left. ``True`` if there is something to integrate.
        """
        own = self.backplane.process_id if self.backplane is not None else ""
        current = {c: i for c, i in infos.items() if i.get("proc") not in dead and i.get("proc") != own}
        if current and not self.followed:
            if self.doc.peers:  # (after a resync) they may have missed what this process's clients did
                self.follow()
            else:  # (on load) nothing to tell them yet: they hear of this process from its clients' joins
                self.followed = True
        if self.backplane is not None:
            for client, info in infos.items():
                if info.get("proc") in dead:  # left behind by a crashed process: tidy up
                    self.backplane.forget_peer(self.doc.id, client)
        for client in list(self.peers):
            if client not in current:
                self.events.append({"t": "leave", "client": client})
        for client, info in current.items():
            if client not in self.peers:
                self.events.append({"t": "presence", "client": client, "proc": info.get("proc", ""),
                                    "user": info.get("user"), "cursor": info.get("cursor"),
                                    "rev": info.get("rev", -1)})
        return bool(self.events)

    def drop_processes(self, dead: set[str]) -> bool:
        """Announce the clients of processes whose heartbeat expired as left; ``True`` if any."""
        for remote in list(self.peers.values()):
            if remote.proc in dead:
                self.events.append({"t": "leave", "client": remote.id})
                if self.backplane is not None:
                    self.backplane.forget_peer(self.doc.id, remote.id)
        return bool(self.events)


def _same_op(a: StoredOp, b: StoredOp) -> bool:
    """Whether two entries are one operation (whatever else a store records with it)."""
    return a.rev == b.rev and a.op == b.op and a.client == b.client and a.id == b.id


def _op_msg(entry: StoredOp, cursor: Cursor | None) -> dict:
    return op_msg(entry.rev, entry.op, entry.client, cursor, entry.id)


def _refuse(waiters: list["asyncio.Future[None]"], make_exc: Callable[[], Exception]) -> None:
    for w in waiters:
        if not w.done():
            w.set_exception(make_exc())


class Cluster:
    """The hub's link to the other processes: one backplane, the documents it subscribed to, a watch.

    ``docs`` and ``loading`` are the hub's own dicts of open and loading
    documents (read here, never changed).
    """

    def __init__(self, backplane: "Backplane", store: Store, docs: dict, loading: dict) -> None:
        self.backplane = backplane
        self.store = store
        self.docs = docs
        self.loading = loading
        #: Who orders each document (leases, forwarding).
        self.ownership = Ownership(backplane, store, docs)
        self.started = False
        self.closing = False
        self._start_lock = asyncio.Lock()
        self._sub_lock = asyncio.Lock()
        self._watcher: asyncio.Task[None] | None = None
        #: Backplane messages for documents being loaded, replayed once they are.
        self._early: dict[str, list[dict]] = {}
        #: Seals and opens announcements of commits, with the store's key (``None`` if it has none).
        self.seal: Seal | None = None

    async def start(self) -> None:
        """Connect the backplane and start the watch (once)."""
        async with self._start_lock:
            if self.started:
                return
            await self.ownership.open()
            key = await self.store.cluster_key()
            self.seal = Seal(key) if key else None
            self.backplane.seal = self.seal  # every bundle on the bus sealed, and checked
            await self.backplane.start(self._on_message, self._on_resync, self.ownership.on_direct)
            self._watcher = asyncio.create_task(self._watch(), name="collab-hub-watch")
            self.started = True

    async def subscribe(self, doc_id: str) -> tuple[dict[str, dict], set[str]]:
        """Subscribe to ``doc_id`` before it is loaded (nothing committed after the load can be missed).

        Returns the presence record of its clients and which of their processes are dead.
        """
        await self.start()
        async with self._sub_lock:
            await self.backplane.subscribe(doc_id)
        infos = await self.backplane.peers(doc_id)
        dead = await self.backplane.dead({str(i.get("proc")) for i in infos.values()})
        return infos, dead

    async def place(self, doc_id: str) -> str | None:
        """Take ``doc_id``'s lease if free (before loading it); the owner to forward to, or ``None``."""
        await self.start()
        return await self.ownership.place(doc_id)

    def early_messages(self, doc_id: str) -> list[dict]:
        """What arrived for ``doc_id`` while it was loading (taken: call once)."""
        return self._early.pop(doc_id, [])

    def forget(self, doc_id: str) -> None:
        """``doc_id`` was closed: unsubscribe (unless it is open or loading again by then)."""
        self._early.pop(doc_id, None)
        if self.started and not self.closing:
            asyncio.get_running_loop().create_task(self._unsubscribe(doc_id))

    async def _unsubscribe(self, doc_id: str) -> None:
        async with self._sub_lock:
            if doc_id not in self.docs and doc_id not in self.loading:
                try:
                    await self.backplane.unsubscribe(doc_id)
                except Exception as exc:
                    log.warning("unsubscribing from %s failed: %s", doc_id, exc)
                await self.ownership.release(doc_id)

    def _on_message(self, doc_id: str, msg: dict) -> None:
        doc = self.docs.get(doc_id)
        if doc is not None:
            doc.on_remote(msg)
        elif doc_id in self.loading:
            self._early.setdefault(doc_id, []).append(msg)

    def _on_resync(self) -> None:
        """Messages may have been lost: re-read the store, re-announce our clients, re-read others'."""
        for doc in list(self.docs.values()):
            doc.sync_later()
            doc.replica.reannounce()
        if self.docs:
            asyncio.get_running_loop().create_task(self._refresh_peers(list(self.docs.values())))

    async def _refresh_peers(self, docs: Iterable[Any]) -> None:
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
        docs = list(self.docs.values())
        procs = {r.proc for d in docs for r in d.replica.peers.values()}
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

    async def stop_watching(self) -> None:
        """Stop the watch (:meth:`close` does; so does a test in which only the bus may bring news)."""
        await cancel_and_wait(self._watcher)
        self._watcher = None

    async def close(self) -> None:
        """Stop the watch and the backplane."""
        self.closing = True
        await self.stop_watching()
        await self.ownership.close(self.started)
        if self.started:
            await self.backplane.close()
        if self.ownership.leases is not None:
            await self.ownership.leases.close()
