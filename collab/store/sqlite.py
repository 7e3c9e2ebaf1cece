"""The embedded default store: one SQLite file, written with group commit.

Appends made in the same event-loop turn (and while the previous commit is
in progress), across all documents, are written in one transaction, and an
append returns only once its transaction is durable, so an acknowledged
operation survives ``kill -9``.

The transaction itself runs on the event loop (unless it carries a large
snapshot: see :attr:`SqliteStore.SNAPSHOT_ON_LOOP_MAX`), with SQLite's
``synchronous=NORMAL``: a few dozen microseconds of CPU that only hand the
pages to the operating system, so nothing waits for the disk there. With
``FULL`` (the default) an append then waits for an ``fdatasync`` of the WAL
file, made by a helper process (:mod:`collab.store.walsync`) while the loop
goes on; one ``fdatasync`` covers the whole transaction, as SQLite's own
``synchronous=FULL`` would, and survives a power cut too. With ``NORMAL``
(``COLLAB_SQLITE_SYNC=normal``) an append is done at its commit: that still
survives ``kill -9``, but a power cut or kernel crash may lose the last
commits (the file stays consistent).

WAL checkpoints, reads that may be long (loading a document, the document
list) and opening the file run on one dedicated thread, on their own
connection, so none of them holds up the event loop; the writer's
connection checkpoints nothing itself.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import operator
import os
import sqlite3
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator, TypeVar

from .base import DocInfo, DocState, RevisionConflict, Store, StoredOp, replay
from .base import dump_op as _dumps
from .base import load_op as _loads
from .idfilter import IdFilter
from .walsync import WalSync


T = TypeVar("T")
log = logging.getLogger("collab.store")

SCHEMA = """
CREATE TABLE IF NOT EXISTS docs (
    id TEXT PRIMARY KEY,
    rev INTEGER NOT NULL,
    size INTEGER NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
-- The log: one row per append (a batch of ops with consecutive revisions),
-- not one per op: a row per op cost 1.2-2.9 µs per op to insert, a row per
-- batch about 0.3. ``ops`` is JSON, [[op, client, op_id], ...], for the
-- revisions ``first`` .. ``rev``.
CREATE TABLE IF NOT EXISTS log (
    doc TEXT NOT NULL,
    rev INTEGER NOT NULL,
    first INTEGER NOT NULL,
    ops TEXT NOT NULL,
    PRIMARY KEY (doc, rev)
) WITHOUT ROWID;
-- Op ids outlive the ops they name (the log is compacted), so that a client
-- resending an operation from long ago is still told it was applied. An id is
-- copied here when its op leaves the log, not when it is written: ids are
-- random, so one row per op here would dirty one more page per op in every
-- commit (the log is appended in revision order and shares its pages).
CREATE TABLE IF NOT EXISTS op_ids (
    doc TEXT NOT NULL,
    op_id TEXT NOT NULL,
    rev INTEGER NOT NULL,
    PRIMARY KEY (doc, op_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS snapshots (
    doc TEXT NOT NULL,
    rev INTEGER NOT NULL,
    text TEXT NOT NULL,
    PRIMARY KEY (doc, rev)
) WITHOUT ROWID;
"""
#: The schema's version, in ``PRAGMA user_version``. 1 had an ``ops`` table with
#: a row per op; opening such a file moves its ops into ``log`` (see :func:`_migrate`).
VERSION = 2
_INSERT_LOG = "INSERT INTO log (doc, rev, first, ops) VALUES (?, ?, ?, ?)"

_Append = tuple[str, list[StoredOp], int, "tuple[int, str] | None", "asyncio.Future[None]", Any]


@functools.lru_cache(maxsize=None)
def _insert_ids(rows: int) -> str:
    """The ``INSERT`` of ``rows`` op ids in one statement."""
    return "INSERT OR IGNORE INTO op_ids (doc, op_id, rev) VALUES " + ",".join(["(?, ?, ?)"] * rows)


def _dump_batch(ops: list[StoredOp]) -> str:
    """The ``ops`` column of a log row."""
    return _dumps([[o.op, o.client, o.id] for o in ops])


def _load_batch(first: int, ops: str) -> list[StoredOp]:
    """The inverse of :func:`_dump_batch`, for a row starting at revision ``first``."""
    return [StoredOp(first + k, op, client, op_id) for k, (op, client, op_id) in enumerate(_loads(ops))]


_first = operator.itemgetter(0)


def _log_ids(rows: Any) -> dict[str, int]:
    """Op id -> revision, for log rows of ``(first, ops)``."""
    ids: dict[str, int] = {}
    for first, ops in rows:
        for k, entry in enumerate(_loads(ops)):
            ids[entry[2]] = first + k
    return ids


def _migrate(db: sqlite3.Connection) -> None:
    """Bring a database file to :data:`VERSION` (in one transaction), or refuse a newer one."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > VERSION:
        raise SystemExit(
            f"the database {db.execute('PRAGMA database_list').fetchone()[2]!r} was written by a newer collab "
            f"(schema {version}, this one knows {VERSION}); upgrade collab, or choose another --data-dir"
        )
    db.executescript(SCHEMA)  # each CREATE ... IF NOT EXISTS is atomic; the move below is one transaction
    db.execute("BEGIN IMMEDIATE")
    try:
        if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'ops'").fetchone():
            # Schema 1: a row per op. Runs of consecutive revisions become rows of the log.
            rows: list[tuple[str, int, int, str]] = []
            run: list[StoredOp] = []
            run_doc = ""
            for doc, rev, op, client, op_id in db.execute("SELECT doc, rev, op, client, op_id FROM ops ORDER BY doc, rev"):
                if run and (doc != run_doc or rev != run[-1].rev + 1 or len(run) == 256):
                    rows.append((run_doc, run[-1].rev, run[0].rev, _dump_batch(run)))
                    run = []
                    if len(rows) == 1000:
                        db.executemany(_INSERT_LOG, rows)
                        rows = []
                run_doc = doc
                run.append(StoredOp(rev, _loads(op), client, op_id))
            if run:
                rows.append((run_doc, run[-1].rev, run[0].rev, _dump_batch(run)))
            db.executemany(_INSERT_LOG, rows)
            db.execute("DROP TABLE ops")
        db.execute(f"PRAGMA user_version = {VERSION}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


@contextlib.contextmanager
def _reading(db: sqlite3.Connection) -> Iterator[None]:
    """One read transaction: the statements inside see one state of the file.

    The store's thread reads while the event loop commits, on another
    connection; separate statements could each see a different commit.
    """
    db.execute("BEGIN")
    try:
        yield
    finally:
        db.execute("COMMIT")


def _call_soon_threadsafe(loop: asyncio.AbstractEventLoop, fn: Callable[..., object], *args: Any) -> None:
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:  # the loop is closed: nobody is waiting any more
        pass


class SqliteStore(Store):
    """Documents in one SQLite database file at ``path``."""

    pipelined = True  # one flusher commits appends in order; _check_revisions_sync refuses gaps

    #: The ``synchronous`` settings accepted (see the module's docstring).
    SYNCHRONOUS = ("FULL", "NORMAL")

    def __init__(self, path: str, history_depth: int = 1000, synchronous: str = "FULL") -> None:
        if synchronous.upper() not in self.SYNCHRONOUS:
            raise ValueError(f"synchronous={synchronous!r}: use one of {', '.join(self.SYNCHRONOUS)}")
        self.path = path
        self.history_depth = history_depth
        self.synchronous = synchronous.upper()
        #: The store thread's connection: opening, loads, lists, checkpoints.
        self._db: sqlite3.Connection | None = None
        #: The event loop's connections: commits, and the hub's per-batch id lookup.
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._walsync: WalSync | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: About how many bytes the writer added to the WAL since its last checkpoint.
        self._wal_bytes = 0
        self._executor: ThreadPoolExecutor | None = None
        self._pending: list[_Append] = []
        #: A commit is in progress or about to start (appends queue behind it).
        self._committing = False
        self._idle_waiters: list[asyncio.Future[None]] = []
        #: Transactions started and settled (durable, or failed) so far, and who waits for more.
        self._started = 0
        self._settled = 0
        self._settled_waiters: list[asyncio.Future[None]] = []
        #: Transactions committed and ops written, for /metrics and benchmarks.
        self.commits = 0
        self.ops_written = 0
        #: Per document written since the hub opened it, op id -> revision of the ops after
        #: its last compaction point (the ids up to it are in ``op_ids``): the hub's
        #: per-batch id lookup reads this instead of scanning the log. Changed after each
        #: commit (on the loop, or on the store's thread for one with a large snapshot: a
        #: filter is updated before the ids that left the log are dropped, so a lookup on
        #: the loop meanwhile is still right), and when the hub closes the document.
        self._log_ids: OrderedDict[str, dict[str, int]] = OrderedDict()
        self._log_ids_count = 0
        #: For documents in :attr:`_log_ids` (not all: see :attr:`FILTER_BUILD_MAX`), a
        #: filter of the ids in ``op_ids``: the lookup asks the database only for ids the
        #: filter does not rule out. Made with the document's log ids and dropped with
        #: them, and filled in before them: whenever a lookup sees a document's log ids,
        #: that document's filter (if any) holds every id the log no longer has.
        self._filters: dict[str, IdFilter] = {}
        #: Filters being built on the store's thread: the ids compacted since each began.
        self._filter_builds: dict[str, list[str]] = {}

    # -- plumbing ---------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise RuntimeError("the SQLite store is not open")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _open_sync(self) -> None:
        directory = os.path.dirname(os.path.abspath(self.path))
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            raise SystemExit(f"cannot create the data directory {directory!r} ({exc}); choose another with --data-dir") from None
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={self.synchronous}")
        db.execute("PRAGMA busy_timeout=5000")
        try:
            _migrate(db)
        except BaseException:
            db.close()
            raise
        self._db = db
        # The event loop's writer: NORMAL hands a commit to the OS without waiting for the
        # disk (with FULL, WalSync's fdatasync follows); checkpoints are the thread's.
        writer = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        writer.execute("PRAGMA synchronous=NORMAL")
        writer.execute("PRAGMA wal_autocheckpoint=0")
        writer.execute("PRAGMA busy_timeout=5000")
        self._writer = writer
        # A reader for the hub's hot-path read of op ids, also used from the event loop.
        reader = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        reader.execute("PRAGMA query_only=1")
        self._reader = reader

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="collab-sqlite")
        try:
            await self._run(self._open_sync)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise
        if self.synchronous == "FULL":
            self._walsync = WalSync(self.path + "-wal", self._executor)
            self._walsync.start()

    @property
    def fsync_helper_pid(self) -> int | None:
        """The process id of the helper that fsyncs the WAL (``FULL``, while it runs)."""
        return self._walsync.helper_pid if self._walsync is not None else None

    async def close(self) -> None:
        await self._idle()
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

    # -- writes -------------------------------------------------------------

    def start_append(self, doc: str, ops: list[StoredOp], size: int, snapshot: tuple[int, str] | None = None,
                     on_done: Callable[[asyncio.Future[None]], object] | None = None) -> asyncio.Future[None]:
        """Queue an append; the future resolves once it is committed (or fails with its error).

        No task per append: the future is settled, and ``on_done(future)``
        called, straight from the callback that reports the commit to the
        event loop, so an ack is as few loop turns as possible behind its
        fsync. With no commit in progress, the next one starts at the end of
        this loop turn (appends made in the same turn, to any document,
        share it); otherwise when the one in progress is reported.
        """
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._pending.append((doc, ops, size, snapshot, fut, on_done))
        if not self._committing:
            self._committing = True
            loop.call_soon(self._commit_pending)
        return fut

    async def append(self, doc: str, ops: list[StoredOp], size: int, snapshot: tuple[int, str] | None = None) -> None:
        await self.start_append(doc, ops, size, snapshot)

    def _commit_pending(self) -> None:
        """Commit everything pending as one transaction; settle it once it is durable."""
        batch, self._pending = self._pending, []
        if not batch:
            self._committing = False
            self._wake_idle()
            return
        self._started += 1
        items = [(d, o, s, snap) for d, o, s, snap, _, _ in batch]
        if self._executor is not None and any(snap is not None and len(snap[1]) > self.SNAPSHOT_ON_LOOP_MAX
                                              for *_, snap in items):
            # A large snapshot takes milliseconds to write (about 10 ms per MB): on the
            # store's thread, which gives up the GIL inside SQLite, the loop serves on.
            self._on_thread(functools.partial(self._written_on_thread, batch), self._commit_sync, items)
            return
        try:
            if self._writer is None:
                raise RuntimeError("the SQLite store is closed")
            errors: list[BaseException | None] = list(self._commit_sync(items))
        except Exception as exc:  # the whole transaction failed (disk full, I/O error)
            errors = [exc] * len(batch)
        self._written(batch, errors)

    #: A commit carrying a snapshot longer than this (code points) runs on the store's thread.
    SNAPSHOT_ON_LOOP_MAX = 65536

    def _written_on_thread(self, batch: list[_Append], work: concurrent.futures.Future) -> None:
        try:
            errors: list[BaseException | None] = list(work.result())
        except Exception as exc:
            errors = [exc] * len(batch)
        self._written(batch, errors)

    def _written(self, batch: list[_Append], errors: list[BaseException | None]) -> None:
        """A transaction is written (or failed): settle it once it is durable."""
        walsync = self._walsync
        if walsync is None or all(e is not None for e in errors):
            asyncio.get_running_loop().call_soon(self._committed, batch, errors)
        else:
            walsync.sync(lambda error: self._committed(batch, errors if error is None else [error] * len(batch)))

    def _committed(self, batch: list[_Append], errors: list[BaseException | None]) -> None:
        """Settle a transaction's appends once it is durable, then start the next one."""
        self._settled += 1
        waiters, self._settled_waiters = self._settled_waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)
        for (*_, fut, _), error in zip(batch, errors):
            if fut.done():
                continue
            if error is None:
                fut.set_result(None)
            else:
                fut.set_exception(error)
        for *_, fut, on_done in batch:  # after every future is settled: a callback may look at later ones
            if on_done is not None:
                try:
                    on_done(fut)
                except Exception:
                    log.exception("a commit callback failed")
        if self._wal_bytes >= self.CHECKPOINT_BYTES:
            self._checkpoint()
        else:
            self._commit_pending()

    #: About this many bytes in the WAL start a checkpoint (SQLite's own default is
    #: 1,000 pages, 4 MiB with its default page size).
    CHECKPOINT_BYTES = 4 << 20

    def _checkpoint(self) -> None:
        """Checkpoint the WAL on the store's thread, then go on committing.

        No commit runs meanwhile (appends queue, as behind a commit), so the
        checkpoint copies the whole WAL and the next commit can start the
        WAL file over: a checkpoint racing a stream of commits would never
        catch up, and the file would grow without end.
        """
        self._wal_bytes = 0
        self._on_thread(self._checkpointed, self._checkpoint_sync)

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

    def _checkpoint_sync(self) -> None:
        assert self._db is not None
        self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()

    def _checkpointed(self, work: concurrent.futures.Future) -> None:
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

    #: Compacted op ids are inserted this many per statement: a multi-row ``INSERT``
    #: cost 1.7 µs per row against 2.9 for ``executemany``, which steps once per row
    #: (measured on schema 1's per-op log rows). 300 rows are 900 parameters, under
    #: the 999 of older SQLite builds.
    INSERT_IDS = 300
    #: A safety net: how many ids :attr:`_log_ids` keeps in all, about 100 bytes each
    #: (the least recently written documents are dropped first; their lookups scan their
    #: log). An open document's ids take about as much memory as its kept history, and
    #: are dropped with it when the hub closes the document.
    LOG_IDS_MAX = 2_000_000
    #: A document whose ``op_ids`` holds more ids than this when it is first written
    #: after opening gets no filter (its lookups ask the database, as without one):
    #: a filter costs about 1 µs per id to build, on the store's thread, and about
    #: 4 bytes per id of memory.
    FILTER_BUILD_MAX = 20_000
    _UPSERT_DOC = (
        "INSERT INTO docs (id, rev, size, created, updated) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT(id) DO UPDATE SET rev = excluded.rev, size = excluded.size, updated = excluded.updated"
    )

    def _commit_sync(self, batch: list[tuple[str, list[StoredOp], int, tuple[int, str] | None]]) -> list[Exception | None]:
        """Write ``batch`` in one transaction (one fsync); one error slot per append.

        The usual case is written with three ``executemany`` calls for the
        whole batch, whatever the number of documents. Only if that hits a
        taken revision (another writer: never, with one process per file) is
        the transaction rolled back and redone document by document under
        savepoints, so one conflicting append fails alone.
        """
        db = self._writer
        assert db is not None
        now = time.time()
        db.execute("BEGIN IMMEDIATE")
        try:
            errors = self._check_revisions_sync(db, batch)
            good = [b for b, e in zip(batch, errors) if e is None]
            try:
                self._write_all_sync(db, good, now, {})
            except sqlite3.IntegrityError:
                db.execute("ROLLBACK")
                db.execute("BEGIN IMMEDIATE")
                each = iter(self._write_each_sync(db, good, now))
                errors = [e if e is not None else next(each) for e in errors]
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        for (doc, ops, _, snapshot), error in zip(batch, errors):
            if error is None:
                self._remember_ids_sync(db, doc, ops, snapshot)
            else:
                self._drop_ids_sync(doc)
        self.commits += 1
        self.ops_written += sum(len(ops) for (_, ops, _, _), e in zip(batch, errors) if e is None)
        return errors

    def _remember_ids_sync(self, db: sqlite3.Connection, doc: str, ops: list[StoredOp],
                           snapshot: tuple[int, str] | None) -> None:
        """Bring :attr:`_log_ids` and :attr:`_filters` up to a commit of ``ops`` to ``doc``
        (after COMMIT, where the commit ran)."""
        ids = self._log_ids.pop(doc, None)
        if ids is None:  # first write to this document here: read what its log holds
            ids = _log_ids(db.execute("SELECT first, ops FROM log WHERE doc = ?", (doc,)))
            self._build_filter(doc)
        else:
            self._log_ids_count -= len(ids)
            for o in ops:
                ids[o.id] = o.rev
            if snapshot is not None:  # the ids leaving the log go into op_ids: into the filter first
                gone = self._compacted_through(snapshot, ops[-1].rev)
                leaving = [i for i, r in ids.items() if r <= gone]
                compacted_filter = self._filters.get(doc)
                if compacted_filter is not None:
                    compacted_filter.update(leaving)
                elif doc in self._filter_builds:
                    self._filter_builds[doc].extend(leaving)
                ids = {i: r for i, r in ids.items() if r > gone}
        self._log_ids[doc] = ids
        self._log_ids_count += len(ids)
        while self._log_ids_count > self.LOG_IDS_MAX and len(self._log_ids) > 1:
            self._drop_ids_sync(next(iter(self._log_ids)))

    def _drop_ids_sync(self, doc: str) -> None:
        """Forget ``doc``'s log ids and filter (its lookups then scan its log)."""
        self._log_ids_count -= len(self._log_ids.pop(doc, None) or ())
        self._filters.pop(doc, None)
        self._filter_builds.pop(doc, None)

    def _build_filter(self, doc: str) -> None:
        """Build ``doc``'s filter of compacted ids on the store's thread; install it on the loop.

        Until it is installed, the document's lookups ask the database for
        every id its log ids lack, which is always right. Ids compacted while
        the thread reads are collected in :attr:`_filter_builds` and added at
        installation: the thread's read sees every compaction committed
        before this call (commits run on the loop), the list every one after.
        """
        since: list[str] = []
        self._filter_builds[doc] = since
        self._on_thread(functools.partial(self._filter_built, doc, since), self._read_filter_sync, doc)

    def _read_filter_sync(self, doc: str) -> IdFilter | None:
        assert self._db is not None
        compacted = [i for (i,) in self._db.execute(
            "SELECT op_id FROM op_ids WHERE doc = ? LIMIT ?", (doc, self.FILTER_BUILD_MAX + 1))]
        if len(compacted) > self.FILTER_BUILD_MAX:
            return None
        return IdFilter(compacted, capacity=max(16384, 4 * len(compacted)))

    def _filter_built(self, doc: str, since: list[str], work: concurrent.futures.Future) -> None:
        if self._filter_builds.get(doc) is not since:  # dropped (or rebuilt) meanwhile
            return
        del self._filter_builds[doc]
        built = None if work.exception() is not None else work.result()
        if built is not None and doc in self._log_ids:
            built.update(since)
            self._filters[doc] = built

    def forget(self, doc: str) -> None:
        self._drop_ids_sync(doc)

    def _compacted_through(self, snapshot: tuple[int, str], last: int) -> int:
        """The last revision a snapshot at ``snapshot[0]`` removes from the log (``last`` is the newest)."""
        return min(snapshot[0], last - self.history_depth)

    def _check_revisions_sync(self, db: sqlite3.Connection, batch: list) -> list[Exception | None]:
        """Refuse appends that do not continue their document's log (a gap, or a revision taken).

        The hub commits a document's batches in order, and the next one may
        be queued before the previous is written (pipelining); if that one
        failed, the next would leave a hole in the log. The revision is read
        in the write transaction (one indexed read per document and commit):
        a log row spans revisions, so its key alone would not refuse an
        append overlapping another writer's (two servers on one file).
        """
        errors: list[Exception | None] = []
        following: dict[str, int] = {}
        for doc, ops, _, _ in batch:
            expected = following.get(doc)
            if expected is None:
                row = db.execute("SELECT rev FROM docs WHERE id = ?", (doc,)).fetchone()
                expected = (row[0] if row else 0) + 1
            if ops[0].rev != expected:
                errors.append(RevisionConflict(f"{doc}: expected revision {expected}, got {ops[0].rev}"))
                following[doc] = expected
                continue
            errors.append(None)
            following[doc] = ops[-1].rev + 1
        return errors

    def _write_all_sync(self, db: sqlite3.Connection, batch: list, now: float,
                        written: dict[str, list[list[StoredOp]]]) -> None:
        """Write ``batch`` in the open transaction; ``written`` collects, per document,
        the ops written so far in this transaction (compactions read it)."""
        rows = [(doc, ops[-1].rev, ops[0].rev, _dump_batch(ops)) for doc, ops, _, _ in batch]
        db.executemany(_INSERT_LOG, rows)
        for doc, ops, _, _ in batch:
            written.setdefault(doc, []).append(ops)
        last: dict[str, tuple[str, int, int, float, float]] = {}
        for doc, ops, size, _ in batch:
            last[doc] = (doc, ops[-1].rev, size, now, now)
        db.executemany(self._UPSERT_DOC, list(last.values()))
        # About what the WAL grows by: the rows, and a page or so per document and for the commit.
        self._wal_bytes += sum(len(r[3]) for r in rows) + 4096 * (1 + len(last))
        for doc, ops, _, snapshot in batch:
            if snapshot is not None:
                self._snapshot_sync(db, doc, snapshot, ops[-1].rev, written.get(doc, []))

    def _write_each_sync(self, db: sqlite3.Connection, batch: list, now: float) -> list[Exception | None]:
        errors: list[Exception | None] = []
        written: dict[str, list[list[StoredOp]]] = {}
        refused: set[str] = set()
        for doc, ops, size, snapshot in batch:
            if doc in refused:  # a later batch of a document whose earlier one failed: it would leave a gap
                errors.append(RevisionConflict(f"{doc}: revision {ops[0].rev} follows a refused append"))
                continue
            db.execute("SAVEPOINT one")
            try:
                self._write_all_sync(db, [(doc, ops, size, snapshot)], now, written)
                db.execute("RELEASE one")
                errors.append(None)
            except sqlite3.IntegrityError as exc:
                db.execute("ROLLBACK TO one")
                db.execute("RELEASE one")
                if written.get(doc, [None])[-1] is ops:
                    written[doc].pop()
                errors.append(RevisionConflict(f"{doc}: revision {ops[0].rev} is already taken ({exc})"))
                refused.add(doc)
        return errors

    def _snapshot_sync(self, db: sqlite3.Connection, doc: str, snapshot: tuple[int, str], last: int,
                       written: list[list[StoredOp]]) -> None:
        """Store a snapshot and compact the log behind it, keeping ``history_depth`` ops.

        Every op up to the compaction point has its id in ``op_ids`` after
        this; the rows wholly before it leave the log. A row that straddles
        it stays whole (so some ops are both in the log and in ``op_ids``),
        and leaves with a later compaction. ``written`` is the document's
        ops written earlier in this transaction, this append's included.
        """
        rev, text = snapshot
        db.execute("INSERT OR REPLACE INTO snapshots (doc, rev, text) VALUES (?, ?, ?)", (doc, rev, text))
        db.execute("DELETE FROM snapshots WHERE doc = ? AND rev < ?", (doc, rev))
        keep_after = self._compacted_through(snapshot, last)
        kept = self._compactable(db, doc, keep_after, written)
        kept.sort(key=_first)  # in key order: each page written once
        values = [v for i, r in kept for v in (doc, i, r)]
        step = 3 * self.INSERT_IDS
        for i in range(0, len(values), step):
            chunk = values[i : i + step]
            db.execute(_insert_ids(len(chunk) // 3), chunk)
        db.execute("DELETE FROM log WHERE doc = ? AND rev <= ?", (doc, keep_after))
        self._wal_bytes += 4 * len(text) + 64 * len(kept)

    def _compactable(self, db: sqlite3.Connection, doc: str, keep_after: int,
                     written: list[list[StoredOp]]) -> list[tuple[str, int]]:
        """``(id, revision)`` of the ops in ``doc``'s log through ``keep_after`` that
        ``op_ids`` may lack.

        From memory when :attr:`_log_ids` holds the document (the log's ids
        as of the last commit, less those already compacted) with the ops
        written since, in this transaction: reading the rows back and
        decoding their JSON cost about as much as inserting the ids.
        Otherwise from the log itself (``INSERT OR IGNORE`` skips the ids of
        a straddling row that are in ``op_ids`` already).
        """
        known = self._log_ids.get(doc)
        if known is None:
            rows = db.execute("SELECT first, ops FROM log WHERE doc = ? AND first <= ?", (doc, keep_after))
            return [(i, r) for i, r in _log_ids(rows).items() if r <= keep_after]
        kept = [(i, r) for i, r in known.items() if r <= keep_after]
        for ops in written:
            if ops[0].rev <= keep_after:
                kept.extend((o.id, o.rev) for o in ops if o.rev <= keep_after)
        return kept

    # -- reads --------------------------------------------------------------

    def _load_sync(self, doc: str, history_depth: int) -> DocState:
        db = self._db
        assert db is not None
        with _reading(db):
            return self._load_in(db, doc, history_depth)

    def _load_in(self, db: sqlite3.Connection, doc: str, history_depth: int) -> DocState:
        row = db.execute("SELECT rev, text FROM snapshots WHERE doc = ? ORDER BY rev DESC LIMIT 1", (doc,)).fetchone()
        snap_rev, text = row if row else (0, "")
        row = db.execute("SELECT rev FROM docs WHERE id = ?", (doc,)).fetchone()
        rev = row[0] if row else 0
        start = min(snap_rev, max(0, rev - history_depth))
        return replay(doc, snap_rev, text, self._log_after(db, doc, start), rev, history_depth)

    @staticmethod
    def _log_after(db: sqlite3.Connection, doc: str, rev: int) -> list[StoredOp]:
        """The ops of ``doc``'s log after revision ``rev``, in order."""
        ops: list[StoredOp] = []
        for first, batch in db.execute("SELECT first, ops FROM log WHERE doc = ? AND rev > ? ORDER BY rev", (doc, rev)):
            ops.extend(_load_batch(first, batch))
        if ops and ops[0].rev <= rev:
            ops = [o for o in ops if o.rev > rev]
        return ops

    async def load(self, doc: str, history_depth: int) -> DocState:
        return await self._run(self._load_sync, doc, history_depth)

    def _find_op_sync(self, doc: str, op_id: str) -> int | None:
        assert self._db is not None
        with _reading(self._db):  # one snapshot: a compaction between the two reads would hide the id
            return self._lookup_sync(self._db, doc, [op_id], None).get(op_id)

    async def find_op(self, doc: str, op_id: str) -> int | None:
        return await self._run(self._find_op_sync, doc, op_id)

    @staticmethod
    def _lookup_sync(db: sqlite3.Connection, doc: str, op_ids: list[str], log_ids: dict[str, int] | None,
                     compacted: IdFilter | None = None) -> dict[str, int]:
        """Revisions of ``op_ids`` in ``doc``: from ``op_ids`` (compacted ops) and from the log.

        ``log_ids`` is the log's ids when known (:attr:`_log_ids`); without
        it, the document's log is scanned (it is short: about
        ``history_depth`` plus one snapshot interval of ops). ``compacted``
        filters the ids that ``op_ids`` is asked for (:attr:`_filters`; used
        only with ``log_ids``).
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
            in_log = _log_ids(db.execute("SELECT first, ops FROM log WHERE doc = ?", (doc,)))
            for i in op_ids:
                rev = in_log.get(i)
                if rev is not None:
                    found[i] = rev
        return found

    def _find_ops_sync(self, doc: str, op_ids: list[str]) -> dict[str, int]:
        assert self._reader is not None
        # Log ids first, then the filter: a commit updates a filter before it drops the ids
        # that left the log (a filter still being built is simply absent: ask the database).
        log_ids = self._log_ids.get(doc)
        return self._lookup_sync(self._reader, doc, op_ids, log_ids, self._filters.get(doc) if log_ids is not None else None)

    async def find_ops(self, doc: str, op_ids: list[str]) -> dict[str, int]:
        """Run on the event loop, not the store's thread: an index lookup of a few
        microseconds on its own connection. The hub asks this once per batch for
        ids it no longer holds in memory, that is for every batch of a document
        longer than its kept history, so a thread round trip here would cost
        every such batch a wait. Sees committed appends, which may still wait
        for their fsync: the hub keeps the ids of batches in flight in memory,
        and an ack of a resend waits for the commits in flight before it."""
        if self._reader is None:
            raise RuntimeError("the SQLite store is not open")
        return self._find_ops_sync(doc, op_ids)

    def _ops_since_sync(self, doc: str, rev: int) -> list[StoredOp]:
        assert self._db is not None
        return self._log_after(self._db, doc, rev)

    async def ops_since(self, doc: str, rev: int) -> list[StoredOp]:
        return await self._run(self._ops_since_sync, doc, rev)

    def _list_sync(self) -> list[DocInfo]:
        assert self._db is not None
        rows = self._db.execute("SELECT id, rev, size, updated FROM docs ORDER BY updated DESC")
        return [DocInfo(*row) for row in rows]

    async def list_docs(self) -> list[DocInfo]:
        """Read on the store's thread, returned once every commit the read could see is durable
        (a revision is never shown before it is acknowledged)."""
        docs = await self._run(self._list_sync)
        await self._durable(self._started)  # every commit the read saw was started by now
        return docs

    async def _durable(self, count: int) -> None:
        """Return once the first ``count`` commits are settled (durable, or failed)."""
        while self._settled < count:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._settled_waiters.append(waiter)
            await waiter

    async def ping(self) -> None:
        assert self._db is not None
        await self._run(self._db.execute, "SELECT 1")
