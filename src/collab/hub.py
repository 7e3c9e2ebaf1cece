"""The open documents of one process: load each once, hand out its session, close it when idle.

A :class:`Hub` is a registry of :class:`~collab.document.Document` sessions
keyed by document id. It loads a document on first use (however many ask at
once), retries on a fresh load when a document failed, answers the HTTP
API's reads and replacements, and closes everything on shutdown. With a
backplane it delegates the cross-process part to a
:class:`~collab.cluster.Cluster`.

The layers, from the socket inwards: the transport feeds parsed messages to
a document's session (:mod:`collab.document`), which orders them with its
sequencer (:mod:`collab.sequencer`), commits them to the store and queues
the answers on each client's :class:`~collab.peer.Peer`.
"""

from __future__ import annotations

import asyncio
import functools
import secrets
from typing import TYPE_CHECKING, Callable

from . import ot
from .cluster import Cluster
from .document import Document
from .hubconfig import DocumentFailed, HubConfig, HubCounters
from .peer import Peer, RemotePeer
from .protocol import CLOSE_RESTART, Submit
from .store.base import Store

if TYPE_CHECKING:
    from .backplane import Backplane

__all__ = ["Document", "DocumentFailed", "Hub", "HubConfig", "Peer", "RemotePeer"]


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
        self.counters = HubCounters()
        self.docs: dict[str, Document] = {}
        self._loading: dict[str, asyncio.Future[Document]] = {}
        self.cluster = Cluster(backplane, store, self.docs, self._loading) if backplane is not None else None
        self.closing = False
        #: Called with each document as it closes (idle or failed), before it is dropped.
        self.on_unload: Callable[[Document], None] | None = None

    # -- counters behind /metrics ---------------------------------------------------

    @property
    def ops_applied(self) -> int:
        return self.counters.ops_applied

    @property
    def conflicts(self) -> int:
        """Batches that lost their revisions to another process."""
        return self.counters.conflicts

    @property
    def remote_applied(self) -> int:
        """Operations integrated from other processes."""
        return self.counters.remote_applied

    @property
    def connections(self) -> int:
        return sum(len(d.peers) for d in self.docs.values())

    # -- documents ---------------------------------------------------------------------

    async def start(self) -> None:
        """Connect the backplane (done on first use; call it to fail early)."""
        if self.cluster is not None:
            await self.cluster.start()

    async def owner_elsewhere(self, doc_id: str) -> str | None:
        """The process id of ``doc_id``'s owner when another process orders it (``None``: this one, or nobody)."""
        if self.cluster is None:
            return None
        await self.cluster.start()  # the records of owners are sealed with the store's key, read at the start
        return await self.cluster.ownership.owner_elsewhere(doc_id)

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
        cluster = self.cluster
        try:
            infos: dict[str, dict] = {}
            dead: set[str] = set()
            owner: str | None = None
            if cluster is not None:
                infos, dead = await cluster.subscribe(doc_id)
                owner = await cluster.place(doc_id)
            state = await self.store.load(doc_id, self.config.history_depth)
            doc = Document(doc_id, state, self.store, self.config, self.counters, self.backplane, self._forget)
            if doc.forwarder is not None:
                doc.forwarder.owner = owner  # another process orders it: forward submits there
            if cluster is not None:
                doc.replica.seal = cluster.seal
                doc.on_clients_elsewhere = cluster.ownership.hand_over
                doc.leased = functools.partial(cluster.ownership.owns, doc_id)
            self.docs[doc_id] = doc
            if cluster is not None:
                doc.adopt_peers(infos, dead)
                for msg in cluster.early_messages(doc_id):
                    doc.on_remote(msg)
        except BaseException:
            if cluster is not None:
                cluster.early_messages(doc_id)
            raise
        finally:
            del self._loading[doc_id]
        doc.schedule_unload()  # unloaded again unless someone joins
        return doc

    async def join(self, doc_id: str, peer: Peer, since: int | None) -> Document:
        """Open ``doc_id`` and admit ``peer`` to it."""
        while True:
            doc = await self.document(doc_id)
            doc.joining += 1  # (before any await: the owner here must not hand the lease over meanwhile)
            try:
                if self.cluster is not None:
                    await self.cluster.ownership.claim(doc)
                await doc.join(peer, since)
            except DocumentFailed:
                continue  # it was dropped after a storage error: load it afresh
            finally:
                doc.joining -= 1
                _nobody_here(doc)  # this join failed: the hand-over it held back is due
            return doc

    async def read(self, doc_id: str) -> tuple[int, str]:
        """The committed revision and text of ``doc_id`` (with a shared store: as of now, by any process)."""
        while True:
            doc = await self.document(doc_id)
            try:
                if self.store.may_conflict:
                    await doc.sync()
                return await doc.read()
            except DocumentFailed:
                continue

    async def replace(self, doc_id: str, text: str, op_id: str | None = None, author: str = "") -> int:
        """Replace the text of ``doc_id`` with ``text`` as one ordinary edit by ``author`` (a name, or "");
        returns its revision."""
        while True:
            doc = await self.document(doc_id)
            if self.cluster is not None:
                await self.cluster.ownership.claim(doc)
            try:
                if self.store.may_conflict:
                    await doc.sync()
                rev, current = await doc.read()
                op = ot.diff_splice(current, text)
                sub = Submit(rev, op, op_id or "http-" + secrets.token_hex(8), None, author=author)
                return await doc.submit(None, sub)  # type: ignore[return-value]
            except DocumentFailed:
                continue  # dropped after a storage error: load it afresh and diff again
            finally:
                _nobody_here(doc)  # the edit may have taken the lease for nobody here

    def drop(self, doc: Document) -> None:
        """Stop serving ``doc`` from memory now (renamed: the next use of either name loads from the store)."""
        self._forget(doc)

    def _forget(self, doc: Document) -> None:
        """``doc`` closed (idle, or failed): drop it and what the store and the backplane hold for it."""
        if self.docs.get(doc.id) is doc:
            if self.on_unload is not None and not self.closing:
                self.on_unload(doc)
            del self.docs[doc.id]
            self.store.forget(doc.id)
            if self.cluster is not None and not self.closing:
                self.cluster.forget(doc.id)

    async def check(self) -> None:
        """One round of the cross-process watch (see :meth:`Cluster.check`)."""
        if self.cluster is not None:
            await self.cluster.check()

    # -- shutdown ------------------------------------------------------------------

    async def close(self) -> None:
        """Finish in-flight commits, ask every client to reconnect (1012), and stop the backplane.

        The clients land on another process (or on this one restarted) and
        resume with ``since``: nothing acknowledged is lost, nothing resent is
        applied twice.
        """
        self.closing = True
        await asyncio.gather(*(d.settle() for d in list(self.docs.values())), return_exceptions=True)
        for doc in list(self.docs.values()):
            doc.kick_all(CLOSE_RESTART, "the server is restarting: reconnect")
        if self.cluster is not None:
            await self.cluster.close()


def _nobody_here(doc: Document) -> None:
    """After a join or an HTTP edit: if nobody is on ``doc`` here, offer its lease to where its clients are
    (a failed join held the hand-over back; an HTTP edit may have taken a free lease)."""
    if not doc.joining and not doc.peers and not doc.failed and doc.on_clients_elsewhere is not None:
        doc.on_clients_elsewhere(doc)
