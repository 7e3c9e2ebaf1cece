"""One open document's asyncio session: its inbox, its one commit pipeline, and who is connected.

A :class:`Document` wraps the document's :class:`~collab.sequencer.Sequencer`.
Submits wait in a bounded inbox; one commit loop takes them in batches
(*group commit*), orders each batch with the sequencer and writes it to the
store. A batch is acknowledged and broadcast only once its commit has landed,
so nothing is ever shown that a crash could take back.

Every store goes through the same pipeline: a batch becomes a
:class:`Flight`, and :meth:`Document._landed` settles flights in order,
with one path for success (announce), for a lost race with another process
(roll back, integrate, retry) and for failure (refuse everything, close the
sessions). A store that keeps appends in order (``store.pipelined``) has
up to ``MAX_IN_FLIGHT`` batches in flight; any other has one, awaited.

Joins, presence and other processes' work (through the
:class:`~collab.cluster.Replica`) are handled between batches, when the
in-memory state is durable: every client's stream stays in revision order.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from typing import TYPE_CHECKING, Callable, Iterator, TypeVar

from . import fanout
from .cluster import Replica, Resync
from .fanout import Flight, Item
from .forwarding import ForwardedAuthor, Forwarder
from .hubconfig import DocumentFailed, HubConfig, HubCounters
from .peer import Peer, RemotePeer, may_edit
from .protocol import (
    BAD_REV, CLOSE_INTERNAL, CLOSE_RESTART, STALE_REV, Presence, ProtocolError, Submit, ack_msg, encode,
    error_msg, join_msg, leave_msg, peer_json, presence_msg,
)
from .sequencer import Sequencer
from .store.base import DocState, RevisionConflict, Store, StoredOp

if TYPE_CHECKING:
    from .backplane import Backplane

log = logging.getLogger("collab.hub")

#: A document of N characters is snapshotted every N / SNAPSHOT_BYTES_PER_OP operations at the most:
#: snapshots cost about this many characters per operation, whatever the document's size.
SNAPSHOT_BYTES_PER_OP = 256
#: Batches of one document whose commits may be in flight at once (pipelined stores).
MAX_IN_FLIGHT = 4
T = TypeVar("T")


class Document:
    """The live state of one open document (see the module's docstring)."""

    def __init__(self, doc_id: str, state: DocState, store: Store, config: HubConfig, counters: HubCounters,
                 backplane: "Backplane | None" = None, on_close: Callable[["Document"], None] | None = None) -> None:
        self.id = doc_id
        self.store = store
        self.config = config
        self.counters = counters
        self._on_close = on_close
        self.seq = Sequencer(state.rev, state.text, state.history, config.history_depth, config.max_doc_chars)
        self.shared = backplane is not None or store.may_conflict  # other processes may commit to it
        self.replica = Replica(self, store, backplane, counters)
        self.forwarder = Forwarder(doc_id, backplane.send) if backplane is not None else None
        self.peers: dict[str, Peer] = {}
        #: Joins under way (placed, not yet admitted): clients of this process's own, all but in.
        self.joining = 0
        self.last_snapshot = state.rev
        self._inbox: list[Item] = []
        self._inbox_size = config.inbox_size
        self._room_waiters: list[asyncio.Future[None]] = []
        self._deferred: list[tuple[Callable[[], object], asyncio.Future]] = []
        self._committer: asyncio.Task[None] | None = None
        self._unload_handle: asyncio.TimerHandle | None = None
        self.failed = False
        #: With a pipelined store the next batch is ordered while the previous one is written.
        self.pipelined = store.pipelined
        self._max_in_flight = MAX_IN_FLIGHT if self.pipelined else 1
        #: Races lost to other processes since the last batch that landed (then: hold the turn).
        self._losses = 0
        #: A batch was refused: before the next, look its op ids up in the store (see ``_ids_in_store``).
        self._ids_doubted = False
        self._flight: deque[Flight] = deque()
        self._settle_waiters: list[asyncio.Future[None]] = []
        #: No new batch is ordered here (the lease is being handed over): submits wait in the inbox.
        self._held = False
        #: Called when the document's clients are all on other processes: the last one here left, or
        #: another process's joined while none is here (with a cluster: hand the lease to where they are).
        self.on_clients_elsewhere: Callable[["Document"], None] | None = None
        #: Whether this process holds the document's lease (with a cluster): then no other process
        #: orders it, and having integrated others' commits lately is no reason to commit holding its
        #: row lock (a lost race still is).
        self.leased: Callable[[], bool] = lambda: False

    # -- the sequencer's state, for readers ----------------------------------------

    @property
    def rev(self) -> int:
        return self.seq.rev

    @property
    def text(self):
        return self.seq.text

    @property
    def history(self) -> deque[StoredOp]:
        return self.seq.history

    @property
    def history_start(self) -> int:
        return self.seq.history_start

    def snapshot(self) -> tuple[int, str]:
        """The committed revision and text (call between batches)."""
        return self.seq.rev, str(self.seq.text)

    async def read(self) -> tuple[int, str]:
        """The committed revision and text, at the next point where everything in memory is committed."""
        return await self._quietly(self.snapshot)

    # -- joining and leaving -------------------------------------------------

    async def join(self, peer: Peer, since: int | None) -> None:
        """Admit ``peer``: queue its ``welcome`` and tell the others.

        Raises :class:`ProtocolError` (``bad_rev``) for a ``since`` in the future.
        """
        if self.shared and since is not None and since > self.seq.rev:
            await self.sync()  # it may come from another process that is ahead of this one
        await self._quietly(lambda: self._admit(peer, since))

    def _admit(self, peer: Peer, since: int | None) -> None:
        seq = self.seq
        if since is not None and since > seq.rev:
            raise ProtocolError(BAD_REV, f"'since' is {since} but the document is at revision {seq.rev}")
        if self._unload_handle is not None:
            self._unload_handle.cancel()
            self._unload_handle = None
        peers = [peer_json(p.id, p.user, seq.cursor_now(p)) for p in self._holders()]
        welcome: dict = {
            "type": "welcome", "client": peer.id, "rev": seq.rev, "role": peer.role, "peers": peers,
            "max_message_bytes": self.config.max_message_bytes,
        }
        if since is not None and since >= seq.history_start:
            welcome["ops"] = [o.to_json() for o in seq.after(since)]
        else:
            welcome["text"] = str(seq.text)
        peer.doc = self
        if peer.byte_limit is None:
            peer.byte_limit = self.config.queue_bytes
        peer.greet(encode(welcome))
        self.broadcast(encode(join_msg(peer.id, peer.user)))
        self.peers[peer.id] = peer
        self.replica.joined(peer)

    def remove(self, peer: Peer) -> None:
        """Forget ``peer`` and tell the others it left."""
        if self.peers.pop(peer.id, None) is None:
            return
        self.broadcast(encode(leave_msg(peer.id)))
        self.replica.left(peer)
        if not self.peers:
            self.schedule_unload()
            if self.on_clients_elsewhere is not None:
                self.on_clients_elsewhere(self)

    def kick_all(self, code: int, reason: str) -> None:
        """Ask every connection to close (after what is queued for it)."""
        for peer in list(self.peers.values()):
            peer.kick(code, reason)

    # -- presence ------------------------------------------------------------

    async def presence(self, peer: Peer, msg: Presence) -> None:
        """Record ``peer``'s selection (moved to the current revision) and broadcast it."""
        if self.shared and msg.rev > self.seq.rev:
            await self.sync()
        await self._quietly(lambda: self._presence(peer, msg))

    def _presence(self, peer: Peer, msg: Presence) -> None:
        seq = self.seq
        if msg.rev > seq.rev:
            raise ProtocolError(BAD_REV, f"presence 'rev' is {msg.rev} but the document is at revision {seq.rev}")
        # Too old to move: None; the client's next presence puts it right.
        cursor = seq.move_cursor(msg.cursor, msg.rev)
        if msg.user is not None:
            peer.user = msg.user
        peer.cursor, peer.cursor_rev = cursor, seq.rev
        if peer.id in self.peers:
            self.broadcast(encode(presence_msg(peer.id, seq.rev, cursor, peer.user)), skip=peer)
            self.replica.moved(peer, cursor)

    # -- submitting ----------------------------------------------------------

    def offer(self, peer: Peer, sub: Submit) -> bool:
        """Queue a connection's ``sub`` for the next batch if that needs no waiting.

        Returns ``False``, having done nothing, when it does (the inbox is
        full, or the document must first read the store): then ``await
        submit(peer, sub)``. The usual case costs no coroutine.
        Raises :class:`ProtocolError` as :meth:`submit` does.
        """
        if peer.role != "edit":
            may_edit(peer, sub.id)
        seq = self.seq
        if (self._full() or (self.shared and sub.rev > seq.rev)
                or (sub.rev < seq.history_start and sub.id not in seq.ids)):
            return False
        if self._committer is None and not self._inbox and self.forwarding and sub.id not in seq.ids:
            # Nothing queued before it: sent to the owner now, as the commit loop's next turn would.
            self.forwarder.take([Item(peer, sub)], seq.knows)  # type: ignore[union-attr]
            return True
        self._inbox.append(Item(peer, sub))
        if self._committer is None:
            self._wake()
        return True

    async def submit(self, peer: Peer | None, sub: Submit) -> int | None:
        """Queue ``sub`` for the next batch, waiting for room in the inbox.

        For a peer, the answer (``ack`` or ``error``) goes to its outbox and
        this returns ``None`` once queued. For ``peer=None`` (the HTTP API) it
        waits and returns the revision, or raises :class:`ProtocolError`.
        """
        if peer is not None:
            may_edit(peer, sub.id)
        if self.shared and sub.rev > self.seq.rev:
            await self.sync()  # based on a revision this process has not seen yet
        seq = self.seq
        if sub.rev < seq.history_start and not seq.knows(sub.id):
            # Only the store can tell whether an op this old was applied (then only its id can be compared).
            rev = await self.store.find_op(self.id, sub.id)
            if rev is None:
                raise ProtocolError(STALE_REV, f"revision {sub.rev} is older than the kept history "
                                    f"(from {seq.history_start}); rejoin and resend", sub.id)
            if peer is not None:
                peer.send_msg(ack_msg(sub.id, rev))
            return None if peer is not None else rev
        while self._full():
            await self._room()
        reply = None if peer is not None else asyncio.get_running_loop().create_future()
        self._inbox.append(Item(peer, sub, reply))
        self._wake()
        return None if reply is None else await reply

    def hold_batches(self) -> None:
        """Order no new batch until :meth:`resume_batches`; what is in flight lands, submits wait in the
        inbox. A hand-over holds them, so that edits arriving meanwhile (an HTTP client's, a client
        joining) cannot keep :meth:`settle` from returning, and the lease from moving on."""
        self._held = True

    def resume_batches(self) -> None:
        """Order what waited while :meth:`hold_batches` held it (or forward it, if another process owns
        the document now)."""
        self._held = False
        if self._inbox:
            self._wake()

    @property
    def waiting(self) -> bool:
        """Whether submits wait in the inbox, not yet ordered (once a hand-over settled: those it held)."""
        return bool(self._inbox)

    def _orderable(self) -> bool:
        """Whether the inbox has submits the commit loop may take now (held ones wait, unless forwarded)."""
        return bool(self._inbox) and (not self._held or self.forwarding)

    def _full(self) -> bool:
        """Whether the inbox has no room; submits forwarded to the owner and not yet answered count
        too, so a client of a process that forwards is held back as one of the owner's is."""
        waiting = len(self._inbox)
        if self.forwarder is not None and self.forwarder.awaiting:
            waiting += len(self.forwarder.awaiting)
        return waiting >= self._inbox_size

    async def _room(self) -> None:
        """Return once the commit loop took the inbox (a full inbox holds its submitters here)."""
        if self.failed:
            raise DocumentFailed(self.id)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._room_waiters.append(fut)
        self._wake()
        await fut

    # -- the commit loop -------------------------------------------------------

    def _wake(self) -> None:
        if self._committer is None and not self.failed:
            self._committer = asyncio.create_task(self._commit_loop())

    async def _commit_loop(self) -> None:
        """Integrate others' work, then order, commit and announce batches, until there is nothing left."""
        replica = self.replica
        shared = self.shared  # only then can other processes' work be waiting
        try:
            while not self.failed and (self._orderable() or self._deferred or (shared and replica.behind())):
                # Lost a race (or others write this document right now): take the document's turn
                # in the store, so this commit cannot lose the race (a hot document stays fair).
                # Not while forwarding: the owner commits, so there is no race here to lose (and a
                # turn taken only to forward would hold the row the owner is appending to).
                if self.forwarding:
                    self._losses = 0
                    exclusive = False
                else:
                    exclusive = self._losses or (self._orderable() and replica.contended_until
                                                 and replica.contended() and not self.leased())
                if self._flight and (self._deferred or (shared and replica.behind()) or exclusive
                                     or len(self._flight) >= self._max_in_flight):
                    # Joins, presence and exclusive turns see only committed state (and the pipeline stays short).
                    await self._settled()
                    continue
                if exclusive:
                    if self._losses > 20:
                        raise RuntimeError(f"document {self.id}: 20 conflicts in a row; giving up")
                    await self._exclusive_turn()
                else:
                    await self._turn()
        except DocumentFailed:
            pass  # a commit failed while this loop waited: already handled in _landed
        except Resync:
            log.warning("document %s: missed operations are no longer in the store; clients reconnect", self.id)
            self._fail(CLOSE_RESTART, "this server fell behind; reconnect to resume")
        except Exception:
            log.exception("document %s failed; disconnecting its clients so they resume from the store", self.id)
            self._fail()
        finally:
            self._committer = None
            if not self.peers and not self._flight:
                self.schedule_unload()

    async def _exclusive_turn(self) -> Flight | None:
        """A :meth:`_turn` holding the document's turn in the store, settled (acked, announced) once that
        transaction committed: only then is it durable and visible to others. If it fails, nothing is acked."""
        flight = None
        try:
            async with self.store.exclusive(self.id):
                flight = await self._turn(settle=False)
        except BaseException as exc:
            if flight is not None and flight.error is None:
                flight.error = exc
            self._landed()
            raise
        self._landed()
        return flight

    async def _turn(self, settle: bool = True) -> Flight | None:
        """One turn: catch up, run what waited, order one batch with the sequencer and commit it.

        Returns the batch's flight (``None`` if none, or pipelined): ``lost`` if another process took its
        revisions (rolled back and queued again). With ``settle=False`` the caller settles it (:meth:`_landed`).
        """
        if self.forwarding and self._inbox:  # the owner orders them: no need to catch up first
            self._forward()
        if self.shared and self.replica.behind():
            await self.replica.catch_up()
        self._run_deferred()
        if self.forwarding and self._inbox:  # and what arrived while this turn read the store
            self._forward()
        if not self._orderable():
            return None
        batch, self._inbox = self._inbox, []
        if self._room_waiters:
            fanout.resolve(self._room_waiters)
            self._room_waiters = []
        earlier = await self._ids_in_store(batch)
        if earlier and max(earlier.values()) > self.seq.rev:  # committed elsewhere, not integrated here yet:
            self._inbox = batch + self._inbox  # the integration answers them (an ack now would come before it)
            self.replica.sync_later(max(earlier.values()))
            return None
        saved = self.seq.save(self._holders()) if self.store.may_conflict else None
        apply = self.seq.apply
        items: list[Item] = []
        new: list[StoredOp] = []
        for item in batch:
            sub = item.sub
            try:
                result = (earlier and earlier.get(sub.id)) or apply(sub, item.peer)
            except ProtocolError as exc:  # refused: answered here, and left out of the batch
                if item.reply is not None:
                    item.reply.set_exception(exc)
                elif item.peer is not None:
                    item.peer.send_msg(error_msg(exc.code, exc.message, exc.id))
                continue
            item.result = result
            items.append(item)
            if type(result) is StoredOp:
                new.append(result)
        if not items:
            return None
        flight = Flight(items, new, saved, self.last_snapshot)
        self._flight.append(flight)
        if self.pipelined and settle:
            self._start(flight)
            return None
        try:  # any other store: write and wait, then settle the flight as a pipelined one is
            if new:
                text = self.seq.text
                await self.store.append(self.id, new, len(text), self._snapshot_due(), text.utf8_bytes)
        except BaseException as exc:  # cancelled too: the outcome is unknown, so nothing is acknowledged
            flight.error = exc
        flight.done = True
        if settle:
            self._landed()
        if flight.error is not None and not isinstance(flight.error, Exception):
            raise flight.error
        return flight

    def _forward(self) -> None:
        """Send the inbox's new submits to the owner; resends of ops known here stay, to be answered here."""
        self._inbox = self.forwarder.take(self._inbox, self.seq.knows)  # type: ignore[union-attr]
        fanout.resolve(self._room_waiters)
        self._room_waiters = []

    async def _ids_in_store(self, batch: list[Item]) -> dict[str, int]:
        """Revisions of ops in ``batch`` so old that only the store remembers their ids (one query per batch).

        A store that fences op ids refuses an append with an id applied before; then the
        batch is rolled back and queued again, and only that retry looks its ids up.
        """
        seq = self.seq
        if seq.history_start == 0:
            return {}
        if self.store.fences_op_ids and not self._ids_doubted:
            return {}
        unknown = [item.sub.id for item in batch if item.sub.id not in seq.ids]
        found = await self.store.find_ops(self.id, unknown) if unknown else {}
        self._ids_doubted = False
        return found

    def _snapshot_due(self) -> tuple[int, str] | None:
        seq = self.seq
        if seq.rev - self.last_snapshot >= max(self.config.snapshot_every, len(seq.text) // SNAPSHOT_BYTES_PER_OP):
            self.last_snapshot = seq.rev  # if this commit fails or loses its race, last_snapshot is put back
            return (seq.rev, str(seq.text))
        return None

    # -- the one pipeline ------------------------------------------------------------

    def _start(self, flight: Flight) -> None:
        """Start a pipelined commit and return at once; :meth:`_landed` settles it after every earlier one.

        A batch of resends only still waits its turn: its acks must not
        overtake the commit of the op they acknowledge.
        """
        loop = asyncio.get_running_loop()
        if flight.new:
            flight.commit = self.store.start_append(self.id, flight.new, len(self.seq.text), self._snapshot_due(),
                                                    on_done=self._landed, nbytes=self.seq.text.utf8_bytes)
        else:
            flight.done = True
            loop.call_soon(self._landed)
        # After the store's own call_soon: the commit is under way while this encodes.
        loop.call_soon(self._encode_early, flight)

    def _landed(self, _: object = None) -> None:
        """Settle the flights whose commits are done, in order: announce, retry after a lost race, or fail."""
        flights = self._flight
        while flights and (flights[0].done or self._finished(flights[0])):
            flight = flights.popleft()
            exc = flight.error
            if flight.lost:  # built on a batch that lost its race: requeued with it, its commit refused
                if exc is None and flight.new:  # the store let it through: the log no longer matches memory
                    log.error("document %s: a batch built on a refused one was committed", self.id)
                    self._fail()
            elif self.failed:
                fanout.refuse(flight.items, self.id)
            elif exc is None:
                self._losses = 0
                self._announce(flight)
                self.trim()  # only now: ops in flight must keep their ids in memory
            elif isinstance(exc, RevisionConflict) and flight.saved is not None:
                self._lost_race(flight)
            else:
                log.error("document %s: commit failed; disconnecting its clients so they resume from the store",
                          self.id, exc_info=exc)
                fanout.refuse(flight.items, self.id)
                self._fail()
        if not flights:
            if self._settle_waiters:
                fanout.resolve(self._settle_waiters)
                self._settle_waiters = []
            if self._deferred or self._orderable():
                self._wake()
            elif not self.peers and self._committer is None:
                self.schedule_unload()

    def _finished(self, flight: Flight) -> bool:
        """Whether ``flight``'s commit is done (a pipelined one's outcome is taken from its future)."""
        if flight.done:
            return True
        commit = flight.commit
        if commit is None or not commit.done():
            return False
        flight.done = True
        flight.error = DocumentFailed(self.id) if commit.cancelled() else commit.exception()
        return True

    def _lost_race(self, flight: Flight) -> None:
        """Another process committed these revisions first: roll back, integrate its ops (next turn), retry.
        Batches in flight after it are lost with it (the store refuses them) and queued again too."""
        assert flight.saved is not None
        self.seq.rollback(flight.saved)
        self.last_snapshot = flight.last_snapshot
        items = flight.items + [item for later in self._flight for item in later.items]
        for later in self._flight:
            later.lost = True
        for item in items:
            item.reset()
        self._inbox = items + self._inbox
        flight.lost = True
        self._losses += 1
        self._ids_doubted = True  # or one of its op ids was applied long ago: the retry looks them up
        self.replica.lost_race()

    async def _settled(self) -> None:
        """Return once every commit in flight has landed and been announced."""
        if not self._flight:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._settle_waiters.append(fut)
        await fut

    async def settle(self) -> None:
        """Return once the commit loop is idle and every commit has landed (for shutdown, and a hand-over).

        Cancelling this wait leaves the commit loop alone (``gather`` would cancel it, failing the document).
        """
        if self._committer is not None:
            await asyncio.wait([self._committer])
        await self._settled()

    def _encode_early(self, flight: Flight) -> None:
        """Encode a batch's frames while its commit is being written (they do not depend on its outcome);
        not a batch lost with an earlier one meanwhile (its items were queued again, without results)."""
        if not flight.encoded and not flight.done and not flight.lost and not self.failed:
            fanout.encode(flight.items)
            flight.encoded = True

    def _announce(self, flight: Flight) -> None:
        """Acknowledge and broadcast a committed batch, in revision order; tell the other processes."""
        if not flight.encoded:
            fanout.encode(flight.items)
        self.counters.ops_applied += len(flight.new)
        fanout.deliver(flight.items, self.peers.values())
        if self.replica.backplane is not None:
            self.replica.committed(fanout.published(flight.items))

    # -- what the replica calls (between batches) -----------------------------------------

    def broadcast(self, frame: str, skip: Peer | None = None) -> None:
        """Queue ``frame`` for every connection but ``skip``."""
        for p in list(self.peers.values()):
            if p is not skip:
                p.send(frame)

    def trim(self) -> None:
        """Keep the sequencer's history to its depth."""
        seq = self.seq
        if len(seq.history) - seq.history_depth >= seq.trim_every:
            seq.trim(self._holders())

    @property
    def forwarding(self) -> bool:
        """Whether new submits go to the document's owner, another process."""
        return self.forwarder is not None and self.forwarder.owner is not None

    def answered(self, op_id: str) -> list[Item]:
        """Take the submits of op ``op_id`` forwarded to the owner (its commit or its refusal arrived)."""
        if self.forwarder is None:
            return []
        taken = self.forwarder.answered(op_id)
        if taken and self._room_waiters:
            fanout.resolve(self._room_waiters)
            self._room_waiters = []
        return taken

    def take_queued(self, op_id: str) -> list[Item]:
        """Take the queued (or forwarded) submits of op ``op_id`` (another process committed that op)."""
        taken = self.answered(op_id)
        if not any(item.sub.id == op_id for item in self._inbox):
            return taken
        taken += [item for item in self._inbox if item.sub.id == op_id]
        self._inbox = [item for item in self._inbox if item.sub.id != op_id]
        return taken

    def give_back_forwarded(self) -> set[str]:
        """Drop the submits other processes forwarded here that wait unordered in the inbox (this
        process is handing the document over: they send them again to the next owner). Returns
        those processes."""
        back = {item.peer.proc for item in self._inbox if isinstance(item.peer, ForwardedAuthor)}
        if back:
            self._inbox = [item for item in self._inbox if not isinstance(item.peer, ForwardedAuthor)]
        return back

    def order_here(self) -> None:
        """Stop forwarding: what waits for the owner is ordered by this process (it owns the document now)."""
        self._inbox = (self.forwarder.take_back() if self.forwarder is not None else []) + self._inbox
        self._wake()

    def _holders(self) -> Iterator[Peer | RemotePeer]:
        """Everyone with a selection on this document."""
        return itertools.chain(self.peers.values(), self.replica.peers.values())

    # -- other processes ---------------------------------------------------------------

    def on_remote(self, msg: dict) -> None:
        """Take a backplane message: integrated now if the document is between batches and needs no
        read of the store for it (the usual case where another process orders it), else by the commit loop."""
        if self.replica.on_message(msg):
            if (self._committer is None and not self._flight and not self._inbox and not self._deferred
                    and not self.failed):
                try:
                    if self.replica.integrate_now():
                        return
                except Exception:  # as in the commit loop: its clients resume from the store
                    log.exception("document %s failed; disconnecting its clients so they resume from the store",
                                  self.id)
                    self._fail()
                    return
            self._wake()

    def sync_later(self, rev: int | None = None) -> None:
        """Note that the store may hold more (revision ``rev`` at least); catch up between batches."""
        if self.replica.sync_later(rev):
            self._wake()

    async def sync(self) -> None:
        """Integrate everything committed to the store so far (by any process) before returning."""
        if self.failed:
            raise DocumentFailed(self.id)
        if not self.shared:
            return  # no one else commits to it
        fut = self.replica.wait_for_store()
        self._wake()
        await fut

    def adopt_peers(self, infos: dict[str, dict], dead: set[str]) -> None:
        """Take the presence record of other processes' clients (see :meth:`Replica.adopt_peers`)."""
        if self.replica.adopt_peers(infos, dead):
            self._wake()

    def drop_processes(self, dead: set[str]) -> None:
        """Announce the clients of processes whose heartbeat expired as left."""
        if self.replica.drop_processes(dead):
            self._wake()

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
        fanout.run_each(deferred)

    # -- lifecycle ---------------------------------------------------------------

    def _fail(self, code: int = CLOSE_INTERNAL, reason: str = "storage failed; reconnect to resume") -> None:
        """The one failure path: refuse everything not yet acknowledged, close the sessions, drop the document."""
        if self.failed:
            return
        self.failed = True
        for flight in self._flight:
            fanout.refuse(flight.items, self.id)
        fanout.refuse(self._inbox + (self.forwarder.take_back() if self.forwarder is not None else []), self.id)
        self._inbox = []
        waiters = [*self._settle_waiters, *self._room_waiters, *(fut for _, fut in self._deferred)]
        self._settle_waiters, self._room_waiters, self._deferred = [], [], []
        for fut in waiters:
            if not fut.done():
                fut.set_exception(DocumentFailed(self.id))
        self.replica.fail()
        self.kick_all(code, reason)
        if self._on_close is not None:
            self._on_close(self)

    def schedule_unload(self) -> None:
        """Close the document after ``idle_unload_seconds`` unless someone joins by then."""
        if self._unload_handle is not None or self.failed:
            return
        loop = asyncio.get_running_loop()
        self._unload_handle = loop.call_later(self.config.idle_unload_seconds, self._unload_if_idle)

    def _unload_if_idle(self) -> None:
        self._unload_handle = None
        if (not self.peers and self._committer is None and not self._inbox and not self._flight
                and not (self.forwarder is not None and self.forwarder.awaiting)):
            if self._on_close is not None:
                self._on_close(self)
