"""The trash and renamed names: deleted documents stay restorable for ``COLLAB_TRASH_DAYS``, then are purged;
a renamed document's old name redirects to the new one.

A deleted document leaves ``GET /api/docs``; its name opens nothing
(WebSocket close 4004 with :data:`DELETED_REASON`, HTTP 404) until it is
restored, and every editor connected to it is closed the same way. The
store keeps the deletion time (``docs.deleted``); :class:`Trash` holds the
set in memory so that a handshake costs a dict lookup. With a store
shared by several processes it looks every
:data:`~collab.revocation.POLL_SECONDS` at the store's version of the
trash and the names (a counter each change moves), and re-reads them when
it moved, so that another process's deletion or rename reaches this
process's editors too, at a cost that does not grow with the trash.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from .chores import Chores
from .revocation import POLL_SECONDS
from .store.base import DocInfo, Store

log = logging.getLogger("collab.lifecycle")

DELETED_REASON = "document deleted: it is in the trash; restore it to open it"
#: The close reason for the editors of a renamed document (the new name follows).
RENAMED_REASON = "document renamed to "
#: Seconds between two purges of what has been in the trash longer than its time.
PURGE_SECONDS = 3600.0
#: Seconds after which the trash and the names are read again even though the store's version of them
#: did not move (a process of an older collab, which does not move it, may share the store during an upgrade).
REREAD_SECONDS = 30.0


class Trash:
    """Which documents are in the trash, told to ``on_deleted(doc)`` as they go in."""

    def __init__(self, store: Store | None, days: float, on_deleted: Callable[[str], None],
                 on_renamed: Callable[[str, str], None] = lambda old, new: None) -> None:
        #: Set before :meth:`start` (the app opens its store in its lifespan).
        self.store: Store = store  # type: ignore[assignment]
        self.days = days
        self.on_deleted = on_deleted
        self.on_renamed = on_renamed
        self.deleted: dict[str, float] = {}
        #: Old name -> the name it redirects to.
        self.renamed: dict[str, str] = {}
        #: Documents this process must not purge (open here): a callable giving them.
        self.in_use: Callable[[], set[str]] = set
        self._chores = Chores(log)
        #: The store's version of the trash and the names when they were last read, and when (monotonic).
        self._version: int | None = None
        self._read_at = float("-inf")

    async def start(self) -> None:
        await self.refresh()
        await self.purge()
        self._chores.every(PURGE_SECONDS, self.purge, "purging the trash", "collab-purge")
        if self.store.may_conflict:
            self._chores.every(POLL_SECONDS, self.refresh, "reading the trash", "collab-trash")

    async def close(self) -> None:
        await self._chores.close()

    def purge_at(self, deleted: float) -> float:
        """When a document deleted at ``deleted`` is purged (Unix time)."""
        return deleted + self.days * 86400.0

    def is_deleted(self, doc: str) -> bool:
        return doc in self.deleted

    async def refresh(self) -> None:
        """Re-read the trash and the names (with a shared store: what other processes deleted, restored or
        renamed), unless the store says they did not change since the last read: their cost grows with them."""
        version = await self.store.lifecycle_version()
        at = time.monotonic()
        if version is not None and version == self._version and at - self._read_at < REREAD_SECONDS:
            return
        now = {d.id: d.deleted or 0.0 for d in await self.store.trash()}
        renamed = await self.store.renames()
        self._version, self._read_at = version, at
        added = [d for d in now if d not in self.deleted]
        moved = [(old, new) for old, new in renamed.items() if self.renamed.get(old) != new]
        self.deleted, self.renamed = now, renamed
        for doc in added:
            self.on_deleted(doc)
        for old, new in moved:
            self.on_renamed(old, new)

    async def delete(self, doc: str) -> float | None:
        """Move ``doc`` into the trash; its deletion time, or ``None`` if there was no such document."""
        when = time.time()
        if not await self.store.set_deleted(doc, when):
            return None
        self.deleted[doc] = when
        self.on_deleted(doc)
        return when

    async def restore(self, doc: str) -> bool:
        if not await self.store.set_deleted(doc, None):
            return False
        self.deleted.pop(doc, None)
        return True

    async def rename(self, old: str, new: str) -> str:
        """Move ``old`` to ``new`` in the store (see :meth:`Store.rename`); on success its old name redirects."""
        result = await self.store.rename(old, new)
        if result == "ok":
            self.renamed = {o: (new if n == old else n) for o, n in self.renamed.items() if o != new}
            self.renamed[old] = new
            self.on_renamed(old, new)
        return result

    async def listing(self) -> list[DocInfo]:
        return await self.store.trash()

    async def purge(self, now: float | None = None) -> list[str]:
        """Remove for good what has been in the trash longer than ``days`` (not the documents open here)."""
        cutoff = (time.time() if now is None else now) - self.days * 86400.0
        gone = await self.store.purge(cutoff, self.in_use())
        for doc in gone:
            self.deleted.pop(doc, None)
        if gone:
            log.info("purged %d document(s) deleted more than %g days ago", len(gone), self.days)
        return gone
