"""Storage: a small async interface, its implementations, and :func:`open_store` to pick one.

A store keeps, per document, an append-only log of operations (unique by
``(doc, rev)``; op ids looked up for idempotency), a snapshot of the text
every so often so that loading stays fast, and a row in the document list.
Implementations: :mod:`collab.store.memory` (tests, benchmarks),
:mod:`collab.store.sqlite` (the embedded default) and
:mod:`collab.store.postgres` (several processes, one order).
"""

from __future__ import annotations

import os

from .base import DocInfo, DocState, RevisionConflict, Store, StoredOp, StoreFailed

__all__ = ["DocInfo", "DocState", "RevisionConflict", "Store", "StoreFailed", "StoredOp", "open_store"]


async def open_store(settings) -> Store:
    """The store the settings select, opened: PostgreSQL for a ``postgres://`` URL, else SQLite."""
    url = settings.database_url
    if url.startswith(("postgres://", "postgresql://")):
        from .postgres import PostgresStore

        store: Store = PostgresStore(url, history_depth=settings.history_depth)
    elif url.startswith("memory:"):
        from .memory import MemoryStore

        store = MemoryStore(history_depth=settings.history_depth)
    elif url:
        raise SystemExit(f"DATABASE_URL={url!r} is not understood: use postgres://user@host/db, or unset it for SQLite")
    else:
        from .sqlite import SqliteStore

        store = SqliteStore(
            os.path.join(settings.data_dir, "collab.sqlite3"),
            history_depth=settings.history_depth,
            synchronous=settings.sqlite_sync.upper(),
            fsync_timeout=settings.fsync_timeout,
        )
    await store.open()
    return store
