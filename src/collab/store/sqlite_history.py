"""The SQLite store's history reads and thinning, run on the store's thread with its connection.

Each function takes the thread's connection and its caches and reads in one
transaction, so a commit made meanwhile on the event loop's connection is
seen whole or not at all.
"""

from __future__ import annotations

import itertools
import sqlite3

from . import history as h
from .base import load_op
from .sqlite_schema import INSERT_SESSION, AuthorNames, load_session, log_after, pack_chunk, session_row

#: Documents whose maintenance found work, scanned at a time (see :meth:`SqliteHistory.maintain_step`).
_WORK = ("SELECT d.id, d.packed_through, (SELECT min(c.rev) FROM checkpoints c WHERE c.doc = d.id "
         "AND c.rev > d.packed_through) AS next FROM docs d WHERE next <= d.ids_through LIMIT 1")


class SqliteHistory:
    """History reads of one SQLite file (see :mod:`collab.store.history`); used on the store's thread only."""

    def __init__(self, history_depth: int) -> None:
        self.history_depth = history_depth
        self.names = AuthorNames()
        self.runs_cache = h.AuthorshipCache()

    def _head(self, db: sqlite3.Connection, doc: str) -> int | None:
        row = db.execute("SELECT rev FROM docs WHERE id = ?", (doc,)).fetchone()
        return row[0] if row else None

    def _base(self, db: sqlite3.Connection, doc: str, rev: int) -> tuple[int, str]:
        """The nearest checkpoint or snapshot at or before ``rev`` (revision 0: the empty text)."""
        row = db.execute("SELECT rev, text FROM checkpoints WHERE doc = ? AND rev <= ? ORDER BY rev DESC LIMIT 1",
                         (doc, rev)).fetchone()
        base, text = (row[0], h.unpack(row[1])) if row else (0, "")
        snap = db.execute("SELECT rev, text FROM snapshots WHERE doc = ? AND rev <= ? ORDER BY rev DESC LIMIT 1",
                          (doc, rev)).fetchone()
        if snap is not None and snap[0] > base:
            base, text = snap
        return base, text

    def text_at(self, db: sqlite3.Connection, doc: str, rev: int) -> str:
        db.execute("BEGIN")
        try:
            h.check_rev(doc, rev, self._head(db, doc))
            base, text = self._base(db, doc, rev)
            ops = log_after(db, doc, base, self.names, upto=rev) if rev > base else []
        finally:
            db.execute("COMMIT")
        return h.rebuild(doc, base, text, ops, rev)

    def sessions(self, db: sqlite3.Connection, doc: str, before: int | None, limit: int) -> list[h.Session]:
        db.execute("BEGIN")
        try:
            row = db.execute("SELECT rev, session FROM docs WHERE id = ?", (doc,)).fetchone()
            h.check_rev(doc, 0, row[0] if row else None)
            found: list[h.Session] = []
            current = load_session(row[1])
            if current is not None and (before is None or current.last < before):
                found.append(current)
            rows = db.execute(
                'SELECT first, last, start, "end", authors, inserted, deleted, thinned FROM sessions '
                "WHERE doc = ? AND last < ? ORDER BY first DESC LIMIT ?",
                (doc, before if before is not None else row[0] + 1, limit))
            found.extend(h.Session(f, la, s, e, load_op(a), i, d, bool(t)) for f, la, s, e, a, i, d, t in rows)
            found = found[:limit]
            names = self.names.fetch(db, {a for s in found for a in s.authors if type(a) is int})
        finally:
            db.execute("COMMIT")
        for s in found:
            s.authors = [h.label(*names[a]) if type(a) is int and a in names else str(a) for a in s.authors]
        return found

    def authorship(self, db: sqlite3.Connection, doc: str, rev: int | None) -> list[dict]:
        db.execute("BEGIN")
        try:
            head = self._head(db, doc)
            rev = head if rev is None else rev
            h.check_rev(doc, rev if rev is not None else 0, head)
            assert rev is not None
            runs = self._runs_at(db, doc, rev)
        finally:
            db.execute("COMMIT")
        return h.spans(runs)

    def _runs_at(self, db: sqlite3.Connection, doc: str, rev: int) -> h.Runs:
        base, runs = self.runs_cache.nearest(doc, rev)
        row = db.execute("SELECT rev, runs FROM checkpoints WHERE doc = ? AND rev <= ? AND rev > ? AND runs IS NOT NULL "
                         "ORDER BY rev DESC LIMIT 1", (doc, rev, base)).fetchone()
        if row is not None:
            base, runs = row[0], h.load_runs(row[1])
        ops = log_after(db, doc, base, self.names, upto=rev) if rev > base else []
        try:
            return self.runs_cache.replay(doc, base, runs, ops, rev)
        except h.RevisionGone:  # history from before schema 3 starts at a checkpoint whose authors are unknown
            row = db.execute("SELECT rev, text FROM checkpoints WHERE doc = ? AND rev <= ? ORDER BY rev LIMIT 1",
                             (doc, rev)).fetchone()
            if row is None or row[0] <= base:
                raise
            ops = log_after(db, doc, row[0], self.names, upto=rev) if rev > row[0] else []
            return self.runs_cache.replay(doc, row[0], h.unknown_runs(h.unpack(row[1])), ops, rev)

    def thin(self, db: sqlite3.Connection, before: float) -> int:
        """Thin every document's sessions that ended before ``before`` (run at start-up, before serving)."""
        thinned = 0
        docs = db.execute("SELECT id, ids_through FROM docs").fetchall()
        for doc, bound in docs:
            rows = db.execute('SELECT first, last, start, "end", authors, inserted, deleted FROM sessions '
                              'WHERE doc = ? AND thinned = 0 AND "end" < ? AND last <= ? ORDER BY first',
                              (doc, before, bound)).fetchall()
            for first, last, start, end, authors, inserted, deleted in rows:
                db.execute("BEGIN IMMEDIATE")
                try:
                    base, text = self._base(db, doc, last)
                    text = h.rebuild(doc, base, text, log_after(db, doc, base, self.names, upto=last), last)
                    runs = self._runs_at(db, doc, last)
                    db.execute("DELETE FROM checkpoints WHERE doc = ? AND rev >= ? AND rev <= ?", (doc, first, last))
                    db.execute("INSERT INTO checkpoints (doc, rev, text, runs) VALUES (?, ?, ?, ?)",
                               (doc, last, h.pack(text), h.dump_runs(runs)))
                    db.execute("DELETE FROM log WHERE doc = ? AND first >= ? AND rev <= ?", (doc, first, last))
                    session = h.Session(first, last, start, end, load_op(authors), inserted, deleted, True)
                    db.execute(INSERT_SESSION, session_row(doc, session))
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                self.runs_cache.forget(doc)
                thinned += 1
        return thinned

    def maintain_step(self, db: sqlite3.Connection) -> int | None:
        """Pack one document's ops between two checkpoints into one log row, and store the authorship at
        the later checkpoint, in one transaction; ``None`` when no document has such work left.

        Only ops whose ids are in ``op_ids`` (through ``docs.ids_through``) are packed: loading and
        resuming read the recent tail of the log, and look older ids up there. Returns how many ops
        were packed (0: the interval's rows are not consecutive, e.g. thinned; only its runs are stored).
        """
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute(_WORK).fetchone()
            if row is None:
                db.execute("COMMIT")
                return None
            doc, after, upto = row
            packed = self._pack(db, doc, after, upto)
            db.execute("UPDATE docs SET packed_through = ? WHERE id = ?", (upto, doc))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return packed

    def _pack(self, db: sqlite3.Connection, doc: str, after: int, upto: int) -> int:
        rows = db.execute("SELECT first, rev, ops, at FROM log WHERE doc = ? AND rev > ? AND rev <= ? ORDER BY rev",
                          (doc, after, upto)).fetchall()
        whole = (bool(rows) and rows[0][0] == after + 1 and rows[-1][1] == upto
                 and all(r[0] == p[1] + 1 for p, r in itertools.pairwise(rows)))
        has_runs = db.execute("SELECT runs IS NOT NULL FROM checkpoints WHERE doc = ? AND rev = ?", (doc, upto)).fetchone()[0]
        if not has_runs:
            runs = self._runs_after(db, doc, after, upto, rows if whole else None)
            if runs is not None:
                db.execute("UPDATE checkpoints SET runs = ? WHERE doc = ? AND rev = ?", (h.dump_runs(runs), doc, upto))
        if not whole or all(type(r[2]) is not str for r in rows):
            return 0
        if len(rows) > 1 or type(rows[0][2]) is str:
            chunk = pack_chunk([(first, ops, at) for first, _, ops, at in rows])
            db.execute("DELETE FROM log WHERE doc = ? AND rev > ? AND rev <= ?", (doc, after, upto))
            db.execute("INSERT INTO log (doc, rev, first, ops, at) VALUES (?, ?, ?, ?, NULL)", (doc, upto, after + 1, chunk))
        return upto - after

    def _runs_after(self, db: sqlite3.Connection, doc: str, after: int, upto: int, rows: list | None) -> h.Runs | None:
        """The runs at checkpoint ``upto``: those at ``after`` moved by the log ``rows`` between (``None``:
        read as any revision is); ``None`` if the history there is gone."""
        try:
            if rows is None:
                return self._runs_at(db, doc, upto)
            got = db.execute("SELECT runs FROM checkpoints WHERE doc = ? AND rev = ?", (doc, after)).fetchone()
            start = [] if after == 0 else h.load_runs(got[0]) if got and got[0] is not None else self._runs_at(db, doc, after)
            return h.move_runs(start, self.names.decode(db, [(first, ops, at) for first, _, ops, at in rows]))
        except h.RevisionGone:
            return None
