"""The SQLite store's op-id lookup accelerator: which of a batch's op ids were applied before, mostly from memory.

The hub asks, once per batch of a document longer than its kept history,
whether the batch's op ids were applied long ago (a client resending an
old op). They almost never were. For every document written since the hub
opened it, :class:`OpIdIndex` keeps the ids of the ops at the end of its
log whose ids are not yet in the ``op_ids`` table (op id -> revision; the
rows after ``docs.ids_through``) and a filter
(:class:`~collab.store.idfilter.IdFilter`) of the ids *compacted*, i.e.
copied into ``op_ids`` (the log itself keeps every op, for the history), so
that only an id the filter cannot rule out costs a database lookup.

Invariants (asserted where they are kept):

1. **One owner.** Every change to the index happens on the event loop's
   thread (:meth:`OpIdIndex.committed`, :meth:`OpIdIndex.drop`, a filter's
   installation), after the commit it reflects. The store's thread only
   reads it (:meth:`OpIdIndex.compactable`, during a commit, when no other
   commit runs), and a read tolerates a document dropped meanwhile: the
   dict it holds is never changed, only replaced.
2. **Never a false "not applied".** A document's log ids hold at least every
   id its log has as of the last commit the index was told of; an id a
   commit compacts stays in the log ids until that commit is reported, and
   goes into the document's filter (or the list of a filter being built) in
   the same step that removes it from the log ids. So a lookup that sees
   the log ids sees every compacted id in the filter, and a filter being
   built collects every id compacted after its database read began.
3. **A filter only beside log ids.** A document has a filter or a build in
   progress only while it has log ids; dropping one drops all three.
"""

from __future__ import annotations

import concurrent.futures
import functools
import sqlite3
import threading
from collections import OrderedDict
from typing import Callable

from .base import StoredOp
from .idfilter import IdFilter
from .sqlite_schema import LOG_NOT_IN_OP_IDS
from .sqlite_schema import log_ids as _log_ids

#: ``on_thread(then, fn, *args)``: run ``fn(*args)`` on the store's thread, then ``then(future)`` on the loop.
OnThread = Callable[..., None]


def lookup(db: sqlite3.Connection, doc: str, op_ids: list[str], log_ids: dict[str, int] | None,
           compacted: IdFilter | None = None) -> dict[str, int]:
    """Revisions of ``op_ids`` in ``doc``: from ``op_ids`` (compacted ops) and from the log.

    ``log_ids`` is the log's ids when known; without it, the rows of the
    document's log whose ids are not yet in ``op_ids`` are scanned (about
    ``history_depth`` plus one snapshot interval of ops). ``compacted`` filters the ids that the ``op_ids`` table
    is asked for (used only with ``log_ids``).
    """
    found: dict[str, int] = {}
    if log_ids is not None:
        for i in op_ids:
            rev = log_ids.get(i)
            if rev is not None:
                found[i] = rev
        if found:
            op_ids = [i for i in op_ids if i not in found]
        if compacted is not None:
            op_ids = compacted.maybe(op_ids)
    for i in range(0, len(op_ids), 500):  # SQLite limits the parameters of one statement
        chunk = op_ids[i : i + 500]
        marks = ",".join("?" * len(chunk))
        found.update(db.execute(f"SELECT op_id, rev FROM op_ids WHERE doc = ? AND op_id IN ({marks})", (doc, *chunk)))
    if log_ids is None and op_ids:
        in_log = _log_ids(db.execute(LOG_NOT_IN_OP_IDS, (doc, doc)))
        for i in op_ids:
            rev = in_log.get(i)
            if rev is not None:
                found[i] = rev
    return found


class OpIdIndex:
    """Per document written since it was opened: its log ids and a filter of its compacted ids.

    ``max_ids`` caps the log ids kept in all (the least recently written
    documents are dropped first; their lookups scan their log). A document
    whose ``op_ids`` holds more than ``filter_build_max`` ids when first
    written gets no filter (its lookups ask the database).
    """

    def __init__(self, on_thread: OnThread, thread_db: Callable[[], sqlite3.Connection],
                 max_ids: int, filter_build_max: int) -> None:
        self._on_thread = on_thread
        self._thread_db = thread_db
        self.max_ids = max_ids
        self.filter_build_max = filter_build_max
        self._owner = threading.get_ident()
        #: Op id -> revision of each document's logged ops, least recently written first.
        self.log_ids: OrderedDict[str, dict[str, int]] = OrderedDict()
        #: How many ids :attr:`log_ids` holds in all.
        self.count = 0
        #: Filters of the ids in ``op_ids``, for documents in :attr:`log_ids`.
        self.filters: dict[str, IdFilter] = {}
        #: Filters being built on the store's thread: the ids compacted since each began.
        self.builds: dict[str, list[str]] = {}

    def find(self, db: sqlite3.Connection, doc: str, op_ids: list[str]) -> dict[str, int]:
        """Revisions of those of ``op_ids`` applied to ``doc`` (``db``: a connection usable here)."""
        log_ids = self.log_ids.get(doc)
        return lookup(db, doc, op_ids, log_ids, self.filters.get(doc) if log_ids is not None else None)

    def committed(self, db: sqlite3.Connection, doc: str, ops: list[StoredOp], compacted_through: int | None) -> None:
        """A commit appended ``ops`` to ``doc`` and compacted its log through ``compacted_through``
        (``None``: no compaction). ``db`` reads the log of a document not yet indexed."""
        assert threading.get_ident() == self._owner, "the op-id index changes on the event loop only"
        ids = self.log_ids.pop(doc, None)
        if ids is None:  # first write to this document here: read what its log holds
            ids = _log_ids(db.execute(LOG_NOT_IN_OP_IDS, (doc, doc)))
            self._build_filter(doc)
        else:
            self.count -= len(ids)
            for o in ops:
                ids[o.id] = o.rev
            if compacted_through is not None:  # into the filter in the same step as out of the log ids
                leaving = [i for i, r in ids.items() if r <= compacted_through]
                compacted_filter = self.filters.get(doc)
                if compacted_filter is not None:
                    compacted_filter.update(leaving)
                elif doc in self.builds:
                    self.builds[doc].extend(leaving)
                ids = {i: r for i, r in ids.items() if r > compacted_through}
        self.log_ids[doc] = ids
        self.count += len(ids)
        while self.count > self.max_ids and len(self.log_ids) > 1:
            self.drop(next(iter(self.log_ids)))

    def drop(self, doc: str) -> None:
        """Forget ``doc``'s log ids and filter (its lookups then scan its log)."""
        assert threading.get_ident() == self._owner, "the op-id index changes on the event loop only"
        self.count -= len(self.log_ids.pop(doc, None) or ())
        self.filters.pop(doc, None)
        self.builds.pop(doc, None)

    def compactable(self, db: sqlite3.Connection, doc: str, keep_after: int,
                    written: list[list[StoredOp]]) -> list[tuple[str, int]]:
        """``(id, revision)`` of the ops in ``doc``'s log through ``keep_after`` that ``op_ids`` may lack.

        From memory when the index holds the document (the log's ids as of
        the last commit) with the ops ``written`` since, in the open
        transaction: reading the rows back and decoding their JSON would
        cost about as much as inserting the ids. Otherwise from the log
        itself (``INSERT OR IGNORE`` skips ids already in ``op_ids``).
        """
        known = self.log_ids.get(doc)
        if known is None:
            rows = db.execute(LOG_NOT_IN_OP_IDS + " AND first <= ?", (doc, doc, keep_after))
            return [(i, r) for i, r in _log_ids(rows).items() if r <= keep_after]
        kept = [(i, r) for i, r in known.items() if r <= keep_after]
        for ops in written:
            if ops[0].rev <= keep_after:
                kept.extend((o.id, o.rev) for o in ops if o.rev <= keep_after)
        return kept

    def _build_filter(self, doc: str) -> None:
        """Build ``doc``'s filter of compacted ids on the store's thread; install it on the loop.

        Until it is installed, the document's lookups ask the database for
        every id its log ids lack, which is always right. Every compaction
        committed before the thread's read is in what it reads; every one
        reported after this call is collected in :attr:`builds` and added
        at installation (a compaction in between is in both: harmless).
        """
        since: list[str] = []
        self.builds[doc] = since
        self._on_thread(functools.partial(self._filter_built, doc, since), self._read_filter, doc)

    def _read_filter(self, doc: str) -> IdFilter | None:
        compacted = [i for (i,) in self._thread_db().execute(
            "SELECT op_id FROM op_ids WHERE doc = ? LIMIT ?", (doc, self.filter_build_max + 1))]
        if len(compacted) > self.filter_build_max:
            return None
        return IdFilter(compacted, capacity=max(16384, 4 * len(compacted)))

    def _filter_built(self, doc: str, since: list[str], work: concurrent.futures.Future) -> None:
        assert threading.get_ident() == self._owner, "the op-id index changes on the event loop only"
        if self.builds.get(doc) is not since:  # dropped (or rebuilt) meanwhile
            return
        del self.builds[doc]
        built = None if work.exception() is not None else work.result()
        assert doc in self.log_ids, "a filter build outlived its document's log ids"
        if built is not None:
            built.update(since)
            self.filters[doc] = built
