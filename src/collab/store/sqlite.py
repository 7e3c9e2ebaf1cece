"""The embedded default store: one SQLite file, written with group commit, never acknowledging what no fsync covered.

Appends made in the same event-loop turn (and while the previous commit
settles), across all documents, are written in one transaction
(:mod:`collab.store.sqlite_write`), and an append returns only once its
transaction is durable, so an acknowledged operation survives ``kill -9``.

The transaction itself runs on the event loop (unless it carries a large
snapshot: see :attr:`SqliteStore.SNAPSHOT_ON_LOOP_MAX`), with SQLite's
``synchronous=NORMAL``: a little CPU that only hands the pages to the
operating system, so nothing waits for the disk there. With ``FULL`` (the
default) an append then waits for an ``fdatasync`` of the WAL file, made by
a helper process (:mod:`collab.store.walsync`) while the loop goes on; one
``fdatasync`` covers the whole transaction, as SQLite's own
``synchronous=FULL`` would, and survives a power cut too. With ``NORMAL``
(``COLLAB_SQLITE_SYNC=normal``) an append is done at its commit: that still
survives ``kill -9``, but a power cut or kernel crash may lose the last
commits (the file stays consistent).

A failed fsync is fatal for the store, as PostgreSQL decided after
"fsyncgate": the kernel may have dropped the pages it could not write and
report the next fsync as a success, so nothing written since can be
vouched for. The store then refuses every append and read
(:class:`~collab.store.base.StoreFailed`) until the server restarts, and
:meth:`SqliteStore.health` says why; on the next start the files are
fsynced and dropped from the page cache before anything is read, so what is
served is what the disk holds (:func:`~collab.store.sqlite_schema.sync_files`).

WAL checkpoints, reads that may be long (loading a document, the document
list) and opening the file run on one dedicated thread, on their own
connection, so none of them holds up the event loop; the writer's
connection checkpoints nothing itself.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import os
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

from ..metrics import Histogram
from . import history
from . import sqlite_meta as meta
from .base import Credential, DocInfo, DocState, ListPosition, Store, StoredOp, StoreFailed, replay
from .opindex import OpIdIndex, lookup
from .sqlite_history import SqliteHistory
from .sqlite_schema import log_after, migrate, sync_files
from .sqlite_upkeep import SqliteUpkeep
from .sqlite_write import Append, GroupWrite
from .walsync_client import WalSync

T = TypeVar("T")
log = logging.getLogger("collab.store")


def _call_soon_threadsafe(loop: asyncio.AbstractEventLoop, fn: Callable[..., object], *args: Any) -> None:
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:  # the loop is closed: nobody is waiting any more
        pass


class SqliteStore(SqliteUpkeep, Store):
    """Documents in one SQLite database file at ``path``.

    The commit pipeline relies on these ordering rules (asserted where they
    are kept):

    1. **One unsynced commit at a time.** A transaction starts only once the
       previous one is settled: durable (its fsync answered "done") or
       failed. An fsync's success vouches for the commit it was asked for
       and everything before it; after a failed fsync the kernel may have
       dropped that commit's pages and still answer the next fsync "done",
       so a commit written on top of an unsettled one could be acknowledged
       by an fsync that does not cover what it builds on. Appends made
       meanwhile wait in the queue and go into the next transaction.
    2. **Checkpoints only between settled commits.** A checkpoint copies the
       WAL into the database file and lets the next commit start the WAL
       over. With a commit still waiting for its fsync, the helper's
       fdatasync of the WAL would race that copy, and the pages of a commit
       whose fsync then failed would be spread into the database file.
    3. **After a failed fsync, nothing.** No commit, no checkpoint, and no
       read returns: every later append and read raises
       :class:`~collab.store.base.StoreFailed` until restart.
    4. **Reads never show an unsynced row.** A read of the file (on the
       store's thread, or the op-id lookup on the loop) may see a commit
       whose fsync is outstanding; it returns only once every commit it
       could have seen is settled, and raises if one failed (rule 3).
    """

    pipelined = True  # one pipeline commits appends in order; GroupWrite refuses gaps

    #: The ``synchronous`` settings accepted (see the module's docstring).
    SYNCHRONOUS = ("FULL", "NORMAL")
    #: A commit carrying a snapshot longer than this (code points) runs on the store's thread.
    SNAPSHOT_ON_LOOP_MAX = 65536
    #: About this many bytes in the WAL start a checkpoint (SQLite's own default is
    #: 1,000 pages, 4 MiB with its default page size).
    CHECKPOINT_BYTES = 4 << 20
    #: A safety net: how many op ids the op-id index keeps in memory in all, about
    #: 100 bytes each (see :class:`~collab.store.opindex.OpIdIndex`).
    LOG_IDS_MAX = 2_000_000
    #: A document with more compacted ids than this when first written gets no id
    #: filter (building one takes time on the store's thread and memory per id).
    FILTER_BUILD_MAX = 20_000

    def __init__(self, path: str, history_depth: int = 1000, synchronous: str = "FULL",
                 fsync_timeout: float = 10.0, session_gap: float = history.SESSION_GAP,
                 maintain: bool = True) -> None:
        if synchronous.upper() not in self.SYNCHRONOUS:
            raise ValueError(f"synchronous={synchronous!r}: use one of {', '.join(self.SYNCHRONOUS)}")
        self.path = path
        self.history_depth = history_depth
        self.session_gap = session_gap
        #: History reads, on the store's thread.
        self._history = SqliteHistory(history_depth)
        self.synchronous = synchronous.upper()
        #: Seconds an fsync may stay unanswered before :meth:`health` reports it.
        self.fsync_timeout = fsync_timeout
        #: The store thread's connection: opening, loads, lists, checkpoints.
        self._db: sqlite3.Connection | None = None
        #: The event loop's connections: commits, and the hub's per-batch id lookup.
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._walsync: WalSync | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._index: OpIdIndex | None = None
        self._write: GroupWrite | None = None
        self._pending: list[Append] = []
        #: A commit or checkpoint is in progress or about to start (appends queue behind it).
        self._committing = False
        self._checkpointing = False
        self._idle_waiters: list[asyncio.Future[None]] = []
        #: Transactions started and settled (durable, or failed) so far, and who waits for more.
        self._started = 0
        self._settled = 0
        self._settled_waiters: list[asyncio.Future[None]] = []
        #: The appends of the commit started and not yet settled (rule 1: at most one).
        self._unsynced: list[Append] | None = None
        #: When the outstanding fsync was asked for (``time.monotonic()``), if one is.
        self._sync_since: float | None = None
        #: Why the store stopped (a failed fsync), or ``None``.
        self._failed: str | None = None
        #: Transactions committed and ops written, for /metrics and benchmarks.
        self.commits = 0
        self.ops_written = 0
        #: Seconds from asking for each commit's fsync to its answer (``collab_store_sync_seconds``):
        #: every acknowledgement waits for one, so a slow disk shows here first.
        self.sync_latency = Histogram()
        self._init_upkeep(maintain)

    # -- plumbing ---------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise RuntimeError("the SQLite store is not open")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _on_thread(self, then: Callable[[concurrent.futures.Future], object], fn: Callable[..., object], *args: Any) -> None:
        """Run ``fn(*args)`` on the store's thread, then ``then(future)`` on the loop (also when
        it could not start: the future holds the error)."""
        loop = self._loop
        assert loop is not None
        try:
            if self._executor is None:
                raise RuntimeError("the SQLite store is closed")
            work = self._executor.submit(fn, *args)
        except RuntimeError as exc:  # closed, or shutting down
            work = concurrent.futures.Future()
            work.set_exception(exc)
        work.add_done_callback(lambda done: _call_soon_threadsafe(loop, then, done))

    def _connect(self, *pragmas: str) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        for pragma in pragmas:
            db.execute(pragma)
        return db

    def _open_sync(self) -> None:
        directory = os.path.dirname(os.path.abspath(self.path))
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            raise SystemExit(f"cannot create the data directory {directory!r} ({exc}); choose another with --data-dir") from None
        sync_files(self.path)  # what an earlier run left with the kernel is durable before anything is read
        db = self._connect("PRAGMA journal_mode=WAL", f"PRAGMA synchronous={self.synchronous}", "PRAGMA busy_timeout=5000")
        try:
            migrate(db)
        except BaseException:
            db.close()
            raise
        self._db = db
        # The event loop's writer: NORMAL hands a commit to the OS without waiting for the
        # disk (with FULL, WalSync's fdatasync follows); checkpoints are the thread's.
        self._writer = self._connect("PRAGMA synchronous=NORMAL", "PRAGMA wal_autocheckpoint=0", "PRAGMA busy_timeout=5000")
        # A reader for the hub's per-batch read of op ids, also used from the event loop.
        self._reader = self._connect("PRAGMA query_only=1")

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="collab-sqlite")
        try:
            await self._run(self._open_sync)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise
        self._index = OpIdIndex(self._on_thread, self._thread_db, self.LOG_IDS_MAX, self.FILTER_BUILD_MAX)
        self._write = GroupWrite(self._index, self.history_depth, self.session_gap)
        if self.synchronous == "FULL":
            self._walsync = WalSync(self.path + "-wal", self._executor)
            self._walsync.start()

    def _thread_db(self) -> sqlite3.Connection:
        assert self._db is not None
        return self._db

    @property
    def fsync_helper_pid(self) -> int | None:
        """The process id of the helper that fsyncs the WAL (``FULL``, while it runs)."""
        return self._walsync.helper_pid if self._walsync is not None else None

    @property
    def _log_ids(self) -> dict[str, dict[str, int]]:
        """The op-id index's log ids (for tests)."""
        return self._index.log_ids if self._index is not None else {}

    @property
    def _log_ids_count(self) -> int:
        return self._index.count if self._index is not None else 0

    async def close(self) -> None:
        await self._idle()
        self._stop_upkeep()
        if self._walsync is not None:
            self._walsync.close()
            self._walsync = None
        for name in ("_writer", "_reader"):
            conn = getattr(self, name)
            if conn is not None:
                conn.close()
                setattr(self, name, None)
        if self._db is not None:
            await self._run(self._db.close)
            self._db = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    # -- health -------------------------------------------------------------

    def health(self) -> str | None:
        if self._failed is not None:
            return self._failed
        since = self._sync_since
        if since is not None:
            waited = time.monotonic() - since
            if waited > self.fsync_timeout:
                return (f"an fsync of {self.path}-wal has been outstanding for {waited:.0f} s "
                        f"(over {self.fsync_timeout:g} s): the disk may be hung, and acknowledgements wait for it")
        return None

    def _raise_if_failed(self) -> None:
        if self._failed is not None:
            raise StoreFailed(self._failed)

    def _fail(self, why: str) -> None:
        """Stop the store for good (rule 3): every later append and read raises."""
        if self._failed is None:
            self._failed = f"the SQLite store stopped: {why}; fix the disk, then restart the server"
            log.critical("%s; nothing more is acknowledged until then", self._failed)

    # -- writes -------------------------------------------------------------

    def start_append(self, doc: str, ops: list[StoredOp], size: int, snapshot: tuple[int, str] | None = None,
                     on_done: Callable[[asyncio.Future[None]], object] | None = None,
                     nbytes: int | None = None) -> asyncio.Future[None]:
        """Queue an append; the future resolves once it is durable (or fails with its error).

        No task per append: the future is settled, and ``on_done(future)``
        called, straight from the callback that reports the fsync to the
        event loop, so an ack is as few loop turns as possible behind it.
        With no commit in progress, the next one starts at the end of this
        loop turn (appends made in the same turn, to any document, share
        it); otherwise once the one in progress is settled (rule 1).
        """
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._pending.append(Append(doc, ops, size, snapshot, fut, on_done, nbytes=nbytes))
        if not self._committing:
            self._committing = True
            loop.call_soon(self._commit_pending)
        return fut

    async def append(self, doc: str, ops: list[StoredOp], size: int, snapshot: tuple[int, str] | None = None,
                     nbytes: int | None = None) -> None:
        await self.start_append(doc, ops, size, snapshot, nbytes=nbytes)

    def _commit_pending(self) -> None:
        """Commit everything pending as one transaction; settle it once it is durable."""
        batch, self._pending = self._pending, []
        if not batch:
            self._committing = False
            self._wake_idle()
            self._schedule_maintenance()
            return
        if self._failed is not None:  # rule 3: refused, never written
            self._settle(batch, [StoreFailed(self._failed)] * len(batch))
            self._commit_pending()
            return
        assert self._settled == self._started and not self._checkpointing, "rule 1: one unsynced commit at a time"
        self._started += 1
        self._unsynced = batch
        if self._executor is not None and any(a.snapshot is not None and len(a.snapshot[1]) > self.SNAPSHOT_ON_LOOP_MAX
                                              for a in batch):
            # A large snapshot takes milliseconds to write: on the store's thread, which
            # gives up the GIL inside SQLite, the loop serves on.
            self._on_thread(functools.partial(self._written_on_thread, batch), self._commit_sync, batch)
            return
        try:
            if self._writer is None:
                raise RuntimeError("the SQLite store is closed")
            errors: list[BaseException | None] = list(self._commit_sync(batch))
        except Exception as exc:  # the whole transaction failed (disk full, I/O error): rolled back
            errors = [exc] * len(batch)
        self._written(batch, errors)

    def _commit_sync(self, batch: list[Append]) -> list[Exception | None]:
        """Write ``batch`` in one transaction on the writer's connection; one error slot per append."""
        assert self._write is not None and self._writer is not None
        errors = self._write.commit(self._writer, batch)
        self.commits += 1
        self.ops_written += sum(len(a.ops) for a, e in zip(batch, errors) if e is None)
        return errors

    def _written_on_thread(self, batch: list[Append], work: concurrent.futures.Future) -> None:
        try:
            errors: list[BaseException | None] = list(work.result())
        except Exception as exc:
            errors = [exc] * len(batch)
        self._written(batch, errors)

    def _written(self, batch: list[Append], errors: list[BaseException | None]) -> None:
        """A transaction is written (or failed): index its op ids, and settle it once it is durable."""
        index, write = self._index, self._write
        assert index is not None and write is not None
        for a, error in zip(batch, errors):
            if error is None:
                assert self._reader is not None
                through = None if a.snapshot is None else write.compacted_through(a.snapshot, a.ops[-1].rev)
                index.committed(self._reader, a.doc, a.ops, through)
            else:
                index.drop(a.doc)
        walsync = self._walsync
        if walsync is None or all(e is not None for e in errors):
            asyncio.get_running_loop().call_soon(self._committed, batch, errors)
        else:
            self._sync_since = time.monotonic()
            walsync.sync(functools.partial(self._synced, batch, errors))

    def _synced(self, batch: list[Append], errors: list[BaseException | None], error: BaseException | None) -> None:
        """The fsync of a transaction answered: settle it; a failure stops the store (rule 3)."""
        if self._sync_since is not None:
            self.sync_latency.since(self._sync_since)
        self._sync_since = None
        if error is not None:
            self._fail(f"an fsync of the WAL failed ({error})")
            assert self._failed is not None
            errors = [StoreFailed(self._failed)] * len(batch)
        self._committed(batch, errors)

    def _committed(self, batch: list[Append], errors: list[BaseException | None]) -> None:
        """Settle a transaction's appends once it is durable, then checkpoint or start the next one."""
        self._settled += 1
        self._unsynced = None
        waiters, self._settled_waiters = self._settled_waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)
        self._settle(batch, errors)
        assert self._write is not None
        upkeep_due = self._committed_for_upkeep(batch)
        if self._failed is None and self._write.wal_bytes >= self.CHECKPOINT_BYTES:
            self._checkpoint()
        elif upkeep_due:
            self._maintenance_step()
        else:
            self._commit_pending()

    @staticmethod
    def _settle(batch: list[Append], errors: list[BaseException | None]) -> None:
        for a, error in zip(batch, errors):
            if a.fut.done():
                continue
            if error is None:
                a.fut.set_result(None)
            else:
                a.fut.set_exception(error)
        for a in batch:  # after every future is settled: a callback may look at later ones
            if a.on_done is not None:
                try:
                    a.on_done(a.fut)
                except Exception:
                    log.exception("a commit callback failed")

    def _checkpoint(self) -> None:
        """Checkpoint the WAL on the store's thread, then go on committing.

        No commit runs meanwhile (appends queue, as behind a commit), so the
        checkpoint copies the whole WAL and the next commit can start the
        WAL file over: a checkpoint racing a stream of commits would never
        catch up, and the file would grow without end.
        """
        assert self._committing and self._settled == self._started, "rule 2: checkpoints only between settled commits"
        assert self._failed is None, "rule 3: no checkpoint after a failed fsync"
        assert self._write is not None
        self._write.wal_bytes = 0
        self._checkpointing = True
        self._on_thread(self._checkpointed, self._checkpoint_sync)

    def _checkpoint_sync(self) -> None:
        assert self._db is not None
        self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()

    def _checkpointed(self, work: concurrent.futures.Future) -> None:
        self._checkpointing = False
        if work.exception() is not None:  # the next one may succeed; the WAL only grows meanwhile
            log.warning("a WAL checkpoint failed: %s", work.exception())
        self._commit_pending()

    def _wake_idle(self) -> None:
        waiters, self._idle_waiters = self._idle_waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    async def _idle(self) -> None:
        """Return once no commit is in progress or pending."""
        while self._committing:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._idle_waiters.append(waiter)
            await waiter

    def forget(self, doc: str) -> None:
        if self._index is not None:
            self._index.drop(doc)
        self._history.runs_cache.forget(doc)

    # -- reads --------------------------------------------------------------

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the store's thread, returned once every commit it could see is durable (rule 4)."""
        self._raise_if_failed()
        result = await self._run(fn, *args)
        await self._durable(self._started)  # every commit the read saw was started by now
        self._raise_if_failed()
        return result

    async def _durable(self, count: int) -> None:
        """Return once the first ``count`` commits are settled (durable, or failed)."""
        while self._settled < count:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._settled_waiters.append(waiter)
            await waiter

    def _load_sync(self, doc: str, history_depth: int) -> DocState:
        db = self._thread_db()
        db.execute("BEGIN")  # one read transaction: the loop commits meanwhile, on another connection
        try:
            row = db.execute("SELECT rev, text FROM snapshots WHERE doc = ? ORDER BY rev DESC LIMIT 1", (doc,)).fetchone()
            snap_rev, text = row if row else (0, "")
            row = db.execute("SELECT rev FROM docs WHERE id = ?", (doc,)).fetchone()
            rev = row[0] if row else 0
            start = min(snap_rev, max(0, rev - history_depth))
            ops = log_after(db, doc, start, self._history.names)
        finally:
            db.execute("COMMIT")
        return replay(doc, snap_rev, text, ops, rev, history_depth)

    async def load(self, doc: str, history_depth: int) -> DocState:
        return await self._read(self._load_sync, doc, history_depth)

    def _find_op_sync(self, doc: str, op_id: str) -> int | None:
        db = self._thread_db()
        db.execute("BEGIN")  # one snapshot: a compaction between the two reads would hide the id
        try:
            return lookup(db, doc, [op_id], None).get(op_id)
        finally:
            db.execute("COMMIT")

    async def find_op(self, doc: str, op_id: str) -> int | None:
        return await self._read(self._find_op_sync, doc, op_id)

    async def find_ops(self, doc: str, op_ids: list[str]) -> dict[str, int]:
        """Run on the event loop, not the store's thread: an index lookup on its own
        connection, mostly answered from memory (:class:`~collab.store.opindex.OpIdIndex`).
        The hub asks this once per batch of a document longer than its kept history,
        so a thread round trip here would cost every such batch a wait. An id found
        may be in a commit whose fsync is outstanding: then this waits for it (rule 4)."""
        self._raise_if_failed()
        if self._reader is None or self._index is None:
            raise RuntimeError("the SQLite store is not open")
        found = self._index.find(self._reader, doc, op_ids)
        if found and self._settled < self._started and self._maybe_unsynced(doc, max(found.values())):
            await self._durable(self._started)
            self._raise_if_failed()
        return found

    def _maybe_unsynced(self, doc: str, rev: int) -> bool:
        """Whether revision ``rev`` of ``doc`` may be in the commit whose fsync is outstanding."""
        unsynced = self._unsynced
        return unsynced is None or any(a.doc == doc and a.ops[0].rev <= rev for a in unsynced)

    def _ops_since_sync(self, doc: str, rev: int) -> list[StoredOp]:
        return log_after(self._thread_db(), doc, rev, self._history.names)

    async def ops_since(self, doc: str, rev: int) -> list[StoredOp]:
        return await self._read(self._ops_since_sync, doc, rev)

    def _list_sync(self, limit: int | None, after: ListPosition | None) -> list[DocInfo]:
        where, args = "", []
        if after is not None:
            where, args = " AND (updated < ? OR (updated = ? AND id > ?))", [after.updated, after.updated, after.id]
        rows = self._thread_db().execute(
            f"SELECT {meta.DOC_COLUMNS} FROM docs WHERE deleted IS NULL{where} ORDER BY updated DESC, id LIMIT ?",
            [*args, -1 if limit is None else limit])
        return [DocInfo(*row) for row in rows]

    async def list_docs(self, limit: int | None = None, after: ListPosition | None = None) -> list[DocInfo]:
        return await self._read(self._list_sync, limit, after)

    async def text_at(self, doc: str, rev: int) -> str:
        return await self._read(self._history.text_at, self._thread_db(), doc, rev)

    async def sessions(self, doc: str, before: int | None = None, limit: int = 50) -> list[history.Session]:
        return await self._read(self._history.sessions, self._thread_db(), doc, before, limit)

    async def authorship(self, doc: str, rev: int | None = None) -> list[dict]:
        return await self._read(self._history.authorship, self._thread_db(), doc, rev)

    async def thin(self, before: float) -> int:
        """Only before serving (the store's thread writes here, which must not meet a commit)."""
        await self._idle()
        return await self._read(self._history.thin, self._thread_db(), before)

    async def ping(self) -> None:
        """Raise if the store cannot serve: it failed, an fsync hangs (see :meth:`health`), or the file is unreadable."""
        problem = self.health()
        if problem is not None:
            raise StoreFailed(problem)
        await self._run(self._thread_db().execute, "SELECT 1")

    # -- credentials (small writes of their own on the store's thread: see sqlite_meta) --------

    async def _meta(self, fn: Callable[..., T], *args: Any) -> T:
        self._raise_if_failed()
        return await self._run(fn, self._thread_db(), *args)

    async def put_credential(self, cred: Credential) -> Credential:
        return await self._meta(meta.put_credential, cred)

    async def get_credential(self, cred_id: str) -> Credential | None:
        return await self._meta(meta.get_credential, cred_id)

    async def doc_credentials(self, doc: str) -> list[Credential]:
        return await self._meta(meta.doc_credentials, doc)

    async def credential_changes(self, after_seq: int) -> list[Credential]:
        return await self._meta(meta.credential_changes, after_seq)

    async def prune_credentials(self, expired_before: float) -> int:
        return await self._meta(meta.prune_credentials, expired_before)

    async def set_deleted(self, doc: str, when: float | None) -> bool:
        return await self._meta(meta.set_deleted, doc, when)

    async def trash(self) -> list[DocInfo]:
        return await self._meta(meta.trash)

    async def purge(self, deleted_before: float, keep: set[str]) -> list[str]:
        gone = await self._meta(meta.purge, deleted_before, keep)
        for doc in gone:
            self.forget(doc)
        return gone

    async def set_title(self, doc: str, title: str | None) -> bool:
        return await self._meta(meta.set_title, doc, title)

    async def title(self, doc: str) -> str | None:
        return await self._meta(meta.title, doc)

    async def set_heading(self, doc: str, heading: str | None) -> None:
        await self._meta(meta.set_heading, doc, heading)

    async def heading(self, doc: str) -> str | None:
        return await self._meta(meta.heading, doc)

    async def rename(self, old: str, new: str) -> str:
        result = await self._meta(meta.rename, old, new, time.time())
        self.forget(old)
        self.forget(new)
        return result

    async def renames(self) -> dict[str, str]:
        return await self._meta(meta.renames)
