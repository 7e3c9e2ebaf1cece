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

from .base import RevisionConflict, StoredOp
from .opindex import OpIdIndex
from .sqlite_schema import INSERT_LOG, UPSERT_DOC, dump_batch, insert_ids

_first = operator.itemgetter(0)

#: Compacted op ids are inserted this many per statement (a multi-row ``INSERT`` costs
#: less per row than ``executemany``); 300 rows are 900 parameters, under the 999 of
#: older SQLite builds.
INSERT_IDS = 300


@dataclass(slots=True, eq=False)
class Append:
    """One append queued for the next transaction, and who waits for it."""

    doc: str
    ops: list[StoredOp]
    size: int
    snapshot: tuple[int, str] | None
    fut: "asyncio.Future[None]"
    on_done: Callable[["asyncio.Future[None]"], object] | None
    #: The log row, ``(doc, rev, first, ops_json)``, once encoded.
    row: tuple[str, int, int, str] | None = None


class GroupWrite:
    """Writes transactions on one connection; keeps the log compacted behind each snapshot."""

    def __init__(self, index: OpIdIndex, history_depth: int) -> None:
        self.index = index
        self.history_depth = history_depth
        #: About how many bytes the WAL grew by since the store last checkpointed it (the store resets this).
        self.wal_bytes = 0

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
        errors = self._encode(batch)
        db.execute("BEGIN IMMEDIATE")
        try:
            self._check_revisions(db, batch, errors)
            good = [a for a, e in zip(batch, errors) if e is None]
            try:
                self._write_all(db, good, now, {})
            except Exception:
                db.execute("ROLLBACK")
                db.execute("BEGIN IMMEDIATE")
                each = iter(self._write_each(db, good, now))
                errors = [e if e is not None else next(each) for e in errors]
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return errors

    @staticmethod
    def _encode(batch: list[Append]) -> list[Exception | None]:
        """Encode each append's log row before the transaction: an op that cannot be encoded fails alone."""
        errors: list[Exception | None] = []
        for a in batch:
            try:
                a.row = (a.doc, a.ops[-1].rev, a.ops[0].rev, dump_batch(a.ops))
                errors.append(None)
            except Exception as exc:  # e.g. a lone surrogate, an integer too large for JSON
                errors.append(ValueError(f"{a.doc}: revisions {a.ops[0].rev}-{a.ops[-1].rev} cannot be stored ({exc})"))
        return errors

    @staticmethod
    def _check_revisions(db: sqlite3.Connection, batch: list[Append], errors: list[Exception | None]) -> None:
        """Refuse appends that do not continue their document's log (a gap, or a revision taken).

        The hub commits a document's batches in order, and the next one may
        be queued before the previous is written (pipelining); if that one
        failed, the next would leave a hole in the log. The revision is read
        in the write transaction (one indexed read per document and commit):
        a log row spans revisions, so its key alone would not refuse an
        append overlapping another writer's (two servers on one file).
        """
        following: dict[str, int] = {}
        for k, a in enumerate(batch):
            expected = following.get(a.doc)
            if expected is None:
                try:
                    row = db.execute("SELECT rev FROM docs WHERE id = ?", (a.doc,)).fetchone()
                except (UnicodeError, OverflowError, sqlite3.InterfaceError) as exc:  # a name SQLite cannot bind
                    errors[k] = ValueError(f"{a.doc!r}: the document's name cannot be stored ({exc})")
                    continue
                expected = (row[0] if row else 0) + 1
            if errors[k] is not None:
                following[a.doc] = expected
            elif a.ops[0].rev != expected:
                errors[k] = RevisionConflict(f"{a.doc}: expected revision {expected}, got {a.ops[0].rev}")
                following[a.doc] = expected
            else:
                following[a.doc] = a.ops[-1].rev + 1

    def _write_all(self, db: sqlite3.Connection, batch: list[Append], now: float,
                   written: dict[str, list[list[StoredOp]]]) -> None:
        """Write ``batch`` in the open transaction; ``written`` collects, per document,
        the ops written so far in this transaction (compactions read it)."""
        rows: list[Any] = [a.row for a in batch]
        db.executemany(INSERT_LOG, rows)
        for a in batch:
            written.setdefault(a.doc, []).append(a.ops)
        last: dict[str, tuple[str, int, int, float, float]] = {}
        for a in batch:
            last[a.doc] = (a.doc, a.ops[-1].rev, a.size, now, now)
        db.executemany(UPSERT_DOC, list(last.values()))
        # About what the WAL grows by: the rows, and a page or so per document and for the commit.
        self.wal_bytes += sum(len(r[3]) for r in rows) + 4096 * (1 + len(last))
        for a in batch:
            if a.snapshot is not None:
                self._snapshot(db, a.doc, a.snapshot, a.ops[-1].rev, written.get(a.doc, []))

    def _write_each(self, db: sqlite3.Connection, batch: list[Append], now: float) -> list[Exception | None]:
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
                self._write_all(db, [a], now, written)
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
        keep_after = self.compacted_through(snapshot, last)
        kept = self.index.compactable(db, doc, keep_after, written)
        kept.sort(key=_first)  # in key order: each page written once
        values = [v for i, r in kept for v in (doc, i, r)]
        step = 3 * INSERT_IDS
        for i in range(0, len(values), step):
            chunk = values[i : i + step]
            db.execute(insert_ids(len(chunk) // 3), chunk)
        db.execute("DELETE FROM log WHERE doc = ? AND rev <= ?", (doc, keep_after))
        self.wal_bytes += 4 * len(text) + 64 * len(kept)
