"""Writing one group transaction of the SQLite store: every document's appends, each refused alone if it must be.

The store gathers the appends made while its previous commit was settling,
across documents, into one transaction (one fsync covers them all). One
document's bad append (a revision taken, content that cannot be encoded or
bound) must not fail the others: such an append is refused with its own
error, and so are that document's later appends in the same transaction
(they would leave a gap in its log), while the rest commit.
"""

from __future__ import annotations

import asyncio
import operator
import sqlite3
import time
from dataclasses import dataclass
from typing import Any, Callable

from . import history
from .base import RevisionConflict, StoredOp
from .opindex import OpIdIndex
from .sqlite_schema import (
    INSERT_LOG, INSERT_SESSION, UPSERT_DOC, dump_batch, dump_session, insert_ids, load_session, session_row,
)

_first = operator.itemgetter(0)

#: Compacted op ids are inserted this many per statement (a multi-row ``INSERT`` costs
#: less per row than ``executemany``); 300 rows are 900 parameters, under the 999 of
#: older SQLite builds.
INSERT_IDS = 300


#: A log row holds about this many bytes of JSON, and at most :data:`ROW_MAX`: the log is a WITHOUT
#: ROWID table, whose rows past about 1,000 bytes (with 4 KiB pages) spill into mostly empty overflow pages.
ROW_BYTES = 800
ROW_MAX = 1000


def log_rows(doc: str, ops: list[StoredOp], authors: list[int] | None, now: float,
             op_bytes: float = 0.0) -> list[tuple[str, int, int, str, float]]:
    """The log rows of one append: one, or as many as keep each under :data:`ROW_MAX` (an op larger
    than that alone gets a row of its own).

    ``op_bytes``, the JSON bytes per op of earlier appends, cuts ``ops`` into rows of about
    :data:`ROW_BYTES` before encoding them, so that an append is usually encoded once; a row
    that still comes out too large is encoded again, cut to its measured size.
    """
    n = len(ops)
    if n * op_bytes > ROW_MAX and n > 1:
        step = -(-n // -(-int(n * op_bytes) // ROW_BYTES))
        return [r for i in range(0, n, step) for r in
                    log_rows(doc, ops[i : i + step], authors[i : i + step] if authors is not None else None, now)]
    text = dump_batch(ops, authors)
    size = len(text) if text.isascii() else len(text.encode())
    if size <= ROW_MAX or n == 1:
        return [(doc, ops[-1].rev, ops[0].rev, text, now)]
    step = -(-n // -(-size // ROW_BYTES))
    rows = []
    for i in range(0, n, step):
        rows.extend(log_rows(doc, ops[i : i + step], authors[i : i + step] if authors is not None else None, now))
    return rows


@dataclass(slots=True, eq=False)
class Append:
    """One append queued for the next transaction, and who waits for it."""

    doc: str
    ops: list[StoredOp]
    size: int
    snapshot: tuple[int, str] | None
    fut: "asyncio.Future[None]"
    on_done: Callable[["asyncio.Future[None]"], object] | None
    #: The log rows, ``(doc, rev, first, ops_json, at)``, once encoded.
    rows: list[tuple[str, int, int, str, float]] | None = None
    #: Each op's author id (a row of ``authors``), once known.
    authors: list[int] | None = None
    #: The document's length in bytes of UTF-8 after the last op (None: unknown).
    nbytes: int | None = None


class GroupWrite:
    """Writes transactions on one connection; copies op ids into ``op_ids`` behind each snapshot."""

    def __init__(self, index: OpIdIndex, history_depth: int, session_gap: float = history.SESSION_GAP) -> None:
        self.index = index
        self.history_depth = history_depth
        self.session_gap = session_gap
        #: About how many bytes the WAL grew by since the store last checkpointed it (the store resets this).
        self.wal_bytes = 0
        #: JSON bytes per op in the last append's log rows: how the next one is cut into rows.
        self.op_bytes = 0.0
        #: ``(name, client)`` -> author id, of authors committed to ``authors``.
        self.author_ids: dict[tuple[str, str], int] = {}

    def compacted_through(self, snapshot: tuple[int, str], last: int) -> int:
        """The last revision a snapshot at ``snapshot[0]`` removes from the log (``last`` is the newest)."""
        return min(snapshot[0], last - self.history_depth)

    def commit(self, db: sqlite3.Connection, batch: list[Append]) -> list[Exception | None]:
        """Write ``batch`` in one transaction; one error slot per append (``None``: written).

        The usual case is written with three ``executemany`` calls for the
        whole batch, whatever the number of documents. Only if that fails is
        the transaction rolled back and redone document by document under
        savepoints, so that a failing append fails alone. Raises if the
        transaction as a whole fails (disk full, I/O error): nothing is written.
        """
        now = time.time()
        new_authors: list[tuple[str, str]] = []
        db.execute("BEGIN IMMEDIATE")
        try:
            errors = self._authors(db, batch, new_authors)
            self._encode(batch, now, errors)
            sessions = self._check_revisions(db, batch, errors)
            good = [a for a, e in zip(batch, errors) if e is None]
            try:
                self._write_all(db, good, now, {}, dict(sessions))
            except Exception:
                db.execute("ROLLBACK")
                for key in new_authors:  # rolled back with the rest; inserted again below
                    self.author_ids.pop(key, None)
                new_authors.clear()
                db.execute("BEGIN IMMEDIATE")
                self._authors(db, good, new_authors)
                self._encode(good, now, [None] * len(good))
                each = iter(self._write_each(db, good, now, sessions))
                errors = [e if e is not None else next(each) for e in errors]
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            for key in new_authors:
                self.author_ids.pop(key, None)
            raise
        return errors

    def _authors(self, db: sqlite3.Connection, batch: list[Append], new: list[tuple[str, str]]) -> list[Exception | None]:
        """Give each append's ops their author ids, adding new authors in the open transaction (listed in ``new``)."""
        errors: list[Exception | None] = []
        ids = self.author_ids
        for a in batch:
            try:
                got = []
                name = client = None
                author = 0
                for o in a.ops:
                    if o.client != client or o.name != name:  # an append's ops usually share one author
                        name, client = key = (o.name, o.client)
                        author = ids.get(key, 0)
                        if not author:
                            db.execute("INSERT OR IGNORE INTO authors (name, client) VALUES (?, ?)", key)
                            author = db.execute("SELECT id FROM authors WHERE name = ? AND client = ?", key).fetchone()[0]
                            ids[key] = author
                            new.append(key)
                    got.append(author)
                a.authors = got
                errors.append(None)
            except (UnicodeError, OverflowError, sqlite3.InterfaceError) as exc:
                errors.append(ValueError(f"{a.doc}: the author of revisions {a.ops[0].rev}-{a.ops[-1].rev} "
                                         f"cannot be stored ({exc})"))
        return errors

    def _encode(self, batch: list[Append], now: float, errors: list[Exception | None]) -> None:
        """Encode each append's log rows: an op that cannot be encoded fails alone."""
        for k, a in enumerate(batch):
            if errors[k] is not None:
                continue
            try:
                a.rows = rows = log_rows(a.doc, a.ops, a.authors, now, self.op_bytes)
                self.op_bytes = sum(len(r[3]) for r in rows) / len(a.ops)
            except Exception as exc:  # e.g. a lone surrogate, an integer too large for JSON
                errors[k] = ValueError(f"{a.doc}: revisions {a.ops[0].rev}-{a.ops[-1].rev} cannot be stored ({exc})")

    @staticmethod
    def _check_revisions(db: sqlite3.Connection, batch: list[Append],
                         errors: list[Exception | None]) -> dict[str, history.Session | None]:
        """Refuse appends that do not continue their document's log (a gap, or a revision taken).

        The hub commits a document's batches in order, and the next one may
        be queued before the previous is written (pipelining); if that one
        failed, the next would leave a hole in the log. The revision is read
        in the write transaction (one indexed read per document and commit):
        a log row spans revisions, so its key alone would not refuse an
        append overlapping another writer's (two servers on one file).
        """
        following: dict[str, int] = {}
        sessions: dict[str, history.Session | None] = {}
        for k, a in enumerate(batch):
            expected = following.get(a.doc)
            if expected is None:
                try:
                    row = db.execute("SELECT rev, session FROM docs WHERE id = ?", (a.doc,)).fetchone()
                except (UnicodeError, OverflowError, sqlite3.InterfaceError) as exc:  # a name SQLite cannot bind
                    errors[k] = ValueError(f"{a.doc!r}: the document's name cannot be stored ({exc})")
                    continue
                expected = (row[0] if row else 0) + 1
                sessions[a.doc] = load_session(row[1]) if row else None
            if errors[k] is not None:
                following[a.doc] = expected
            elif a.ops[0].rev != expected:
                errors[k] = RevisionConflict(f"{a.doc}: expected revision {expected}, got {a.ops[0].rev}")
                following[a.doc] = expected
            else:
                following[a.doc] = a.ops[-1].rev + 1
        return sessions

    def _write_all(self, db: sqlite3.Connection, batch: list[Append], now: float,
                   written: dict[str, list[list[StoredOp]]], sessions: dict[str, history.Session | None]) -> None:
        """Write ``batch`` in the open transaction; ``written`` collects, per document,
        the ops written so far in this transaction (compactions read it); ``sessions``
        holds each document's open editing session, moved on by each append."""
        rows: list[Any] = [r for a in batch for r in a.rows]
        db.executemany(INSERT_LOG, rows)
        for a in batch:
            written.setdefault(a.doc, []).append(a.ops)
        last: dict[str, tuple[str, int, int, int | None, float, float, str]] = {}
        for a in batch:
            assert a.authors is not None
            opened, closed = history.advance(sessions.get(a.doc), a.ops, a.authors, now, self.session_gap)
            if closed is not None:
                db.execute(INSERT_SESSION, session_row(a.doc, closed))
            sessions[a.doc] = opened
            last[a.doc] = (a.doc, a.ops[-1].rev, a.size, a.nbytes, now, now, dump_session(opened))
        db.executemany(UPSERT_DOC, list(last.values()))
        # About what the WAL grows by: the rows, and a page or so per document and for the commit.
        self.wal_bytes += sum(len(r[3]) for r in rows) + 4096 * (1 + len(last))
        for a in batch:
            if a.snapshot is not None:
                self._snapshot(db, a.doc, a.snapshot, a.ops[-1].rev, written.get(a.doc, []))

    def _write_each(self, db: sqlite3.Connection, batch: list[Append], now: float,
                    sessions: dict[str, history.Session | None]) -> list[Exception | None]:
        """Write ``batch`` append by append, each under a savepoint: one that fails is undone alone."""
        errors: list[Exception | None] = []
        written: dict[str, list[list[StoredOp]]] = {}
        refused: set[str] = set()
        for a in batch:
            if a.doc in refused:  # a later append of a document whose earlier one failed: it would leave a gap
                errors.append(RevisionConflict(f"{a.doc}: revision {a.ops[0].rev} follows a refused append"))
                continue
            db.execute("SAVEPOINT one")
            try:
                self._write_all(db, [a], now, written, sessions)
                db.execute("RELEASE one")
                errors.append(None)
            except Exception as exc:
                db.execute("ROLLBACK TO one")
                db.execute("RELEASE one")
                if written.get(a.doc, [None])[-1] is a.ops:
                    written[a.doc].pop()
                if isinstance(exc, sqlite3.IntegrityError):
                    errors.append(RevisionConflict(f"{a.doc}: revision {a.ops[0].rev} is already taken ({exc})"))
                else:
                    errors.append(ValueError(f"{a.doc}: revisions {a.ops[0].rev}-{a.ops[-1].rev} cannot be stored ({exc})"))
                refused.add(a.doc)
        return errors

    def _snapshot(self, db: sqlite3.Connection, doc: str, snapshot: tuple[int, str], last: int,
                  written: list[list[StoredOp]]) -> None:
        """Store a snapshot (and a checkpoint, when one is due), and copy op ids into ``op_ids``.

        Every op up to the compaction point (``history_depth`` ops behind the
        newest) has its id in ``op_ids`` after this, and ``docs.ids_through``
        says so: the log keeps every op, but lookups of older ids ask
        ``op_ids``. ``written`` is the document's ops written earlier in this
        transaction, this append's included.
        """
        rev, text = snapshot
        db.execute("INSERT OR REPLACE INTO snapshots (doc, rev, text) VALUES (?, ?, ?)", (doc, rev, text))
        db.execute("DELETE FROM snapshots WHERE doc = ? AND rev < ?", (doc, rev))
        last_checkpoint = db.execute("SELECT max(rev) FROM checkpoints WHERE doc = ?", (doc,)).fetchone()[0] or 0
        if history.checkpoint_due(last_checkpoint, rev, len(text)):
            packed = history.pack(text)
            db.execute("INSERT OR REPLACE INTO checkpoints (doc, rev, text) VALUES (?, ?, ?)", (doc, rev, packed))
            self.wal_bytes += len(packed)
        keep_after = self.compacted_through(snapshot, last)
        kept = self.index.compactable(db, doc, keep_after, written)
        kept.sort(key=_first)  # in key order: each page written once
        values = [v for i, r in kept for v in (doc, i, r)]
        step = 3 * INSERT_IDS
        for i in range(0, len(values), step):
            chunk = values[i : i + step]
            db.execute(insert_ids(len(chunk) // 3), chunk)
        db.execute("UPDATE docs SET ids_through = ? WHERE id = ? AND ids_through < ?", (keep_after, doc, keep_after))
        self.wal_bytes += 4 * len(text) + 64 * len(kept)
