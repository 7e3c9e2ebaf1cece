"""Who orders each document: its lease, the owner's side of forwarding, and the forwarders' routing.

With a store that has leases (PostgreSQL) and a backplane, the first process
to load a document takes its lease and owns it: it orders the document's
submits, its own clients' and those other processes forward to it. Every
other process forwards its clients' submits there (a document's
:class:`~collab.forwarding.Forwarder`) and answers them when it integrates
their commit from the store. See ``docs/cluster.md``.

Nothing here is needed for correctness: the store refuses a revision that
is taken and an op id applied before, so a process that orders a document
it does not own (no owner known, the owner silent, Redis down) is only
slower. So every doubt ends in "order it here".
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, Any

from .aio import cancel_and_wait
from .forwarding import (
    Forwarded, Refusal, not_owner_msg, read_not_owner, read_refused, read_submit, refused_msg,
)
from .hubconfig import DocumentFailed
from .protocol import ProtocolError, error_msg
from .store.base import Store

if TYPE_CHECKING:
    from .backplane import Backplane

log = logging.getLogger("collab.hub")

#: Seconds forwarded submits may wait for the owner before this process looks for the owner again
#: (and takes the lease if it is free: the owner died); after three times this, it orders them itself.
OVERDUE_SECONDS = 1.0
#: Seconds :meth:`Ownership.place` waits before each try to find a document's owner (a lease that is
#: changing hands has no owner record for a moment).
PLACE_RETRIES = (0.0, 0.005, 0.02, 0.05)


class Ownership:
    """This process's leases, and the routing of each open document's submits (``docs`` is the hub's)."""

    def __init__(self, backplane: "Backplane", store: Store, docs: dict) -> None:
        self.backplane = backplane
        self.docs = docs
        self.leases = store.leases()
        self._tasks: set[asyncio.Task[None]] = set()
        self._rerouting: set[str] = set()
        #: Forwarded submits that must wait for their document (room in its inbox, a read of the store),
        #: in arrival order, by document object (a document loaded again under its name starts afresh):
        #: one task per document submits them, so none overtakes another.
        self._waiting: dict[Any, deque[tuple[str, Forwarded]]] = {}
        self._watcher: asyncio.Task[None] | None = None
        #: Documents whose lease is being handed over: forwarded submits for them are dropped (their
        #: processes are told ``not_owner`` once it is done, and send them again to the next owner).
        self._handing: dict[str, set[str]] = {}

    async def open(self) -> None:
        """Open the lease connection and start watching for silent owners (once, with the backplane)."""
        if self.leases is not None:
            await self.leases.open()
            self.start_watching()

    def start_watching(self) -> None:
        """Start looking for silent owners and unplaced documents about once a second (:meth:`open` does)."""
        if self.leases is not None and (self._watcher is None or self._watcher.done()):
            self._watcher = asyncio.create_task(self._watch(), name="collab-owner-watch")

    async def stop_watching(self) -> None:
        """Stop that look (:meth:`close` does; so does a test in which only what it does places a document)."""
        await cancel_and_wait(self._watcher)
        self._watcher = None

    def owns(self, doc_id: str) -> bool:
        """Whether this process holds ``doc_id``'s lease."""
        return self.leases is not None and doc_id in self.leases.held

    def handing(self, doc_id: str) -> bool:
        """Whether this process is handing ``doc_id``'s lease over (see :meth:`hand_over`)."""
        return doc_id in self._handing

    async def owner_elsewhere(self, doc_id: str) -> str | None:
        """The process that owns ``doc_id`` when that is another one; ``None``: this one, nobody, or unknown."""
        if self.leases is None or self.owns(doc_id):
            return None
        doc = self.docs.get(doc_id)
        forwarder = getattr(doc, "forwarder", None)
        if forwarder is not None and forwarder.owner is not None:
            return forwarder.owner
        owner = await self.backplane.owner(doc_id)
        return owner if owner != self.backplane.process_id else None

    async def place(self, doc_id: str) -> str | None:
        """Take ``doc_id``'s lease if it is free; the process to forward its submits to, or ``None`` to order here.

        A lease taken by another process whose record names nobody (or this process) is changing hands:
        its holder writes the record right after taking it, and drops it just before letting go. So
        this tries again a few times, for at most :data:`PLACE_RETRIES`' sum, before ordering here.
        """
        if self.leases is None:
            return None
        me = self.backplane.process_id
        try:
            for delay in PLACE_RETRIES:
                if delay:
                    await asyncio.sleep(delay)
                if doc_id in await self.leases.acquire([doc_id]):
                    self.backplane.set_owner(doc_id)
                    return None
                owner = await self.backplane.owner(doc_id)
                if owner is not None and owner != me:
                    return owner
        except Exception as exc:  # ordered here: correct, only slower
            log.warning("finding the owner of %s failed: %s", doc_id, exc)
        return None

    async def claim(self, doc: Any) -> None:
        """Before a client joins ``doc`` where nobody is (or an HTTP edit is made to it), and which is
        neither owned here nor forwarded (its lease was handed over as its clients left, or it was ordered
        here without one): find its owner, or take the lease if it is free, so that the first edit of people
        coming back has one sequencer rather than this process beside the owner, each taking the document's
        row lock in turn."""
        if not doc.peers and self._unplaced(doc):
            await self._place_again(doc)

    def _unplaced(self, doc: Any) -> bool:
        """Whether ``doc`` is ordered here without its lease: neither owned here nor forwarded."""
        return (self.leases is not None and doc.forwarder is not None and doc.forwarder.owner is None
                and not self.owns(doc.id))

    def hand_over(self, doc: Any) -> None:
        """``doc``'s clients are all on other processes (the last one here left, or another process's
        joined while none is here, and none is joining here): let one of those own it.

        Each forwarded submit is ordered once, by one owner: from now on what the others forward is
        dropped, and what they forwarded that waits here unordered is given back; no new batch is
        ordered here, so the batches in flight are all the wait (edits made here meanwhile, over HTTP
        or by a client joining, wait too: a stream of them cannot hold the lease here, nor the others'
        edits, dropped until the hand-over ends); those land and are announced; then the lease is
        released, and the others hear ``not_owner`` after the announcements (the bus keeps their
        order), so they send again only what no one ordered. The first of them to look for the owner
        again takes the lease.
        """
        if not self.owns(doc.id) or doc.peers or doc.joining or doc.id in self._handing:
            return
        own = self.backplane.process_id
        procs = {r.proc for r in doc.replica.peers.values()} | {proc for proc, _ in doc.replica.forwarded}
        procs.discard(own)
        if procs:
            procs |= doc.give_back_forwarded()
            waiting = self._waiting.get(doc)
            if waiting:
                procs.update(proc for proc, _ in waiting)
                waiting.clear()
            self._handing[doc.id] = procs  # _take_submit adds the senders of what it drops meanwhile
            doc.hold_batches()
            self._spawn(self._hand_over(doc, procs))

    async def _hand_over(self, doc: Any, procs: set[str]) -> None:
        try:
            try:
                await doc.settle()
            except DocumentFailed:
                pass  # nothing more lands here: the others send everything again
            await self.release(doc.id)
            if (doc.peers or doc.joining or doc.waiting) and self.docs.get(doc.id) is doc:
                # A client joined here meanwhile (its join found the document still owned, so it did not
                # place it), or an edit made here waits: place it again before anyone is told, rather than
                # order it here without the lease beside the next owner. The others hear not_owner all the
                # same, since what they forwarded meanwhile was dropped here: they find the owner again
                # and send it there.
                await self._place_again(doc)
        finally:
            del self._handing[doc.id]
            for proc in sorted(procs):
                self.backplane.send(proc, not_owner_msg(doc.id))
            doc.resume_batches()

    async def release(self, doc_id: str) -> None:
        """``doc_id`` was closed here: let another process own it."""
        if self.owns(doc_id):
            self.backplane.drop_owner(doc_id)
            try:
                await self.leases.release([doc_id])  # type: ignore[union-attr]
            except Exception as exc:
                log.warning("releasing the lease of %s failed: %s", doc_id, exc)

    # -- messages to this process -----------------------------------------------------------

    def on_direct(self, msg: dict) -> None:
        """A message to this process alone: forwarded submits, or an owner's answer."""
        proc, kind = msg.get("proc"), msg.get("t")
        if not isinstance(proc, str):
            return
        if kind == "submit":
            self._take_submit(proc, msg)
        elif kind == "refused":
            refusal = read_refused(msg)
            if refusal is not None:
                self._refused(proc, refusal)
        elif kind == "not_owner":
            doc = self.docs.get(read_not_owner(msg) or "")
            if doc is not None and doc.forwarder is not None and doc.forwarder.owner == proc:
                if doc.peers or doc.forwarder.awaiting:
                    self.reroute(doc)
                else:  # nobody here to order for: the next join (or HTTP edit) places it (see claim)
                    doc.forwarder.owner = None

    def _take_submit(self, proc: str, msg: dict) -> None:
        parsed = read_submit(msg)
        if parsed is None:
            log.warning("ignoring a malformed forwarded submit from process %.40s", proc)
            return
        doc_id, items = parsed
        handing = self._handing.get(doc_id)
        if handing is not None:  # told not_owner once the hand-over is done, and sent again then
            handing.add(proc)
            return
        doc = self.docs.get(doc_id)
        if doc is None or not self.owns(doc_id):
            self.backplane.send(proc, not_owner_msg(doc_id))
            return
        # Queued at once while the document needs no waiting (the usual case costs no task); from the
        # first that must wait, the rest wait behind it, and so does everything forwarded after them.
        waiting = self._waiting.get(doc)
        for f in items:
            if waiting is None:
                try:
                    if not doc.failed and doc.offer(doc.replica.forwarded_author(proc, f.client), f.sub):
                        continue
                except ProtocolError as exc:
                    self.backplane.send(proc, refused_msg(doc_id, exc))
                    continue
                waiting = self._waiting[doc] = deque()
                self._spawn(self._order(doc, waiting))
            waiting.append((proc, f))

    async def _order(self, doc: Any, waiting: "deque[tuple[str, Forwarded]]") -> None:
        """Queue forwarded submits that had to wait, in order, as the owner's own clients' are; refusals go back."""
        try:
            while waiting:
                proc, f = waiting.popleft()
                try:
                    await doc.submit(doc.replica.forwarded_author(proc, f.client), f.sub)
                except ProtocolError as exc:
                    self.backplane.send(proc, refused_msg(doc.id, exc))
                except DocumentFailed:  # the forwarding processes look for the owner again and resend
                    for sender in {proc, *(p for p, _ in waiting)}:
                        self.backplane.send(sender, not_owner_msg(doc.id))
                    waiting.clear()
        finally:
            del self._waiting[doc]

    def _refused(self, proc: str, refusal: Refusal) -> None:
        """The owner refused a submit this process forwarded: its client gets the error."""
        doc = self.docs.get(refusal.doc)
        if doc is None or doc.forwarder is None or doc.forwarder.owner != proc:
            return  # not from the process the submits went to
        for item in doc.answered(refusal.id):
            if item.reply is not None:
                if not item.reply.done():
                    item.reply.set_exception(ProtocolError(refusal.code, refusal.message, refusal.id))
            elif item.peer is not None:
                item.peer.send_msg(error_msg(refusal.code, refusal.message, refusal.id))

    # -- silent owners --------------------------------------------------------------------

    def reroute(self, doc: Any) -> None:
        """Look for ``doc``'s owner again (taking the lease if it is free); resend, or order here."""
        if doc.id not in self._rerouting:
            self._rerouting.add(doc.id)
            self._spawn(self._reroute(doc))

    async def _reroute(self, doc: Any) -> None:
        try:
            forwarder = doc.forwarder
            owner = await self.place(doc.id)
            if self.docs.get(doc.id) is not doc or forwarder.owner is None:
                if self.docs.get(doc.id) is None:
                    await self.release(doc.id)  # taken for a document closed meanwhile
                return
            now = asyncio.get_running_loop().time()
            if owner is None or forwarder.overdue(now, 3 * OVERDUE_SECONDS):
                doc.order_here()
            else:
                forwarder.resend(owner)
        finally:
            self._rerouting.discard(doc.id)

    async def _watch(self) -> None:
        """Reroute the documents whose forwarded submits the owner has not answered in time; place again
        those ordered here without the lease (the owner was not known when they loaded): about once a
        second, and at every tick while another process writes them too (their races cost both)."""
        tick = 0
        while True:
            await asyncio.sleep(OVERDUE_SECONDS / 4)
            tick += 1
            now = asyncio.get_running_loop().time()
            for doc in list(self.docs.values()):
                forwarder = doc.forwarder
                if forwarder is not None and forwarder.overdue(now, OVERDUE_SECONDS):
                    self.reroute(doc)
                elif doc.peers and self._unplaced(doc) and (tick % 4 == 0 or doc.replica.contended()):
                    self._spawn(self._place_again(doc))

    async def _place_again(self, doc: Any) -> None:
        """Forward ``doc``'s submits to its owner if one is known now (or own it if its lease is free)."""
        owner = await self.place(doc.id)
        if self.docs.get(doc.id) is not doc:
            await self.release(doc.id)  # taken for a document closed meanwhile (a no-op if not)
        elif owner is not None and doc.forwarder.owner is None:
            doc.forwarder.owner = owner

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self, backplane_open: bool) -> None:
        """Stop (waiting for what runs: a hand-over tells the other processes as it ends); drop this
        process's owner records (queued, so before the backplane closes) and its leases."""
        await self.stop_watching()
        await cancel_and_wait(*self._tasks)
        if self.leases is None:
            return
        if backplane_open:
            for doc_id in self.leases.held:
                self.backplane.drop_owner(doc_id)
