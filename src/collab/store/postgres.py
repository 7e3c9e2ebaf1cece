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
import logging
import re
import time
from typing import Any, AsyncIterator, Callable, NamedTuple
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ..aio import cancel_and_wait
from . import history
from .base import Credential, DocInfo, DocState, ListPosition, RevisionConflict, Store, StoredOp, replay
from .base import dump_op as _dumps
from .base import load_op as _loads
from .postgres_history import PostgresHistory
from .postgres_schema import MIGRATIONS, SCHEMA_VERSION

log = logging.getLogger("collab.store")


# One append, as one statement: the docs row moves from ``$5`` (= first - 1) to
# ``$2`` (= last) only if it is there and none of the op ids was applied
# before; everything else happens only if it moved. Returns one row, ``ok``.
# The docs row also carries the open editing session: a pause longer than
# ``$14`` seconds since its end closes it into collab_sessions (read from the
# row as it was: every part of one statement sees the same snapshot).
def _session_set(row: str, gap: str, first: str, ins: str, dels: str, authors: str) -> str:
    """The SET of an append's open-session columns on docs row ``row``, at time ``$4``: a pause longer
    than ``gap`` seconds starts a new session at revision ``first``; else the append adds to the open one."""
    brk = f"({row}.s_end IS NULL OR $4 - {row}.s_end > {gap}::float8)"
    return (
        f"s_first = CASE WHEN {brk} THEN {first} ELSE {row}.s_first END, "
        f"s_start = CASE WHEN {brk} THEN $4 ELSE {row}.s_start END, s_end = $4, "
        f"s_ins = CASE WHEN {brk} THEN {ins} ELSE {row}.s_ins + {ins} END, "
        f"s_del = CASE WHEN {brk} THEN {dels} ELSE {row}.s_del + {dels} END, "
        f"s_authors = CASE WHEN {brk} THEN {authors} ELSE ARRAY(SELECT x FROM unnest({row}.s_authors || "
        f"{authors}) WITH ORDINALITY AS t(x, k) GROUP BY x ORDER BY min(k)) END"
    )


_SESSION_SET = _session_set("collab_docs", "$14", "$5 + 1", "$16::bigint", "$17::bigint", "$15::int[]")
_APPEND_REST = """
, o AS (
    INSERT INTO collab_ops (doc, rev, op, client, op_id, author, at)
    SELECT $1, r, op, c, i, a, $4 FROM unnest($6::bigint[], $7::text[], $9::text[], $8::text[], $13::int[]) AS u(r, op, c, i, a)
    WHERE EXISTS (SELECT 1 FROM moved)
), cs AS (
    INSERT INTO collab_sessions (doc, first, last, start, "end", authors, inserted, deleted)
    SELECT id, s_first, rev, s_start, s_end, s_authors, s_ins, s_del FROM collab_docs
    WHERE id = $1 AND s_end IS NOT NULL AND $4 - s_end > $14::float8 AND EXISTS (SELECT 1 FROM moved)
), cp AS (
    INSERT INTO collab_checkpoints (doc, rev, text)
    SELECT $1, $10::bigint, $11::bytea WHERE $10::bigint IS NOT NULL AND EXISTS (SELECT 1 FROM moved)
    AND $10::bigint - coalesce((SELECT max(rev) FROM collab_checkpoints WHERE doc = $1), 0) >= $12::bigint
    ON CONFLICT (doc, rev) DO NOTHING
), i AS (
    INSERT INTO collab_op_ids (doc, op_id, rev)
    SELECT $1, * FROM unnest($8::text[], $6::bigint[]) WHERE EXISTS (SELECT 1 FROM moved)
), s AS (
    INSERT INTO collab_snapshots (doc, rev, text)
    SELECT $1, $10::bigint, $11::bytea WHERE $10::bigint IS NOT NULL AND EXISTS (SELECT 1 FROM moved)
    ON CONFLICT (doc, rev) DO UPDATE SET text = EXCLUDED.text
), ds AS (
    DELETE FROM collab_snapshots WHERE doc = $1 AND rev < $10::bigint AND EXISTS (SELECT 1 FROM moved)
)
SELECT EXISTS (SELECT 1 FROM moved) AS ok
"""
# None of the append's op ids was applied before: one index probe per id, whatever the plan.
# (``op_id = ANY($8)``, or a join, let the generic plan a prepared statement settles on,
# made while the table was small, read every id of the document: each append then cost
# time in proportion to the document's history. A LATERAL subquery with LIMIT cannot be
# turned into a join, so it stays a lookup per id.)
_NO_ID_APPLIED = ("NOT EXISTS (SELECT 1 FROM unnest($8::text[]) AS given(op_id), LATERAL "
                  "(SELECT 1 FROM collab_op_ids o WHERE o.doc = $1 AND o.op_id = given.op_id LIMIT 1) AS applied)")
# The fence of a pipelined append: ``$19``, the last op of the append queued before it, is the
# one at revision ``$5``, so an append whose predecessor was refused is refused too, even where
# another process's commit has since taken the row to the same revision.
_AFTER = "($19::text IS NULL OR EXISTS (SELECT 1 FROM collab_op_ids WHERE doc = $1 AND op_id = $19 AND rev = $5))"
APPEND = (
    f"WITH moved AS (UPDATE collab_docs SET rev = $2, size = $3, bytes = $18::bigint, updated = $4, {_SESSION_SET} "
    f"WHERE id = $1 AND rev = $5 AND {_NO_ID_APPLIED} AND {_AFTER} RETURNING 1)" + _APPEND_REST
)
#: The first append of a document creates its row (or moves the row ``exclusive`` left at 0).
APPEND_NEW = (
    "WITH moved AS (INSERT INTO collab_docs (id, rev, size, bytes, created, updated, s_first, s_start, s_end, "
    "s_authors, s_ins, s_del) VALUES ($1, $2, $3, $18::bigint, $4, $4, $5 + 1, $4, $4, $15::int[], $16, $17::bigint) "
    "ON CONFLICT (id) DO UPDATE SET rev = EXCLUDED.rev, size = EXCLUDED.size, bytes = EXCLUDED.bytes, "
    f"updated = EXCLUDED.updated, {_SESSION_SET} "
    f"WHERE collab_docs.rev = $5 AND {_NO_ID_APPLIED} AND {_AFTER} RETURNING 1)" + _APPEND_REST
)


# Appends to many existing documents, one per document and none with a snapshot, as one statement.
# Documents: $1 ids, $2 last revisions, $3 sizes, $4 (scalar) now, $5 revisions continued from,
# $6 bytes, $7 fences (op id or NULL), $8 inserted, $9 deleted, $10 (scalar) session gap;
# ops: $11 their document's position in $1 (from 1), $12 revisions, $13 ops, $14 clients, $15 ids, $16 authors.
APPEND_MANY = f"""
WITH d AS (
    SELECT d.*, (d.after IS NULL OR f.ok) AS fenced
    FROM unnest($1::text[], $2::bigint[], $3::bigint[], $5::bigint[], $6::bigint[], $7::text[], $8::bigint[],
                $9::bigint[]) WITH ORDINALITY AS d(doc, last, size, prev, nbytes, after, ins, del, n)
    LEFT JOIN LATERAL (SELECT true AS ok FROM collab_op_ids x WHERE x.doc = d.doc AND x.op_id = d.after
                       AND x.rev = d.prev LIMIT 1) AS f ON true
), o AS (
    SELECT * FROM unnest($11::bigint[], $12::bigint[], $13::text[], $14::text[], $15::text[], $16::int[])
        AS o(n, rev, op, client, op_id, author)
), a AS (
    SELECT n, array_agg(author ORDER BY first) AS authors
    FROM (SELECT n, author, min(rev) AS first FROM o GROUP BY n, author) AS f GROUP BY n
), moved AS (
    UPDATE collab_docs AS c SET rev = d.last, size = d.size, bytes = d.nbytes, updated = $4,
        {_session_set("c", "$10", "d.prev + 1", "d.ins", "d.del", "a.authors")}
    FROM d JOIN a ON a.n = d.n
    WHERE c.id = d.doc AND c.rev = d.prev AND d.fenced
      AND NOT EXISTS (SELECT 1 FROM o, LATERAL (SELECT 1 FROM collab_op_ids x WHERE x.doc = d.doc AND x.op_id = o.op_id
                      LIMIT 1) AS applied WHERE o.n = d.n)
    RETURNING d.n, d.doc
), ops AS (
    INSERT INTO collab_ops (doc, rev, op, client, op_id, author, at)
    SELECT m.doc, o.rev, o.op, o.client, o.op_id, o.author, $4 FROM o JOIN moved m ON m.n = o.n
), ids AS (
    INSERT INTO collab_op_ids (doc, op_id, rev) SELECT m.doc, o.op_id, o.rev FROM o JOIN moved m ON m.n = o.n
), cs AS (
    INSERT INTO collab_sessions (doc, first, last, start, "end", authors, inserted, deleted)
    SELECT c.id, c.s_first, c.rev, c.s_start, c.s_end, c.s_authors, c.s_ins, c.s_del
    FROM collab_docs c JOIN moved m ON c.id = m.doc WHERE c.s_end IS NOT NULL AND $4 - c.s_end > $10::float8
)
SELECT n FROM moved
"""


class AppendArgs(NamedTuple):
    """The parameters of :data:`APPEND` for one append, ``$1`` to ``$19`` in order."""

    doc: str
    last: int
    size: int
    now: float
    prev: int
    revs: list[int]
    ops: list[str]
    ids: list[str]
    clients: list[str]
    snap_rev: int | None
    snap_text: bytes | None
    every: int | None
    authors: list[int]
    gap: float
    distinct_authors: list[int]
    inserted: int
    deleted: int
    nbytes: int | None
    after: str | None


def _append_args(doc: str, ops: list[StoredOp], size: int, snapshot: tuple[int, str] | None,
                 authors: list[int], gap: float, nbytes: int | None = None, after: str | None = None) -> AppendArgs:
    """The parameters of :data:`APPEND` for one append (``authors``: each op's author id; ``after``:
    the last op id of the append queued before it, if this one continues it)."""
    last = ops[-1].rev
    snap_rev, snap_text = (snapshot[0], snapshot[1].encode()) if snapshot is not None else (None, None)
    every = max(1, len(snapshot[1]) // history.CHECKPOINT_CHARS_PER_OP) if snapshot is not None else None
    ins = dels = 0
    for o in ops:
        i, d = history.counts(o.op)
        ins += i
        dels += d
    return AppendArgs(doc, last, size, time.time(), ops[0].rev - 1, [o.rev for o in ops], [_dumps(o.op) for o in ops],
                      [o.id for o in ops], [o.client for o in ops], snap_rev, snap_text, every, authors, gap,
                      list(dict.fromkeys(authors)), ins, dels, nbytes, after)


def _split(batch: list[tuple[AppendArgs, Any]]) -> tuple[list[tuple[AppendArgs, list[AppendArgs]]],
                                                         list[AppendArgs], list[AppendArgs], list[AppendArgs]]:
    """A group's appends by how they are written, each kind in the group's order, and those left for later.

    :data:`APPEND_MANY` takes one append per document, to an existing document, without a snapshot:
    a document's appends that continue one another (a pipeline) are merged into one, which lands or is
    refused whole, as the later ones are refused with a refused predecessor anyway. Returned as
    ``(merged, parts)``. Then first appends (:data:`APPEND_NEW`), and the rest (the per-document
    :data:`APPEND`). A document's appends that cannot be merged go one per group: the first now,
    the others (last) in the next group, once the first's outcome is known. The store's fence
    alone cannot refuse them with it when another process committed the op they follow at its
    revision (see ``PostgresStore._refuse_chained``).
    """
    by_doc: dict[str, list[AppendArgs]] = {}
    for args, _ in batch:
        by_doc.setdefault(args.doc, []).append(args)
    many, new, old, later = [], [], [], []
    for parts in by_doc.values():
        if parts[0].prev == 0:
            new.append(parts[0])
            later += parts[1:]
        elif all(p.snap_rev is None for p in parts) and all(
                b.prev == a.last and b.after == a.ids[-1] for a, b in zip(parts, parts[1:])):
            many.append((_merge(parts) if len(parts) > 1 else parts[0], parts))
        else:
            old.append(parts[0])
            later += parts[1:]
    return many, new, old, later


def _merge(parts: list[AppendArgs]) -> AppendArgs:
    """Consecutive appends of one document (no snapshot) as one."""
    first, last = parts[0], parts[-1]
    authors = [a for p in parts for a in p.authors]
    return first._replace(
        last=last.last, size=last.size, revs=[r for p in parts for r in p.revs], ops=[o for p in parts for o in p.ops],
        ids=[i for p in parts for i in p.ids], clients=[c for p in parts for c in p.clients], authors=authors,
        distinct_authors=list(dict.fromkeys(authors)), inserted=sum(p.inserted for p in parts),
        deleted=sum(p.deleted for p in parts), nbytes=last.nbytes)


def _append_many_args(group: list[AppendArgs]) -> tuple:
    """The parameters of :data:`APPEND_MANY` for these appends (one per document)."""
    o_n: list[int] = []
    for n, args in enumerate(group, 1):
        o_n += [n] * len(args.revs)
    flat = [x for a in group for x in zip(a.revs, a.ops, a.clients, a.ids, a.authors)]
    o_rev, o_op, o_client, o_id, o_author = (list(c) for c in zip(*flat))
    first = group[0]
    return ([a.doc for a in group], [a.last for a in group], [a.size for a in group], first.now,
            [a.prev for a in group], [a.nbytes for a in group], [a.after for a in group], [a.inserted for a in group],
            [a.deleted for a in group], first.gap, o_n, o_rev, o_op, o_client, o_id, o_author)


async def _keep_session(conn: Any) -> None:
    """Return a connection to the pool as it is: no ``RESET ALL``/``UNLISTEN``/unlock round trip.

    The store leaves no session state on pooled connections (settings come with the pool, advisory
    locks are per transaction, leases hold their own connection), and asyncpg still rolls back a
    transaction left open before calling this. The default reset cost a round trip per acquire.
    """


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
    # Appends are written in the order they are queued, one group commit after another, and
    # each checks its predecessor (``_AFTER``): a document may queue its next before one lands.
    pipelined = True
    # Every append checks that none of its op ids was applied before (``_NO_ID_APPLIED``).
    fences_op_ids = True
    #: Seconds after an append that wrote a snapshot before its checkpoint's runs are computed.
    MAINTAIN_AFTER = 1.0

    def __init__(self, url: str, history_depth: int = 1000, schema: str | None = None,
                 min_connections: int = 2, max_connections: int = 20, session_gap: float = history.SESSION_GAP) -> None:
        dsn, url_schema = split_schema(url)
        schema = schema or url_schema
        if schema is not None and not _SCHEMA_NAME.match(schema):
            raise SystemExit(f"schema {schema!r} in DATABASE_URL is not a plain SQL name: use letters, digits and _")
        self.dsn = dsn
        self.schema = schema
        self.history_depth = history_depth
        self.session_gap = session_gap
        self._history = PostgresHistory(self, history_depth)
        self.min_connections = min_connections
        self.max_connections = max_connections
        self._pool: Any = None
        #: Connections inside exclusive(), by document.
        self._held: dict[str, Any] = {}
        #: Turns that may hold a connection at once: half the pool. What a turn needs besides its own
        #: connection (a new author's row, a read) then comes from the other half, whose users never
        #: wait for a turn while holding one. Had every connection gone to a turn, each would wait for
        #: another while holding its row lock, until PostgreSQL ended them all as idle in transaction.
        self._turns = asyncio.Semaphore(max(1, max_connections // 2))
        #: Appends for the next group commit, in the order they were queued.
        self._pending: list[tuple[tuple, asyncio.Future[None]]] = []
        #: The last queued append of each document: its last revision and op id (its successor's fence).
        self._queued: dict[str, tuple[int, str]] = {}
        #: The last op id of each document's last refused append, until one of its appends lands: an
        #: append queued after it (naming it as ``after``) is refused here, whatever the store holds.
        self._refused: dict[str, str] = {}
        self._flusher: asyncio.Task[None] | None = None
        #: Transactions committed and ops written, for /metrics and benchmarks.
        self.commits = 0
        self.ops_written = 0
        #: Turns taken holding a document's row lock (:meth:`exclusive`): commits made while other
        #: processes were writing the same document, or after losing a race to one.
        self.exclusive_turns = 0
        #: The task computing checkpoints' authorship runs, while one runs (see :meth:`maintain`).
        self._maintainer: asyncio.Task[int] | None = None

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
                server_settings=settings, timeout=10, reset=_keep_session,
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
        await cancel_and_wait(self._maintainer)
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
        """Lock ``doc``'s row for one transaction; appends and reads of ``doc`` inside use it.

        The hub takes a turn only with none of the document's appends in flight, so the turn begins a
        new chain: no append after it is built on one queued before it, refused or not.
        """
        self.exclusive_turns += 1
        self._queued.pop(doc, None)
        self._refused.pop(doc, None)
        async with self._turns, self.pool.acquire() as conn:
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

    async def append(self, doc: str, ops: list[StoredOp], size: int, snapshot: tuple[int, str] | None = None,
                     nbytes: int | None = None) -> None:
        held = self._held.get(doc)
        if held is not None:  # inside exclusive(): part of its transaction
            await self._append_held(held, doc, ops, size, snapshot, nbytes)
            return
        await self.start_append(doc, ops, size, snapshot, nbytes=nbytes)

    def start_append(self, doc: str, ops: list[StoredOp], size: int, snapshot: tuple[int, str] | None = None,
                     on_done: Callable[[asyncio.Future[None]], object] | None = None,
                     nbytes: int | None = None) -> asyncio.Future[None]:
        """Queue an append now, behind the ones started before it (their order is the commit order)."""
        if doc in self._held:
            return super().start_append(doc, ops, size, snapshot, on_done, nbytes)
        fut = self._queue(doc, ops, size, snapshot, nbytes)
        if snapshot is not None and self._maintainer is None:
            self._maintainer = asyncio.create_task(self._maintain_soon())
        if on_done is not None:
            fut.add_done_callback(on_done)
        return fut

    def _queue(self, doc: str, ops: list[StoredOp], size: int, snapshot: tuple[int, str] | None,
               nbytes: int | None) -> asyncio.Future[None]:
        """Add an append to the next group commit, fenced on the document's append queued before it."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queued = self._queued.get(doc)
        after = queued[1] if queued is not None and queued[0] == ops[0].rev - 1 else None
        self._queued[doc] = (ops[-1].rev, ops[-1].id)
        self._pending.append(((doc, ops, size, snapshot, nbytes, after), fut))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush())
        return fut

    async def _maintain_soon(self) -> int:
        """Compute new checkpoints' runs a moment after they are written (commits close together share it)."""
        try:
            await asyncio.sleep(self.MAINTAIN_AFTER)
            return await self.maintain()
        except Exception as exc:  # the database is away: the next checkpoint tries again
            log.warning("computing the authorship at checkpoints failed (%s); trying again later", exc)
            return 0
        finally:
            self._maintainer = None

    async def maintain(self) -> int:
        while await self._history.maintain_step():
            pass
        return 0

    async def _append_held(self, conn: Any, doc: str, ops: list[StoredOp], size: int,
                           snapshot: tuple[int, str] | None, nbytes: int | None = None) -> None:
        authors = await self._history.author_ids(ops)
        args = _append_args(doc, ops, size, snapshot, authors, self.session_gap, nbytes)
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
                queued, self._pending = self._pending, []
                queued = self._refuse_chained(queued)
                if not queued:
                    continue
                try:  # authors new to this process get their ids first (in order: the queue is the order)
                    batch = [(_append_args(doc, ops, size, snapshot, await self._history.author_ids(ops),
                                           self.session_gap, nbytes, after), fut)
                             for (doc, ops, size, snapshot, nbytes, after), fut in queued]
                except Exception as exc:  # the database is away: these appends fail, as their commit would
                    for (doc, ops, *_), fut in queued:
                        self._refuse(doc, ops[-1].id, fut, exc)
                    continue
                source = {id(args): item for (args, _), item in zip(batch, queued)}
                # Each kind locks its rows in name order, as every process does; groups of two processes
                # that hold the same documents in two kinds can still deadlock: then both retry (below).
                batch.sort(key=lambda item: item[0].doc)
                many, new, old, later = _split(batch)
                if later:  # the next group, before what was queued since (the queue is the order)
                    self._pending = [source[id(args)] for args in later] + self._pending
                    deferred = {id(args) for args in later}
                    batch = [item for item in batch if id(item[0]) not in deferred]
                rows = {}
                kinds = sum(1 for kind in (many, new, old) if kind)
                try:
                    async with self.pool.acquire() as conn:
                        # One statement, or one pipelined round trip, per kind, however many documents;
                        # one kind alone needs no BEGIN and COMMIT (its statements are one implicit transaction).
                        async with conn.transaction() if kinds > 1 else contextlib.nullcontext():
                            if many:
                                merged = [m for m, _ in many]
                                moved = {r["n"] for r in await conn.fetch(APPEND_MANY, *_append_many_args(merged))}
                                for n, (_, parts) in enumerate(many, 1):
                                    for args in parts:
                                        rows[id(args)] = n in moved
                            for query, group in ((APPEND_NEW, new), (APPEND, old)):
                                if group:
                                    for args, row in zip(group, await conn.fetchmany(query, group)):
                                        rows[id(args)] = row["ok"]
                except (asyncpg.UniqueViolationError, asyncpg.DeadlockDetectedError) as exc:
                    # Rare (the docs row guards revisions and op ids; rows are locked in order within
                    # each kind), but if it happens the whole group was rolled back: every document retries.
                    for args, fut in batch:
                        self._refuse(args.doc, args.ids[-1], fut,
                                     RevisionConflict(f"a concurrent write was refused ({exc}); retry"))
                    continue
                except Exception as exc:  # the transaction failed (connection lost, disk full)
                    for args, fut in batch:
                        self._refuse(args.doc, args.ids[-1], fut, exc)
                    continue
                self.commits += 1
                for args, fut in batch:
                    if fut.done():
                        continue
                    if rows.get(id(args)):
                        self.ops_written += len(args.revs)
                        self._refused.pop(args.doc, None)
                        fut.set_result(None)
                    else:
                        self._refuse(args.doc, args.ids[-1], fut, RevisionConflict(
                            f"{args.doc}: revision {args.prev + 1} is already taken, or one of the op ids was applied"))
        finally:
            self._flusher = None

    def _refuse(self, doc: str, last_id: str, fut: asyncio.Future[None], exc: BaseException) -> None:
        """An append of ``doc`` ending with op ``last_id`` failed: so do those queued after it."""
        self._refused[doc] = last_id
        if not fut.done():
            fut.set_exception(exc)

    def _refuse_chained(self, queued: list) -> list:
        """Refuse at once the appends queued after one that was refused (they were built on it); the rest.

        The store's fence (the op before an append is its predecessor's last) refuses them too, but not
        when another process committed that very op at that very revision after other ops than the
        refused append's: a forwarded edit that its old owner and its new one both ordered. An append
        built on the refused one would then land on a history it was not transformed against.
        """
        if not self._refused:
            return queued
        kept = []
        for item in queued:
            (doc, ops, _size, _snapshot, _nbytes, after), fut = item
            if after is not None and self._refused.get(doc) == after:
                self._refuse(doc, ops[-1].id, fut, RevisionConflict(f"{doc}: the append before revision {ops[0].rev} "
                                                                    "was refused"))
            else:
                kept.append(item)
        return kept

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

    def forget(self, doc: str) -> None:
        self._queued.pop(doc, None)
        self._refused.pop(doc, None)

    async def find_op(self, doc: str, op_id: str) -> int | None:
        return await self.pool.fetchval("SELECT rev FROM collab_op_ids WHERE doc = $1 AND op_id = $2", doc, op_id)

    async def find_ops(self, doc: str, op_ids: list[str]) -> dict[str, int]:
        # One index probe per id (a LATERAL with LIMIT, as in ``_NO_ID_APPLIED``), in one round trip.
        rows = await self.pool.fetch(
            "SELECT given.op_id, f.rev FROM unnest($2::text[]) AS given(op_id), LATERAL "
            "(SELECT rev FROM collab_op_ids o WHERE o.doc = $1 AND o.op_id = given.op_id LIMIT 1) AS f",
            doc, op_ids)
        return {r["op_id"]: r["rev"] for r in rows}

    async def ops_since(self, doc: str, rev: int) -> list[StoredOp]:
        rows = await (self._held.get(doc) or self.pool).fetch(
            "SELECT o.rev, o.op, o.client, o.op_id, coalesce(a.name, '') AS name, coalesce(o.at, 0) AS at "
            "FROM collab_ops o LEFT JOIN collab_authors a ON a.id = o.author WHERE o.doc = $1 AND o.rev > $2 ORDER BY o.rev",
            doc, rev,
        )
        return [StoredOp(r["rev"], _loads(r["op"]), r["client"], r["op_id"], r["name"], r["at"]) for r in rows]

    async def revisions(self, docs: list[str]) -> dict[str, int]:
        rows = await self.pool.fetch("SELECT id, rev FROM collab_docs WHERE id = ANY($1::text[])", docs)
        return {r["id"]: r["rev"] for r in rows}

    async def list_docs(self, limit: int | None = None, after: ListPosition | None = None) -> list[DocInfo]:
        rows = await self.pool.fetch(
            f"SELECT {_DOC_COLUMNS} FROM collab_docs WHERE rev > 0 AND deleted IS NULL "
            "AND ($2::float8 IS NULL OR updated < $2 OR (updated = $2 AND id > $3)) "
            "ORDER BY updated DESC, id LIMIT $1",
            limit, None if after is None else after.updated, None if after is None else after.id)
        return [DocInfo(*r) for r in rows]

    async def text_at(self, doc: str, rev: int) -> str:
        return await self._history.text_at(doc, rev)

    async def sessions(self, doc: str, before: int | None = None, limit: int = 50) -> list[history.Session]:
        return await self._history.sessions(doc, before, limit)

    async def authorship(self, doc: str, rev: int | None = None) -> list[dict]:
        return await self._history.authorship(doc, rev)

    async def thin(self, before: float) -> int:
        return await self._history.thin(before)

    def leases(self) -> Any:
        from .pglease import Leases

        return Leases(self.dsn, self.schema or "")

    async def cluster_key(self) -> bytes:
        """The deployment's key: the first process to ask makes it; everyone reads the one that was kept."""
        from ..seal import new_key

        async with self.pool.acquire() as conn:
            await conn.execute("INSERT INTO collab_cluster (id, key) VALUES (1, $1) ON CONFLICT (id) DO NOTHING",
                               new_key())
            return bytes(await conn.fetchval("SELECT key FROM collab_cluster WHERE id = 1"))

    async def ping(self) -> None:
        await self.pool.fetchval("SELECT 1")

    # -- credentials ----------------------------------------------------------

    async def put_credential(self, cred: Credential) -> Credential:
        """One writer at a time (an advisory lock until commit), so rows commit in ``seq`` order and a
        process reading ``seq > n`` never skips a row that commits later with a smaller ``seq``."""
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.collab_credentials'))")
                row = await self._put_credential(conn, cred)
        return Credential(*row)

    @staticmethod
    async def _put_credential(conn: Any, cred: Credential) -> Any:
        return await conn.fetchrow(
            f"INSERT INTO collab_credentials ({_CRED_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, "
            "nextval('collab_credentials_seq')) ON CONFLICT (id) DO UPDATE SET doc = EXCLUDED.doc, "
            "role = EXCLUDED.role, issued = EXCLUDED.issued, expires = EXCLUDED.expires, name = EXCLUDED.name, "
            f"revoked = EXCLUDED.revoked, seq = EXCLUDED.seq RETURNING {_CRED_COLUMNS}",
            cred.id, cred.doc, cred.role, cred.issued, cred.expires, cred.name, cred.revoked,
        )

    async def get_credential(self, cred_id: str) -> Credential | None:
        row = await self.pool.fetchrow(f"SELECT {_CRED_COLUMNS} FROM collab_credentials WHERE id = $1", cred_id)
        return Credential(*row) if row else None

    async def doc_credentials(self, doc: str) -> list[Credential]:
        rows = await self.pool.fetch(
            f"SELECT {_CRED_COLUMNS} FROM collab_credentials WHERE doc = $1 ORDER BY issued, id", doc)
        return [Credential(*r) for r in rows]

    async def credential_changes(self, after_seq: int) -> list[Credential]:
        rows = await self.pool.fetch(
            f"SELECT {_CRED_COLUMNS} FROM collab_credentials WHERE seq > $1 ORDER BY seq", after_seq)
        return [Credential(*r) for r in rows]

    async def prune_credentials(self, expired_before: float) -> int:
        status = await self.pool.execute(
            "DELETE FROM collab_credentials WHERE expires IS NOT NULL AND expires < $1", expired_before)
        return int(status.split()[-1])

    # -- the trash -------------------------------------------------------------

    async def set_deleted(self, doc: str, when: float | None) -> bool:
        if when is None:
            moved = await self.pool.fetchval(_BUMPING.format(
                "UPDATE collab_docs SET deleted = NULL WHERE id = $1 AND deleted IS NOT NULL RETURNING id"), doc)
        else:
            moved = await self.pool.fetchval(_BUMPING.format(
                "UPDATE collab_docs SET deleted = $2 WHERE id = $1 AND deleted IS NULL AND rev > 0 RETURNING id"),
                doc, when)
        return moved > 0

    async def trash(self) -> list[DocInfo]:
        rows = await self.pool.fetch(
            f"SELECT {_DOC_COLUMNS} FROM collab_docs WHERE deleted IS NOT NULL ORDER BY deleted DESC")
        return [DocInfo(*r) for r in rows]

    async def purge(self, deleted_before: float, keep: set[str]) -> list[str]:
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                ids = await conn.fetch(
                    "DELETE FROM collab_docs WHERE deleted IS NOT NULL AND deleted < $1 AND NOT (id = ANY($2::text[])) "
                    "RETURNING id", deleted_before, sorted(keep))
                gone = [r["id"] for r in ids]
                for table in _DOC_TABLES:
                    await conn.execute(f"DELETE FROM {table} WHERE doc = ANY($1::text[])", gone)
                if gone:
                    await conn.execute(_BUMP)
        for doc in gone:
            self._history.authorship_cache.forget(doc)
        return gone

    # -- titles and names -----------------------------------------------------

    async def set_title(self, doc: str, title: str | None) -> bool:
        status = await self.pool.execute("UPDATE collab_docs SET title = $2 WHERE id = $1 AND rev > 0", doc, title)
        return status != "UPDATE 0"

    async def title(self, doc: str) -> str | None:
        return await self.pool.fetchval("SELECT title FROM collab_docs WHERE id = $1", doc)

    async def heading(self, doc: str) -> str | None:
        return await self.pool.fetchval("SELECT heading FROM collab_docs WHERE id = $1", doc)

    async def set_heading(self, doc: str, heading: str | None) -> None:
        await self.pool.execute(
            "UPDATE collab_docs SET heading = $2 WHERE id = $1 AND heading IS DISTINCT FROM $2", doc, heading)

    async def rename(self, old: str, new: str) -> str:
        """In one transaction, the two rows locked in name order (as appends lock them) so that
        no append to either document runs in between."""
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                rows = await conn.fetch("SELECT id, rev, deleted FROM collab_docs WHERE id = ANY($1::text[]) "
                                        "ORDER BY id FOR UPDATE", [old, new])
                found = {r["id"]: r for r in rows}
                if old not in found or found[old]["rev"] == 0 or found[old]["deleted"] is not None:
                    return "missing"
                if new in found and (found[new]["rev"] > 0 or found[new]["deleted"] is not None):
                    return "taken"
                await conn.execute("DELETE FROM collab_docs WHERE id = $1", new)  # a row exclusive() left at 0
                await conn.execute("UPDATE collab_docs SET id = $2 WHERE id = $1", old, new)
                for table in _DOC_TABLES:
                    await conn.execute(f"UPDATE {table} SET doc = $2 WHERE doc = $1", old, new)
                await conn.execute("DELETE FROM collab_renames WHERE old = $1", new)
                await conn.execute("UPDATE collab_renames SET new = $2 WHERE new = $1", old, new)
                await conn.execute("INSERT INTO collab_renames (old, new, renamed) VALUES ($1, $2, $3) "
                                   "ON CONFLICT (old) DO UPDATE SET new = EXCLUDED.new, renamed = EXCLUDED.renamed",
                                   old, new, time.time())
                await conn.execute(_BUMP)
        self._history.authorship_cache.forget(old)
        self._history.authorship_cache.forget(new)
        return "ok"

    async def renames(self) -> dict[str, str]:
        return {r["old"]: r["new"] for r in await self.pool.fetch("SELECT old, new FROM collab_renames")}

    async def lifecycle_version(self) -> int | None:
        return await self.pool.fetchval("SELECT version FROM collab_lifecycle WHERE id = 1")


_CRED_COLUMNS = "id, doc, role, issued, expires, name, revoked, seq"
_DOC_COLUMNS = "id, rev, size, updated, deleted, coalesce(title, heading), bytes"
#: Moves the trash's and the names' version (see ``lifecycle_version``), in the transaction of their change.
_BUMP = "UPDATE collab_lifecycle SET version = version + 1 WHERE id = 1"
#: One statement for a change of one document's row that moves the version if it changed anything:
#: ``{}`` is an ``UPDATE ... RETURNING``; the statement returns how many rows it changed.
_BUMPING = ("WITH changed AS ({}), bumped AS (" + _BUMP + " AND EXISTS (SELECT 1 FROM changed)) "
            "SELECT count(*) FROM changed")
_DOC_TABLES = ("collab_ops", "collab_op_ids", "collab_snapshots", "collab_checkpoints", "collab_sessions",
               "collab_credentials")
