"""The SQLite store's small writes beside the log: credentials (share links, revocations) and the trash.

Plain functions on a connection, run on the store's thread. Each write is
its own short transaction on that connection (``synchronous`` as the store
was opened with, so it is durable when it returns); the log's group commit
on the event loop's connection is not involved.
"""

from __future__ import annotations

import sqlite3

from .base import Credential, DocInfo

_COLUMNS = "id, doc, role, issued, expires, name, revoked, seq"


def _cred(row: tuple) -> Credential:
    return Credential(*row)


def put_credential(db: sqlite3.Connection, cred: Credential) -> Credential:
    """Insert or replace ``cred``'s row with the next ``seq``."""
    db.execute("BEGIN IMMEDIATE")
    try:
        seq = db.execute("SELECT coalesce(max(seq), 0) + 1 FROM credentials").fetchone()[0]
        db.execute(
            f"INSERT OR REPLACE INTO credentials ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (cred.id, cred.doc, cred.role, cred.issued, cred.expires, cred.name, cred.revoked, seq),
        )
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return Credential(cred.id, cred.doc, cred.role, cred.issued, cred.expires, cred.name, cred.revoked, seq)


def get_credential(db: sqlite3.Connection, cred_id: str) -> Credential | None:
    row = db.execute(f"SELECT {_COLUMNS} FROM credentials WHERE id = ?", (cred_id,)).fetchone()
    return _cred(row) if row else None


def doc_credentials(db: sqlite3.Connection, doc: str) -> list[Credential]:
    rows = db.execute(f"SELECT {_COLUMNS} FROM credentials WHERE doc = ? ORDER BY issued, id", (doc,))
    return [_cred(r) for r in rows]


def credential_changes(db: sqlite3.Connection, after_seq: int) -> list[Credential]:
    rows = db.execute(f"SELECT {_COLUMNS} FROM credentials WHERE seq > ? ORDER BY seq", (after_seq,))
    return [_cred(r) for r in rows]


def prune_credentials(db: sqlite3.Connection, expired_before: float) -> int:
    return _write(db, [("DELETE FROM credentials WHERE expires IS NOT NULL AND expires < ?", (expired_before,))])


def _write(db: sqlite3.Connection, statements: list[tuple[str, tuple]]) -> int:
    """Run ``statements`` in one transaction; the rows the first one changed."""
    db.execute("BEGIN IMMEDIATE")
    try:
        changed = db.execute(*statements[0]).rowcount
        for statement in statements[1:]:
            db.execute(*statement)
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return changed


def set_deleted(db: sqlite3.Connection, doc: str, when: float | None) -> bool:
    if when is None:
        return _write(db, [("UPDATE docs SET deleted = NULL WHERE id = ? AND deleted IS NOT NULL", (doc,))]) > 0
    return _write(db, [("UPDATE docs SET deleted = ? WHERE id = ? AND deleted IS NULL AND rev > 0", (when, doc))]) > 0


#: The columns of a :class:`DocInfo`, the title being the one set by hand or else the heading.
DOC_COLUMNS = "id, rev, size, updated, deleted, coalesce(title, heading), bytes"


def trash(db: sqlite3.Connection) -> list[DocInfo]:
    rows = db.execute(f"SELECT {DOC_COLUMNS} FROM docs WHERE deleted IS NOT NULL ORDER BY deleted DESC")
    return [DocInfo(*r) for r in rows]


def purge(db: sqlite3.Connection, deleted_before: float, keep: set[str]) -> list[str]:
    rows = db.execute("SELECT id FROM docs WHERE deleted IS NOT NULL AND deleted < ?", (deleted_before,))
    gone = [r[0] for r in rows if r[0] not in keep]
    for doc in gone:
        _write(db, [("DELETE FROM docs WHERE id = ?", (doc,))] + [
            (f"DELETE FROM {table} WHERE doc = ?", (doc,)) for table in DOC_TABLES])
    return gone


#: The tables whose rows belong to a document, by its ``doc`` column.
DOC_TABLES = ("log", "op_ids", "snapshots", "checkpoints", "sessions", "credentials")


def set_title(db: sqlite3.Connection, doc: str, title: str | None) -> bool:
    return _write(db, [("UPDATE docs SET title = ? WHERE id = ?", (title, doc))]) > 0


def title(db: sqlite3.Connection, doc: str) -> str | None:
    return _titled(db, doc, "title")


def heading(db: sqlite3.Connection, doc: str) -> str | None:
    return _titled(db, doc, "heading")


def _titled(db: sqlite3.Connection, doc: str, column: str) -> str | None:
    """``doc``'s ``title`` (set by hand) or ``heading`` (recorded), ``None`` if none or no such document."""
    row = db.execute(f"SELECT {column} FROM docs WHERE id = ?", (doc,)).fetchone()
    return row[0] if row else None


def set_heading(db: sqlite3.Connection, doc: str, heading: str | None) -> None:
    _write(db, [("UPDATE docs SET heading = ? WHERE id = ? AND heading IS NOT ?", (heading, doc, heading))])


def rename(db: sqlite3.Connection, old: str, new: str, now: float) -> str:
    db.execute("BEGIN IMMEDIATE")
    try:
        if not db.execute("SELECT 1 FROM docs WHERE id = ? AND deleted IS NULL AND rev > 0", (old,)).fetchone():
            db.execute("ROLLBACK")
            return "missing"
        if db.execute("SELECT 1 FROM docs WHERE id = ?", (new,)).fetchone():
            db.execute("ROLLBACK")
            return "taken"
        db.execute("UPDATE docs SET id = ? WHERE id = ?", (new, old))
        for table in DOC_TABLES:
            db.execute(f"UPDATE {table} SET doc = ? WHERE doc = ?", (new, old))
        db.execute("DELETE FROM renames WHERE old = ?", (new,))  # the name is a document again
        db.execute("UPDATE renames SET new = ? WHERE new = ?", (new, old))  # no chains of redirects
        db.execute("INSERT OR REPLACE INTO renames (old, new, renamed) VALUES (?, ?, ?)", (old, new, now))
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return "ok"


def renames(db: sqlite3.Connection) -> dict[str, str]:
    return dict(db.execute("SELECT old, new FROM renames"))
