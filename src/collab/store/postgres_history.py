"""The PostgreSQL store's history: author ids, and the reads and thinning of :mod:`collab.store.history`."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from . import history as h
from .base import StoredOp, load_op

if TYPE_CHECKING:
    from .postgres import PostgresStore


class PostgresHistory:
    """History reads of one PostgreSQL store; ``store.pool`` is its connection pool."""

    def __init__(self, store: "PostgresStore", history_depth: int) -> None:
        self.store = store
        self.history_depth = history_depth
        #: ``(name, client)`` -> author id, and the reverse, for authors seen by this process.
        self.ids: dict[tuple[str, str], int] = {}
        self.names: dict[int, tuple[str, str]] = {}
        self.authorship_cache = h.AuthorshipCache()
        #: ``(doc, rev)`` of checkpoints whose runs cannot be computed (the history before them is gone).
        self.unmaintainable: set[tuple[str, int]] = set()

    async def author_ids(self, ops: list[StoredOp]) -> list[int]:
        """Each op's author id, adding new authors (committed at once: an unused author row is harmless)."""
        out = []
        for o in ops:
            key = (o.name, o.client)
            author = self.ids.get(key)
            if author is None:
                author = await self.store.pool.fetchval(
                    "INSERT INTO collab_authors (name, client) VALUES ($1, $2) ON CONFLICT (name, client) "
                    "DO UPDATE SET name = EXCLUDED.name RETURNING id", *key)
                self.ids[key] = author
                self.names[author] = key
            out.append(author)
        return out

    async def _labels(self, conn: Any, ids: set[int]) -> dict[int, str]:
        missing = [i for i in ids if i not in self.names]
        if missing:
            for r in await conn.fetch("SELECT id, name, client FROM collab_authors WHERE id = ANY($1::int[])", missing):
                self.names[r["id"]] = (r["name"], r["client"])
        return {i: h.label(*self.names[i]) for i in ids if i in self.names}

    @staticmethod
    async def _head(conn: Any, doc: str) -> int | None:
        return await conn.fetchval("SELECT rev FROM collab_docs WHERE id = $1", doc)

    @staticmethod
    async def _base(conn: Any, doc: str, rev: int) -> tuple[int, str]:
        best = (0, b"")
        for table in ("collab_checkpoints", "collab_snapshots"):
            row = await conn.fetchrow(f"SELECT rev, text FROM {table} WHERE doc = $1 AND rev <= $2 ORDER BY rev DESC LIMIT 1",
                                      doc, rev)
            if row is not None and row["rev"] > best[0]:
                best = (row["rev"], bytes(row["text"]))
        return best[0], best[1].decode()

    @staticmethod
    async def _ops(conn: Any, doc: str, base: int, rev: int) -> list[StoredOp]:
        rows = await conn.fetch(
            "SELECT o.rev, o.op, o.client, coalesce(a.name, '') AS name, coalesce(o.at, 0) AS at FROM collab_ops o "
            "LEFT JOIN collab_authors a ON a.id = o.author WHERE o.doc = $1 AND o.rev > $2 AND o.rev <= $3 ORDER BY o.rev",
            doc, base, rev)
        return [StoredOp(r["rev"], load_op(r["op"]), r["client"], "", r["name"], r["at"]) for r in rows]

    async def text_at(self, doc: str, rev: int) -> str:
        async with self.store.pool.acquire() as conn:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                h.check_rev(doc, rev, await self._head(conn, doc))
                base, text = await self._base(conn, doc, rev)
                ops = await self._ops(conn, doc, base, rev)
        return await asyncio.to_thread(h.rebuild, doc, base, text, ops, rev)

    async def sessions(self, doc: str, before: int | None, limit: int) -> list[h.Session]:
        async with self.store.pool.acquire() as conn:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                row = await conn.fetchrow("SELECT rev, s_first, s_start, s_end, s_authors, s_ins, s_del "
                                          "FROM collab_docs WHERE id = $1", doc)
                h.check_rev(doc, 0, row["rev"] if row else None)
                found = []
                if row["s_first"] is not None and (before is None or row["rev"] < before):
                    found.append(h.Session(row["s_first"], row["rev"], row["s_start"], row["s_end"],
                                           list(row["s_authors"]), row["s_ins"], row["s_del"]))
                rows = await conn.fetch(
                    'SELECT first, last, start, "end", authors, inserted, deleted, thinned FROM collab_sessions '
                    "WHERE doc = $1 AND last < $2 ORDER BY first DESC LIMIT $3",
                    doc, before if before is not None else row["rev"] + 1, limit)
                found.extend(h.Session(r["first"], r["last"], r["start"], r["end"], list(r["authors"]), r["inserted"],
                                       r["deleted"], r["thinned"]) for r in rows)
                found = found[:limit]
                labels = await self._labels(conn, {a for s in found for a in s.authors})
        for s in found:
            s.authors = [labels.get(a, str(a)) for a in s.authors]
        return found

    async def _runs_at(self, conn: Any, doc: str, rev: int) -> h.Runs:
        base, runs = self.authorship_cache.nearest(doc, rev)
        row = await conn.fetchrow("SELECT rev, runs FROM collab_checkpoints WHERE doc = $1 AND rev <= $2 AND rev > $3 "
                                  "AND runs IS NOT NULL ORDER BY rev DESC LIMIT 1", doc, rev, base)
        if row is not None:
            base, runs = row["rev"], h.load_runs(row["runs"])
        ops = await self._ops(conn, doc, base, rev)
        try:
            return await asyncio.to_thread(self.authorship_cache.replay, doc, base, runs, ops, rev)
        except h.RevisionGone:  # history from before schema 3 starts at a checkpoint whose authors are unknown
            row = await conn.fetchrow("SELECT rev, text FROM collab_checkpoints WHERE doc = $1 AND rev <= $2 "
                                      "ORDER BY rev LIMIT 1", doc, rev)
            if row is None or row["rev"] <= base:
                raise
            ops = await self._ops(conn, doc, row["rev"], rev)
            start = h.unknown_runs(bytes(row["text"]).decode())
            return await asyncio.to_thread(self.authorship_cache.replay, doc, row["rev"], start, ops, rev)

    async def authorship(self, doc: str, rev: int | None) -> list[dict]:
        async with self.store.pool.acquire() as conn:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                head = await self._head(conn, doc)
                rev = head if rev is None else rev
                h.check_rev(doc, rev or 0, head)
                assert rev is not None
                return h.spans(await self._runs_at(conn, doc, rev))

    async def thin(self, before: float) -> int:
        """Thin sessions that ended before ``before`` and lie behind what loading reads."""
        thinned = 0
        async with self.store.pool.acquire() as conn:
            docs = await conn.fetch("SELECT d.id, least(coalesce((SELECT max(rev) FROM collab_snapshots s WHERE s.doc = d.id), 0), "
                                    "d.rev - $1) AS bound FROM collab_docs d", self.history_depth)
            for d in docs:
                rows = await conn.fetch('SELECT first, last FROM collab_sessions WHERE doc = $1 AND NOT thinned '
                                        'AND "end" < $2 AND last <= $3 ORDER BY first', d["id"], before, d["bound"])
                for r in rows:
                    doc, first, last = d["id"], r["first"], r["last"]
                    async with conn.transaction():
                        base, text = await self._base(conn, doc, last)
                        text = h.rebuild(doc, base, text, await self._ops(conn, doc, base, last), last)
                        runs = await self._runs_at(conn, doc, last)
                        await conn.execute("DELETE FROM collab_checkpoints WHERE doc = $1 AND rev BETWEEN $2 AND $3",
                                           doc, first, last)
                        await conn.execute("INSERT INTO collab_checkpoints (doc, rev, text, runs) VALUES ($1, $2, $3, $4)",
                                           doc, last, text.encode(), h.dump_runs(runs))
                        await conn.execute("DELETE FROM collab_ops WHERE doc = $1 AND rev BETWEEN $2 AND $3", doc, first, last)
                        await conn.execute("UPDATE collab_sessions SET thinned = true WHERE doc = $1 AND first = $2", doc, first)
                    self.authorship_cache.forget(doc)
                    thinned += 1
        return thinned

    async def maintain_step(self) -> bool:
        """Store the authorship runs of one checkpoint that lacks them (the nearest earlier checkpoint's
        moved by the ops between); False when none is left (but those whose history is gone).

        Every process of a deployment does this; two that took the same checkpoint at once are not a
        failure: the one whose update comes second finds the runs stored and looks for the next."""
        import asyncpg

        try:
            return await self._maintain_one()
        except asyncpg.SerializationError:  # another process stored these runs first
            return True

    async def _maintain_one(self) -> bool:
        async with self.store.pool.acquire() as conn:
            async with conn.transaction(isolation="repeatable_read"):
                rows = await conn.fetch("SELECT doc, rev FROM collab_checkpoints WHERE runs IS NULL ORDER BY rev LIMIT $1",
                                        len(self.unmaintainable) + 1)
                todo = [(r["doc"], r["rev"]) for r in rows if (r["doc"], r["rev"]) not in self.unmaintainable]
                if not todo:
                    return False
                doc, rev = todo[0]
                try:
                    runs = await self._runs_at(conn, doc, rev)
                except h.RevisionGone:
                    self.unmaintainable.add((doc, rev))
                    return True
                await conn.execute("UPDATE collab_checkpoints SET runs = $3 WHERE doc = $1 AND rev = $2 AND runs IS NULL",
                                   doc, rev, h.dump_runs(runs))
        return True
