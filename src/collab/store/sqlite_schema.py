"""The SQLite store's file: its tables, how a log row holds operations, and bringing an older file up to date."""

from __future__ import annotations

import functools
import os
import sqlite3
import zlib
from typing import Any

from .base import StoredOp
from .history import Session, pack
from .base import dump_op as _dumps
from .base import load_op as _loads

SCHEMA = """
-- ``ids_through``: the ids of the ops through this revision are in ``op_ids``;
-- ``session``: the open editing session, JSON (see ``dump_session``);
-- ``packed_through``: the log is packed, and every checkpoint has its authorship
-- runs, through this revision (a checkpoint's; see ``SqliteHistory.maintain_step``).
CREATE TABLE IF NOT EXISTS docs (
    id TEXT PRIMARY KEY,
    rev INTEGER NOT NULL,
    size INTEGER NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    ids_through INTEGER NOT NULL DEFAULT 0,
    session TEXT,
    packed_through INTEGER NOT NULL DEFAULT 0
);
-- The log, every revision (unless thinned): one row per append (a batch of ops
-- with consecutive revisions), which costs much less to insert than a row per
-- op. ``ops`` is JSON, [[op, author, op_id], ...], for the revisions ``first``
-- .. ``rev``; ``author`` is a row of ``authors`` (a client id string in rows
-- written before schema 3); ``at`` is the commit's time (NULL before schema 3).
-- A *packed* row (``ops`` a BLOB, ``at`` NULL) holds the ops between two
-- checkpoints behind ``docs.packed_through``, compressed, without their op ids
-- (those are in ``op_ids``): see ``pack_chunk``.
CREATE TABLE IF NOT EXISTS log (
    doc TEXT NOT NULL,
    rev INTEGER NOT NULL,
    first INTEGER NOT NULL,
    ops TEXT NOT NULL,
    at REAL,
    PRIMARY KEY (doc, rev)
) WITHOUT ROWID;
-- Who wrote an op: the name it was made under and the connection's client id.
CREATE TABLE IF NOT EXISTS authors (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    client TEXT NOT NULL,
    UNIQUE (name, client)
);
-- The text every so often (zlib-compressed UTF-8), kept for the history; ``runs``
-- is the authorship there (``history.dump_runs``), NULL until computed.
CREATE TABLE IF NOT EXISTS checkpoints (
    doc TEXT NOT NULL,
    rev INTEGER NOT NULL,
    text BLOB NOT NULL,
    runs BLOB,
    PRIMARY KEY (doc, rev)
) WITHOUT ROWID;
-- Closed editing sessions (the open one is ``docs.session``); ``authors`` is JSON of author ids.
CREATE TABLE IF NOT EXISTS sessions (
    doc TEXT NOT NULL,
    first INTEGER NOT NULL,
    last INTEGER NOT NULL,
    start REAL NOT NULL,
    "end" REAL NOT NULL,
    authors TEXT NOT NULL,
    inserted INTEGER NOT NULL,
    deleted INTEGER NOT NULL,
    thinned INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (doc, first)
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
#: The schema's version, in ``PRAGMA user_version``. Version 1 files (an ``ops`` table
#: with a row per op) are moved into ``log`` when opened; version 2 files (a compacted
#: log, no authors or times) gain the history tables; version 3 files gain the lifecycle
#: tables (share links, revocations, trash, titles, renames); version 4 files gain
#: ``docs.bytes``; version 5 files gain ``docs.packed_through`` (their checkpoints' runs
#: are computed, and their logs packed, by the store's maintenance, not here: see :func:`migrate`).
VERSION = 6
INSERT_LOG = "INSERT INTO log (doc, rev, first, ops, at) VALUES (?, ?, ?, ?, ?)"
UPSERT_DOC = (
    "INSERT INTO docs (id, rev, size, bytes, created, updated, session) VALUES (?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT(id) DO UPDATE SET rev = excluded.rev, size = excluded.size, bytes = excluded.bytes, "
    "updated = excluded.updated, "
    "session = excluded.session"
)
#: The rows of a document's log whose op ids are not in ``op_ids`` (parameters: doc, doc).
LOG_NOT_IN_OP_IDS = ("SELECT first, ops FROM log WHERE doc = ? AND "
                     "rev > (SELECT coalesce(max(ids_through), 0) FROM docs WHERE id = ?)")
INSERT_SESSION = "INSERT OR REPLACE INTO sessions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"


@functools.lru_cache(maxsize=None)
def insert_ids(rows: int) -> str:
    """The ``INSERT`` of ``rows`` op ids in one statement."""
    return "INSERT OR IGNORE INTO op_ids (doc, op_id, rev) VALUES " + ",".join(["(?, ?, ?)"] * rows)


def dump_batch(ops: list[StoredOp], authors: list[int] | None = None) -> str:
    """The ``ops`` column of a log row (``authors``: each op's author id; ``None``: client ids, schema 2)."""
    if authors is None:
        return _dumps([[o.op, o.client, o.id] for o in ops])
    return _dumps([[o.op, a, o.id] for o, a in zip(ops, authors)])


def load_batch(first: int, ops: str, at: float | None = None,
               names: dict[int, tuple[str, str]] | None = None) -> list[StoredOp]:
    """The inverse of :func:`dump_batch`, for a row starting at revision ``first`` committed at ``at``;
    ``names`` holds ``(name, client)`` for each author id in the row."""
    out = []
    t = at or 0.0
    for k, (op, who, op_id) in enumerate(_loads(ops)):
        if type(who) is int:
            name, client = names[who] if names is not None else ("", str(who))
        else:
            name, client = "", who
        out.append(StoredOp(first + k, op, client, op_id, name, t))
    return out


def dump_session(s: "Session") -> str:
    return _dumps([s.first, s.last, s.start, s.end, s.authors, s.inserted, s.deleted])


def load_session(text: str | None) -> "Session | None":
    if not text:
        return None
    first, last, start, end, authors, inserted, deleted = _loads(text)
    return Session(first, last, start, end, authors, inserted, deleted)


def session_row(doc: str, s: "Session") -> tuple:
    """A row of ``sessions``."""
    return (doc, s.first, s.last, s.start, s.end, _dumps(s.authors), s.inserted, s.deleted, int(s.thinned))


class AuthorNames:
    """Author id -> ``(name, client)``, read from ``authors`` on first need (one per thread)."""

    def __init__(self) -> None:
        self.known: dict[int, tuple[str, str]] = {}

    def fetch(self, db: sqlite3.Connection, ids: set[int]) -> dict[int, tuple[str, str]]:
        missing = [i for i in ids if i not in self.known]
        for i in range(0, len(missing), 500):
            chunk = missing[i : i + 500]
            marks = ",".join("?" * len(chunk))
            for row_id, name, client in db.execute(f"SELECT id, name, client FROM authors WHERE id IN ({marks})", chunk):
                self.known[row_id] = (name, client)
        return self.known

    def decode(self, db: sqlite3.Connection, rows: list[tuple[int, str | bytes, float | None]]) -> list[StoredOp]:
        """The ops of log rows ``(first, ops, at)``, in order (packed rows too: their ops have no id)."""
        loaded = [(first, _loads(ops), at) if type(ops) is str else (first, *unpack_chunk(ops)) for first, ops, at in rows]
        wanted = {e[1] for _, entries, _ in loaded for e in entries if type(e[1]) is int}
        names = self.fetch(db, wanted) if wanted else self.known
        out: list[StoredOp] = []
        for first, entries, at in loaded:
            t = at or 0.0
            for k, (op, who, op_id, *when) in enumerate(entries):
                name, client = names.get(who, ("", str(who))) if type(who) is int else ("", who)
                out.append(StoredOp(first + k, op, client, op_id, name, when[0] if when else t))
        return out


def pack_chunk(rows: list[tuple[int, str, float | None]]) -> bytes:
    """Log rows ``(first, ops, at)`` of consecutive revisions as one packed row's ``ops``: zlib of
    JSON ``[ops, authors, times]``, authors and times run-length coded (``[count, value, ...]``),
    op ids left out."""
    ops: list = []
    authors: list = []
    times: list = []
    for _, text, at in rows:
        for op, who, _ in _loads(text):
            ops.append(op)
            _count(authors, who)
            _count(times, at)
    return zlib.compress(_dumps([ops, authors, times]).encode(), 6)


def _count(flat: list, value: object) -> None:
    if flat and flat[-1] == value and type(flat[-1]) is type(value):
        flat[-2] += 1
    else:
        flat += [1, value]


def unpack_chunk(data: bytes) -> tuple[list[list], None]:
    """A packed row's entries ``[op, author, "", time]`` (and ``None``: its ``at``)."""
    ops, authors, times = _loads(zlib.decompress(data))
    who = [a for i in range(0, len(authors), 2) for a in [authors[i + 1]] * authors[i]]
    at = [t or 0.0 for i in range(0, len(times), 2) for t in [times[i + 1]] * times[i]]
    return [[op, w, "", t] for op, w, t in zip(ops, who, at)], None


def log_ids(rows: Any) -> dict[str, int]:
    """Op id -> revision, for log rows of ``(first, ops)``."""
    ids: dict[str, int] = {}
    for first, ops in rows:
        if type(ops) is not str:  # a packed row: its ids are in op_ids
            continue
        for k, entry in enumerate(_loads(ops)):
            ids[entry[2]] = first + k
    return ids


def log_after(db: sqlite3.Connection, doc: str, rev: int, names: AuthorNames, upto: int | None = None) -> list[StoredOp]:
    """The ops of ``doc``'s log after revision ``rev`` (through ``upto``, if given), in order."""
    if upto is None:
        rows = db.execute("SELECT first, ops, at FROM log WHERE doc = ? AND rev > ? ORDER BY rev", (doc, rev))
    else:  # through the row holding ``upto``: the key is the row's last revision
        rows = db.execute("SELECT first, ops, at FROM log WHERE doc = ? AND rev > ? AND rev <= "
                          "coalesce((SELECT min(rev) FROM log WHERE doc = ? AND rev >= ?), ?) ORDER BY rev",
                          (doc, rev, doc, upto, upto))
    ops = names.decode(db, rows.fetchall())
    if ops and (ops[0].rev <= rev or (upto is not None and ops[-1].rev > upto)):
        ops = [o for o in ops if rev < o.rev and (upto is None or o.rev <= upto)]
    return ops


def sync_files(path: str) -> None:
    """Make the database at ``path``, its WAL and their directory durable, and read them from the disk.

    Run before serving. Each existing file is fsynced (what the operating
    system still holds of an earlier run is then on disk, or the server does
    not start), then dropped from the page cache: after a failed fsync the
    kernel may have marked pages clean without writing them, and a read of
    the cache would serve what the disk does not hold. Afterwards every read
    comes from the disk, so a commit whose fsync failed is there or absent,
    never served half-durable.
    """
    directory = os.path.dirname(os.path.abspath(path))
    for name in (path, path + "-wal", directory):
        try:
            fd = os.open(name, os.O_RDONLY)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise SystemExit(f"cannot open {name!r} to make it durable ({exc}); check the data directory's permissions") from None
        try:
            os.fsync(fd)
            if name != directory and hasattr(os, "posix_fadvise"):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        except OSError as exc:
            raise SystemExit(f"the disk refused an fsync of {name!r} ({exc}); check the disk (dmesg), then start again") from None
        finally:
            os.close(fd)


def migrate(db: sqlite3.Connection) -> None:
    """Bring a database file to :data:`VERSION` (in one transaction), or refuse a newer one."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > VERSION:
        raise SystemExit(
            f"the database {db.execute('PRAGMA database_list').fetchone()[2]!r} was written by a newer collab "
            f"(schema {version}, this one knows {VERSION}); upgrade collab, or choose another --data-dir"
        )
    db.executescript(SCHEMA)  # each CREATE ... IF NOT EXISTS is atomic; the moves below are one transaction
    db.execute("BEGIN IMMEDIATE")
    try:
        _add_history_columns(db)
        if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'ops'").fetchone():
            _move_ops_into_log(db)
        if version < 3:
            _start_history(db)
        if version < 4:
            _add_lifecycle(db)
        if version < 5:  # the length in bytes of UTF-8, for the list; NULL until the document's next append
            db.execute("ALTER TABLE docs ADD COLUMN bytes INTEGER")
        db.execute(f"PRAGMA user_version = {VERSION}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def _add_history_columns(db: sqlite3.Connection) -> None:
    """Tables of an older file lack these columns (``CREATE ... IF NOT EXISTS`` kept them as they were)."""
    for table, column, declaration in (("docs", "ids_through", "INTEGER NOT NULL DEFAULT 0"),
                                       ("docs", "session", "TEXT"), ("log", "at", "REAL"),
                                       ("docs", "packed_through", "INTEGER NOT NULL DEFAULT 0")):
        if column not in {row[1] for row in db.execute(f"PRAGMA table_info({table})")}:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")


def _start_history(db: sqlite3.Connection) -> None:
    """Schema 2 to 3: the log was compacted up to its first row, whose ids are all in ``op_ids``
    before it; each snapshot becomes a checkpoint, where the kept history starts."""
    db.execute("UPDATE docs SET ids_through = coalesce((SELECT min(first) - 1 FROM log WHERE log.doc = docs.id), rev)")
    snapshots = db.execute("SELECT doc, rev, text FROM snapshots").fetchall()
    db.executemany("INSERT OR REPLACE INTO checkpoints (doc, rev, text) VALUES (?, ?, ?)",
                   [(doc, rev, pack(text)) for doc, rev, text in snapshots])


def _move_ops_into_log(db: sqlite3.Connection) -> None:
    """Version 1 had a row per op: runs of consecutive revisions become rows of the log."""
    rows: list[tuple[str, int, int, str]] = []
    run: list[StoredOp] = []
    run_doc = ""
    for doc, rev, op, client, op_id in db.execute("SELECT doc, rev, op, client, op_id FROM ops ORDER BY doc, rev"):
        if run and (doc != run_doc or rev != run[-1].rev + 1 or len(run) == 256):
            rows.append((run_doc, run[-1].rev, run[0].rev, dump_batch(run)))
            run = []
            if len(rows) == 1000:
                db.executemany(INSERT_LOG, [(*r, None) for r in rows])
                rows = []
        run_doc = doc
        run.append(StoredOp(rev, _loads(op), client, op_id))
    if run:
        rows.append((run_doc, run[-1].rev, run[0].rev, dump_batch(run)))
    db.executemany(INSERT_LOG, [(*r, None) for r in rows])
    db.execute("DROP TABLE ops")


def _add_lifecycle(db: sqlite3.Connection) -> None:
    """Version 4: recorded share links and revocations, the trash, titles, and renamed names."""
    db.execute("ALTER TABLE docs ADD COLUMN deleted REAL")  # in the trash since (Unix time); NULL: not deleted
    db.execute("ALTER TABLE docs ADD COLUMN title TEXT")  # set by hand; NULL: the first heading
    db.execute("ALTER TABLE docs ADD COLUMN heading TEXT")  # the first heading, as last recorded
    db.execute("CREATE INDEX IF NOT EXISTS docs_deleted ON docs (deleted) WHERE deleted IS NOT NULL")
    db.execute(
        "CREATE TABLE IF NOT EXISTS credentials (id TEXT PRIMARY KEY, doc TEXT, role TEXT NOT NULL, "
        "issued REAL NOT NULL, expires REAL, name TEXT, revoked REAL, seq INTEGER NOT NULL)"
    )
    db.execute("CREATE INDEX IF NOT EXISTS credentials_doc ON credentials (doc)")
    db.execute("CREATE INDEX IF NOT EXISTS credentials_seq ON credentials (seq)")
    db.execute("CREATE TABLE IF NOT EXISTS renames (old TEXT PRIMARY KEY, new TEXT NOT NULL, renamed REAL NOT NULL)")
