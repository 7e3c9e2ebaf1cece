"""Storage: a small async interface, its implementations, and :func:`open_store` to pick one.

A store keeps, per document, an append-only log of every operation with its
author and commit time (unique by ``(doc, rev)``; op ids looked up for
idempotency), a snapshot of the text every so often so that loading stays
fast, checkpoints and editing sessions for the history
(:mod:`collab.store.history`), and a row in the document list.
Implementations: :mod:`collab.store.memory` (tests, benchmarks),
:mod:`collab.store.sqlite` (the embedded default) and
:mod:`collab.store.postgres` (several processes, one order).

The names of :mod:`collab.store.base` are imported on first use, so that the
fsync helper (``python -m collab.store.walsync``), which imports this
package first, starts without loading asyncio and the rest.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .base import DocInfo, DocState, ListPosition, RevisionConflict, Store, StoredOp, StoreFailed

__all__ = ["DocInfo", "DocState", "ListPosition", "RevisionConflict", "Store", "StoreFailed", "StoredOp", "open_store"]


def __getattr__(name: str) -> Any:
    """``from collab.store import Store`` (and the other names of :mod:`collab.store.base`)."""
    if name in __all__:
        from . import base

        value = getattr(base, name)
        globals()[name] = value  # looked up here from now on
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


async def open_store(settings: Any) -> "Store":
    """The store the settings select, opened: PostgreSQL for a ``postgres://`` URL, else SQLite."""
    url = settings.database_url
    if url.startswith(("postgres://", "postgresql://")):
        from .postgres import PostgresStore

        store: Store = PostgresStore(url, history_depth=settings.history_depth, session_gap=settings.session_gap)
    elif url.startswith("memory:"):
        from .memory import MemoryStore

        store = MemoryStore(history_depth=settings.history_depth, session_gap=settings.session_gap)
    elif url:
        raise SystemExit(f"DATABASE_URL={url!r} is not understood: use postgres://user@host/db, or unset it for SQLite")
    else:
        from .sqlite import SqliteStore

        store = SqliteStore(
            os.path.join(settings.data_dir, "collab.sqlite3"),
            history_depth=settings.history_depth,
            synchronous=settings.sqlite_sync.upper(),
            fsync_timeout=settings.fsync_timeout,
            session_gap=settings.session_gap,
        )
    await store.open()
    if settings.history_retain is not None:  # before serving: thinning must not meet a commit
        import time

        await store.thin(time.time() - settings.history_retain * 86400)
    return store
