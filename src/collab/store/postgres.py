"""The shared store: PostgreSQL through asyncpg, for several processes on one database.

PostgreSQL is the ordering authority when collab runs as several
processes: an append succeeds only if it extends the document's current
revision (the ``collab_docs`` row is the sequencer, and the primary key
``(doc, rev)`` of ``collab_ops`` the last guard), so two processes can never
both commit revision *n*; the loser gets :class:`RevisionConflict`, catches
up and retries. Op ids are unique per document (``collab_op_ids``), so an
operation resent to another process after a crash is never applied twice.

Tables are prefixed ``collab_`` so they can share a database with other
applications; ``?schema=NAME`` in the URL puts them in their own schema
(created if missing). The schema is created or migrated on :meth:`open`,
under an advisory lock so that processes starting together do not race.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from typing import Any, AsyncIterator
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .base import DocInfo, DocState, RevisionConflict, Store, StoredOp, replay
from .base import dump_op as _dumps
from .base import load_op as _loads


#: The schema version this code writes; :meth:`PostgresStore.open` migrates older ones.
SCHEMA_VERSION = 2

#: Statements creating each version from the one before, in order.
MIGRATIONS: dict[int, list[str]] = {
    1: [
        """CREATE TABLE IF NOT EXISTS collab_docs (
            id TEXT PRIMARY KEY,
            rev BIGINT NOT NULL,
            size BIGINT NOT NULL,
            created DOUBLE PRECISION NOT NULL,
            updated DOUBLE PRECISION NOT NULL
        )""",
        "CREATE INDEX IF NOT EXISTS collab_docs_updated ON collab_docs (updated DESC)",
        """CREATE TABLE IF NOT EXISTS collab_ops (
            doc TEXT NOT NULL,
            rev BIGINT NOT NULL,
            op TEXT NOT NULL,
            client TEXT NOT NULL,
            op_id TEXT NOT NULL,
            PRIMARY KEY (doc, rev)
        )""",
        # Op ids outlive the compacted log, so a resend from long ago is still recognized.
        """CREATE TABLE IF NOT EXISTS collab_op_ids (
            doc TEXT NOT NULL,
            op_id TEXT NOT NULL,
            rev BIGINT NOT NULL,
            PRIMARY KEY (doc, op_id)
        )""",
        """CREATE TABLE IF NOT EXISTS collab_snapshots (
            doc TEXT NOT NULL,
            rev BIGINT NOT NULL,
            text TEXT NOT NULL,
            PRIMARY KEY (doc, rev)
        )""",
    ],
    # PostgreSQL's text type refuses U+0000, a valid character in a document:
    # snapshots are kept as their UTF-8 bytes instead.
    2: ["ALTER TABLE collab_snapshots ALTER COLUMN text TYPE BYTEA USING convert_to(text, 'UTF8')"],
}


# One append, as one statement: the docs row moves from ``$5`` (= first - 1) to
# ``$2`` (= last) only if it is there and none of the op ids was applied
# before; everything else happens only if it moved. Returns one row, ``ok``.
_APPEND_REST = """
, o AS (
    INSERT INTO collab_ops (doc, rev, op, client, op_id)
    SELECT $1, * FROM unnest($6::bigint[], $7::text[], $9::text[], $8::text[]) WHERE EXISTS (SELECT 1 FROM moved)
), i AS (
    INSERT INTO collab_op_ids (doc, op_id, rev)
    SELECT $1, * FROM unnest($8::text[], $6::bigint[]) WHERE EXISTS (SELECT 1 FROM moved)
), s AS (
    INSERT INTO collab_snapshots (doc, rev, text)
    SELECT $1, $10::bigint, $11::bytea WHERE $10::bigint IS NOT NULL AND EXISTS (SELECT 1 FROM moved)
    ON CONFLICT (doc, rev) DO UPDATE SET text = EXCLUDED.text
), ds AS (
    DELETE FROM collab_snapshots WHERE doc = $1 AND rev < $10::bigint AND EXISTS (SELECT 1 FROM moved)
), dops AS (
    DELETE FROM collab_ops WHERE doc = $1 AND rev <= $12::bigint AND EXISTS (SELECT 1 FROM moved)
)
SELECT EXISTS (SELECT 1 FROM moved) AS ok
"""
_NO_ID_APPLIED = "NOT EXISTS (SELECT 1 FROM collab_op_ids WHERE doc = $1 AND op_id = ANY($8::text[]))"
APPEND = (
    "WITH moved AS (UPDATE collab_docs SET rev = $2, size = $3, updated = $4 "
    f"WHERE id = $1 AND rev = $5 AND {_NO_ID_APPLIED} RETURNING 1)" + _APPEND_REST
)
#: The first append of a document creates its row (or moves the row ``exclusive`` left at 0).
APPEND_NEW = (
    "WITH moved AS (INSERT INTO collab_docs (id, rev, size, created, updated) VALUES ($1, $2, $3, $4, $4) "
    "ON CONFLICT (id) DO UPDATE SET rev = EXCLUDED.rev, size = EXCLUDED.size, updated = EXCLUDED.updated "
    f"WHERE collab_docs.rev = $5 AND {_NO_ID_APPLIED} RETURNING 1)" + _APPEND_REST
)


def _append_args(doc: str, ops: list[StoredOp], size: int, snapshot: tuple[int, str] | None, depth: int) -> tuple:
    """The parameters of :data:`APPEND` for one append."""
    last = ops[-1].rev
    snap_rev, snap_text = (snapshot[0], snapshot[1].encode()) if snapshot is not None else (None, None)
    keep_after = min(snap_rev, last - depth) if snap_rev is not None else None
    return (doc, last, size, time.time(), ops[0].rev - 1, [o.rev for o in ops], [_dumps(o.op) for o in ops],
            [o.id for o in ops], [o.client for o in ops], snap_rev, snap_text, keep_after)


_SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def split_schema(url: str) -> tuple[str, str | None]:
    """``url`` without its ``schema=NAME`` query parameter, and that name (or ``None``)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schema = None
    kept = []
    for key, value in query:
        if key == "schema":
            schema = value
        else:
            kept.append((key, value))
    return urlunsplit(parts._replace(query=urlencode(kept))), schema


class PostgresStore(Store):
    """Documents in PostgreSQL at ``url`` (``postgres://user:password@host:port/db[?schema=NAME]``)."""

    may_conflict = True

    def __init__(self, url: str, history_depth: int = 1000, schema: str | None = None,
                 min_connections: int = 2, max_connections: int = 20) -> None:
        dsn, url_schema = split_schema(url)
        schema = schema or url_schema
        if schema is not None and not _SCHEMA_NAME.match(schema):
            raise SystemExit(f"schema {schema!r} in DATABASE_URL is not a plain SQL name: use letters, digits and _")
        self.dsn = dsn
        self.schema = schema
        self.history_depth = history_depth
        self.min_connections = min_connections
        self.max_connections = max_connections
        self._pool: Any = None
        #: Connections inside exclusive(), by document.
        self._held: dict[str, Any] = {}
        self._pending: list[tuple[tuple, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None
        #: Transactions committed and ops written, for /metrics and benchmarks.
        self.commits = 0
        self.ops_written = 0

    # -- plumbing ---------------------------------------------------------

    @property
    def pool(self) -> Any:
        if self._pool is None:
            raise RuntimeError("the PostgreSQL store is not open: call open() first")
        return self._pool

    def _where(self) -> str:
        """The URL without credentials, for error messages."""
        parts = urlsplit(self.dsn)
        return f"{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path}"

    async def open(self) -> None:
        try:
            import asyncpg
        except ImportError:
            raise SystemExit("DATABASE_URL is a PostgreSQL URL but asyncpg is not installed: pip install 'collab[postgres]'") from None
        # A process that hangs inside a transaction (holding a document's turn) must not stall the others.
        settings = {"idle_in_transaction_session_timeout": "10000"}
        if self.schema:
            settings["search_path"] = self.schema
        try:
            if self.schema:  # the schema must exist before a connection's search_path names it
                conn = await asyncpg.connect(self.dsn, timeout=10)
                try:
                    await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
                except asyncpg.UniqueViolationError:
                    pass  # created by another process at the same moment
                finally:
                    await conn.close()
            self._pool = await asyncpg.create_pool(
                self.dsn, min_size=self.min_connections, max_size=self.max_connections,
                server_settings=settings, timeout=10,
            )
        except (OSError, asyncio.TimeoutError, asyncpg.PostgresError) as exc:
            raise SystemExit(
                f"cannot connect to PostgreSQL at {self._where()} ({exc}); check DATABASE_URL and that the database is running"
            ) from None
        await self._migrate()

    async def _migrate(self) -> None:
        """Bring the schema to :data:`SCHEMA_VERSION`, one process at a time."""
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.collab_schema'))")
                await conn.execute("CREATE TABLE IF NOT EXISTS collab_schema (version INTEGER NOT NULL)")
                version = await conn.fetchval("SELECT max(version) FROM collab_schema") or 0
                if version > SCHEMA_VERSION:
                    raise SystemExit(
                        f"the database at {self._where()} has collab schema version {version}, newer than this "
                        f"collab understands ({SCHEMA_VERSION}): upgrade collab"
                    )
                for v in range(version + 1, SCHEMA_VERSION + 1):
                    for statement in MIGRATIONS[v]:
                        await conn.execute(statement)
                    await conn.execute("INSERT INTO collab_schema (version) VALUES ($1)", v)

    async def close(self) -> None:
        if self._flusher is not None:
            await asyncio.shield(self._flusher)
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def drop_schema(self) -> None:
        """Delete this store's schema and everything in it (tests clean up with this)."""
        if not self.schema:
            raise ValueError("refusing to drop tables that are not in a schema of their own")
        async with self.pool.acquire() as conn:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')

    # -- writes -------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def exclusive(self, doc: str) -> AsyncIterator[None]:
        """Lock ``doc``'s row for one transaction; appends and reads of ``doc`` inside use it."""
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                # Creates the row (at revision 0) if needed, and locks it either way.
                await conn.execute(
                    "INSERT INTO collab_docs (id, rev, size, created, updated) VALUES ($1, 0, 0, $2, $2) "
                    "ON CONFLICT (id) DO UPDATE SET rev = collab_docs.rev", doc, time.time(),
                )
                self._held[doc] = conn
                try:
                    yield
                finally:
                    self._held.pop(doc, None)

    async def append(self, doc: str, ops: list[StoredOp], size: int, snapshot: tuple[int, str] | None = None) -> None:
        held = self._held.get(doc)
        if held is not None:  # inside exclusive(): part of its transaction
            await self._append_held(held, doc, ops, size, snapshot)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((_append_args(doc, ops, size, snapshot, self.history_depth), fut))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush())
        await fut

    async def _append_held(self, conn: Any, doc: str, ops: list[StoredOp], size: int,
                           snapshot: tuple[int, str] | None) -> None:
        args = _append_args(doc, ops, size, snapshot, self.history_depth)
        # No savepoint needed: under the row lock the guards answer "not ok" instead of raising.
        ok = await conn.fetchval(APPEND_NEW if ops[0].rev == 1 else APPEND, *args)
        if not ok:
            raise RevisionConflict(f"{doc}: revision {ops[0].rev} is already taken, or one of the op ids was applied")
        self.commits += 1
        self.ops_written += len(ops)

    async def _flush(self) -> None:
        """Group commit: write every pending append, of any document, in one transaction, until none is left."""
        import asyncpg

        try:
            while self._pending:
                batch, self._pending = self._pending, []
                # Rows are locked in one order by every process: groups cannot deadlock.
                batch.sort(key=lambda item: item[0][0])
                try:
                    async with self.pool.acquire() as conn:
                        async with conn.transaction():
                            new = [args for args, _ in batch if args[4] == 0]
                            old = [args for args, _ in batch if args[4] != 0]
                            rows = {}
                            # One pipelined round trip per kind, however many documents.
                            for query, group in ((APPEND_NEW, new), (APPEND, old)):
                                if group:
                                    for args, row in zip(group, await conn.fetchmany(query, group)):
                                        rows[id(args)] = row["ok"]
                except (asyncpg.UniqueViolationError, asyncpg.DeadlockDetectedError) as exc:
                    # Not expected (the docs row guards revisions and op ids; rows are locked in
                    # order), but if it happens the whole group was rolled back: every document retries.
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(RevisionConflict(f"a concurrent write was refused ({exc}); retry"))
                    continue
                except Exception as exc:  # the transaction failed (connection lost, disk full)
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                self.commits += 1
                for args, fut in batch:
                    if fut.done():
                        continue
                    if rows.get(id(args)):
                        self.ops_written += len(args[5])
                        fut.set_result(None)
                    else:
                        fut.set_exception(RevisionConflict(
                            f"{args[0]}: revision {args[4] + 1} is already taken, or one of the op ids was applied"))
        finally:
            self._flusher = None

    # -- reads --------------------------------------------------------------

    async def load(self, doc: str, history_depth: int) -> DocState:
        async with self.pool.acquire() as conn:
            # One snapshot of the database, so that concurrent appends cannot tear the view.
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                row = await conn.fetchrow(
                    "SELECT rev, text FROM collab_snapshots WHERE doc = $1 ORDER BY rev DESC LIMIT 1", doc
                )
                snap_rev, text = (row["rev"], bytes(row["text"]).decode()) if row else (0, "")
                rev = await conn.fetchval("SELECT rev FROM collab_docs WHERE id = $1", doc) or 0
                start = min(snap_rev, max(0, rev - history_depth))
                rows = await conn.fetch(
                    "SELECT rev, op, client, op_id FROM collab_ops WHERE doc = $1 AND rev > $2 ORDER BY rev", doc, start
                )
        ops = [StoredOp(r["rev"], _loads(r["op"]), r["client"], r["op_id"]) for r in rows]
        return replay(doc, snap_rev, text, ops, rev, history_depth)

    async def find_op(self, doc: str, op_id: str) -> int | None:
        return await self.pool.fetchval("SELECT rev FROM collab_op_ids WHERE doc = $1 AND op_id = $2", doc, op_id)

    async def ops_since(self, doc: str, rev: int) -> list[StoredOp]:
        rows = await (self._held.get(doc) or self.pool).fetch(
            "SELECT rev, op, client, op_id FROM collab_ops WHERE doc = $1 AND rev > $2 ORDER BY rev", doc, rev
        )
        return [StoredOp(r["rev"], _loads(r["op"]), r["client"], r["op_id"]) for r in rows]

    async def revisions(self, docs: list[str]) -> dict[str, int]:
        rows = await self.pool.fetch("SELECT id, rev FROM collab_docs WHERE id = ANY($1::text[])", docs)
        return {r["id"]: r["rev"] for r in rows}

    async def list_docs(self) -> list[DocInfo]:
        rows = await self.pool.fetch("SELECT id, rev, size, updated FROM collab_docs WHERE rev > 0 ORDER BY updated DESC")
        return [DocInfo(r["id"], r["rev"], r["size"], r["updated"]) for r in rows]

    def leases(self) -> Any:
        from .pglease import Leases

        return Leases(self.dsn, self.schema or "")

    async def ping(self) -> None:
        await self.pool.fetchval("SELECT 1")
