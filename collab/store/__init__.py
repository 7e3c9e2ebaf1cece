"""Storage: a small async interface and its implementations.

A store keeps, per document, an append-only log of operations (unique by
``(doc, rev)``; op ids looked up for idempotency), a snapshot of the text
every so often so that loading stays fast, and a row in the document list.
Implementations: :mod:`collab.store.memory` (tests, benchmarks),
:mod:`collab.store.sqlite` (the embedded default) and
:mod:`collab.store.postgres` (several processes, one order).
"""

from __future__ import annotations

from .base import DocInfo, DocState, RevisionConflict, Store, StoredOp, open_store

__all__ = ["DocInfo", "DocState", "RevisionConflict", "Store", "StoredOp", "open_store"]
