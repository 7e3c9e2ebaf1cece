"""The SQLite store's file: its tables, how a log row holds operations, and bringing an older file up to date."""

from __future__ import annotations

import functools
import os
import sqlite3
from typing import Any

from .base import StoredOp
from .base import dump_op as _dumps
from .base import load_op as _loads

SCHEMA = """
CREATE TABLE IF NOT EXISTS docs (
    id TEXT PRIMARY KEY,
    rev INTEGER NOT NULL,
    size INTEGER NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
-- The log: one row per append (a batch of ops with consecutive revisions),
-- which costs much less to insert than a row per op. ``ops`` is JSON,
-- [[op, client, op_id], ...], for the revisions ``first`` .. ``rev``.
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
#: The schema's version, in ``PRAGMA user_version``. Version 1 files (an ``ops`` table
#: with a row per op) are moved into ``log`` when opened (see :func:`migrate`); each
#: later version adds its tables in one step function.
VERSION = 3
INSERT_LOG = "INSERT INTO log (doc, rev, first, ops) VALUES (?, ?, ?, ?)"
UPSERT_DOC = (
    "INSERT INTO docs (id, rev, size, created, updated) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT(id) DO UPDATE SET rev = excluded.rev, size = excluded.size, updated = excluded.updated"
)


@functools.lru_cache(maxsize=None)
def insert_ids(rows: int) -> str:
    """The ``INSERT`` of ``rows`` op ids in one statement."""
    return "INSERT OR IGNORE INTO op_ids (doc, op_id, rev) VALUES " + ",".join(["(?, ?, ?)"] * rows)


def dump_batch(ops: list[StoredOp]) -> str:
    """The ``ops`` column of a log row."""
    return _dumps([[o.op, o.client, o.id] for o in ops])


def load_batch(first: int, ops: str) -> list[StoredOp]:
    """The inverse of :func:`dump_batch`, for a row starting at revision ``first``."""
    return [StoredOp(first + k, op, client, op_id) for k, (op, client, op_id) in enumerate(_loads(ops))]


def log_ids(rows: Any) -> dict[str, int]:
    """Op id -> revision, for log rows of ``(first, ops)``."""
    ids: dict[str, int] = {}
    for first, ops in rows:
        for k, entry in enumerate(_loads(ops)):
            ids[entry[2]] = first + k
    return ids


def log_after(db: sqlite3.Connection, doc: str, rev: int) -> list[StoredOp]:
    """The ops of ``doc``'s log after revision ``rev``, in order."""
    ops: list[StoredOp] = []
    for first, batch in db.execute("SELECT first, ops FROM log WHERE doc = ? AND rev > ? ORDER BY rev", (doc, rev)):
        ops.extend(load_batch(first, batch))
    if ops and ops[0].rev <= rev:
        ops = [o for o in ops if o.rev > rev]
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
    db.executescript(SCHEMA)  # each CREATE ... IF NOT EXISTS is atomic; the move below is one transaction
    db.execute("BEGIN IMMEDIATE")
    try:
        if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'ops'").fetchone():
            _move_ops_into_log(db)
        if version < 3:
            _add_lifecycle(db)
        db.execute(f"PRAGMA user_version = {VERSION}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


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
                db.executemany(INSERT_LOG, rows)
                rows = []
        run_doc = doc
        run.append(StoredOp(rev, _loads(op), client, op_id))
    if run:
        rows.append((run_doc, run[-1].rev, run[0].rev, dump_batch(run)))
    db.executemany(INSERT_LOG, rows)
    db.execute("DROP TABLE ops")


def _add_lifecycle(db: sqlite3.Connection) -> None:
    """Version 3: recorded share links and revocations, the trash, titles, and renamed names."""
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
