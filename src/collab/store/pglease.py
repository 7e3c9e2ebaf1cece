"""Document leases on PostgreSQL: at most one process at a time holds a document's lease.

A lease is a session-level advisory lock on a 64-bit key made from the
store's schema and the document's name, held on one dedicated connection per
process. It is released when the holder lets go, and also when the holder
dies: ``kill -9`` closes the connection and PostgreSQL drops the backend's
locks at once; a lost machine is noticed through TCP keepalives that the
connection sets for itself. The holder learns that it lost every lease
(the connection failed) through :attr:`Leases.lost`.

A lease says who should order a document's edits; it is not what keeps the
order safe. The store's append still refuses a revision that is taken, so a
holder that lost its lease without noticing yet can never commit over the
new holder. See ``docs/cluster.md``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Iterable

from .postgres import split_schema

log = logging.getLogger("collab.store")

# The key of a document's lease: schema and name, so deployments in separate schemas never collide.
_KEY = "hashtextextended($2::text || '/' || d, 0)"
_TRY = f"SELECT d, pg_try_advisory_lock({_KEY}) AS ok FROM unnest($1::text[]) AS d"
_UNLOCK = f"SELECT pg_advisory_unlock({_KEY}) FROM unnest($1::text[]) AS d"


class Leases:
    """This process's leases on the documents of the store at ``dsn`` whose tables are in schema ``namespace``."""

    def __init__(self, dsn: str, namespace: str = "", keepalive_seconds: int = 1) -> None:
        self.dsn = dsn
        self.namespace = namespace
        self.keepalive_seconds = keepalive_seconds
        self._conn: Any = None
        self._lock = asyncio.Lock()
        self._held: set[str] = set()
        #: Set when the lease connection failed: every lease this process held is gone.
        self.lost = asyncio.Event()

    @classmethod
    def from_url(cls, url: str) -> "Leases":
        """The leases of the store at ``url`` (a ``DATABASE_URL``, ``?schema=`` included)."""
        dsn, schema = split_schema(url)
        return cls(dsn, schema or "")

    @property
    def held(self) -> frozenset[str]:
        """The documents whose lease this process holds."""
        return frozenset(self._held)

    async def open(self) -> None:
        """Connect the lease connection (its own, outside the store's pool)."""
        import asyncpg

        k = str(self.keepalive_seconds)
        settings = {"tcp_keepalives_idle": k, "tcp_keepalives_interval": k, "tcp_keepalives_count": "2",
                    "application_name": "collab-leases"}
        self._conn = await asyncpg.connect(self.dsn, timeout=10, server_settings=settings)
        self._conn.add_termination_listener(self._terminated)
        self.lost.clear()

    def _terminated(self, _conn: Any) -> None:
        if self._held:
            log.warning("the lease connection to PostgreSQL closed; leases on %d documents are gone", len(self._held))
        self._held.clear()
        self.lost.set()

    async def acquire(self, docs: Iterable[str]) -> set[str]:
        """Try to take the leases of ``docs`` (one statement, never waits); returns those now held.

        After the lease connection was lost, this connects again (holding nothing).
        """
        wanted = sorted(set(docs))
        async with self._lock:
            if self._conn is None or self._conn.is_closed():
                await self.open()
            new = [d for d in wanted if d not in self._held]  # a second lock of one key would need two unlocks
            if new:
                rows = await self._conn.fetch(_TRY, new, self.namespace)
                self._held.update(r["d"] for r in rows if r["ok"])
            return {d for d in wanted if d in self._held}

    async def release(self, docs: Iterable[str]) -> None:
        """Let go of the leases of ``docs`` that this process holds."""
        async with self._lock:
            mine = sorted(d for d in set(docs) if d in self._held)
            if mine:
                self._held.difference_update(mine)
                await self._conn.fetch(_UNLOCK, mine, self.namespace)

    async def close(self) -> None:
        """Let go of every lease (closing the connection does)."""
        conn, self._conn = self._conn, None
        self._held.clear()
        if conn is not None and not conn.is_closed():
            conn.remove_termination_listener(self._terminated)
            await conn.close()
