"""The storage interface every store implements, and the types that cross it."""

from __future__ import annotations

import abc
import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, AsyncContextManager, AsyncIterator, Callable

from .. import ot

if TYPE_CHECKING:
    from .history import Session

try:  # orjson is a dependency; the pure-Python fallback keeps working without it.
    import orjson as _orjson
except ImportError:  # pragma: no cover
    _orjson = None


def dump_op(op: ot.Operation) -> str:
    """An operation as compact JSON text, for a store's op column."""
    return _orjson.dumps(op).decode() if _orjson is not None else json.dumps(op, ensure_ascii=False, separators=(",", ":"))


def load_op(text: str | bytes) -> ot.Operation:
    """The inverse of :func:`dump_op`."""
    return _orjson.loads(text) if _orjson is not None else json.loads(text)


@dataclass(slots=True)
class StoredOp:
    """One applied operation: revision ``rev`` turned ``rev - 1`` into ``rev``.

    Treat as immutable. Not ``frozen``: a frozen dataclass's ``__init__`` is
    several times slower, and one is made for every operation.
    """

    rev: int
    op: ot.Operation
    client: str
    id: str
    #: Who made it: the token's name, else the name the client joined with ("" if none).
    name: str = ""
    #: The server's clock when it was committed (Unix time; 0 where a store did not record it).
    time: float = 0.0

    def to_json(self) -> dict:
        return {"rev": self.rev, "op": self.op, "client": self.client, "id": self.id}


@dataclass(slots=True)
class DocState:
    """What a store knows of a document when it is loaded.

    ``history`` holds the kept operations in ascending order, the last one at
    ``rev``; it may be empty (a new document, or one compacted to its snapshot).
    """

    rev: int = 0
    text: str = ""
    history: list[StoredOp] = field(default_factory=list)


def replay(doc: str, snap_rev: int, text: str, ops: list[StoredOp], rev: int, history_depth: int) -> DocState:
    """The state at ``rev``: the snapshot at ``snap_rev`` with the logged ops after it applied.

    ``ops`` are the logged ops read for the load (ascending; those up to the
    snapshot only fill the kept history). Raises if the log has a gap or
    stops short of ``rev``: a damaged store must not be served as if whole.
    """
    current = snap_rev
    for entry in ops:
        if entry.rev <= snap_rev:
            continue
        if entry.rev != current + 1:
            raise RuntimeError(f"document {doc!r}: the log has a gap after revision {current}")
        text = ot.apply(text, entry.op)
        current = entry.rev
    if current != rev:
        raise RuntimeError(f"document {doc!r}: the log ends at {current} but the document is at {rev}")
    return DocState(rev, text, [o for o in ops if o.rev > rev - history_depth])


@dataclass(frozen=True, slots=True)
class DocInfo:
    """A row of the document list."""

    id: str
    rev: int
    size: int
    updated: float
    deleted: float | None = None  # in the trash since (Unix time)
    title: str | None = None  # set by hand, else the first heading as last recorded
    nbytes: int | None = None  # the length in bytes of UTF-8; None until its first append since the upgrade

    def to_json(self) -> dict:
        out = {"id": self.id, "rev": self.rev, "size": self.size, "bytes": self.nbytes, "updated": self.updated,
               "title": self.title}
        if self.deleted is not None:
            out["deleted"] = self.deleted
        return out


@dataclass(frozen=True, slots=True)
class ListPosition:
    """Where a page of the document list ended: the list is ordered by ``updated`` (newest first), then ``id``."""

    updated: float
    id: str

    @classmethod
    def of(cls, info: DocInfo) -> "ListPosition":
        return cls(info.updated, info.id)


@dataclass(frozen=True, slots=True)
class Credential:
    """What a store keeps of one token or share link, by its id (the token's ``jti``).

    Share links are recorded when minted (so a document's links can be
    listed); any other token gets a row when it is revoked or its role
    changed. ``seq`` orders changes: processes sharing a store read the rows
    whose ``seq`` is past the last they saw.
    """

    id: str
    doc: str | None  # the one document of a share link; None for other tokens
    role: str  # the role it grants now: lowered by a role change
    issued: float
    expires: float | None
    name: str | None = None  # who made the link (the sharer's token's name), when known
    revoked: float | None = None  # Unix time it was revoked
    seq: int = 0

    def to_json(self) -> dict:
        return {"id": self.id, "doc": self.doc, "role": self.role, "issued": self.issued, "expires": self.expires,
                "by": self.name, "revoked": self.revoked}


class RevisionConflict(Exception):
    """Another process committed at one of these revisions first.

    Only stores shared by several processes raise it; the hub then loads what
    it missed, transforms its batch past it and tries again.
    """


class StoreFailed(RuntimeError):
    """The store can no longer vouch for what it holds (an fsync failed): it refuses every
    append and read until the server is restarted."""


class Store(abc.ABC):
    """Durable storage of documents. Every method is safe to await from the event loop."""

    #: True when several processes may append to one document (PostgreSQL).
    may_conflict: bool = False
    #: True when the hub may queue a document's next append before the previous one
    #: returns: the store commits appends in the order they were made, and refuses
    #: (``RevisionConflict``) one that does not continue its document's log, so a
    #: refused append can never leave a hole behind the ones queued after it.
    pipelined: bool = False
    #: True when an append is also refused (``RevisionConflict``) if one of its op ids was
    #: applied before: the hub then looks op ids up only to answer a refused batch, not before
    #: every batch of a document longer than its kept history (whose ids are almost always new).
    fences_op_ids: bool = False

    async def open(self) -> None:
        """Connect and create or migrate the schema."""

    async def close(self) -> None:
        """Finish pending writes and release resources."""

    @abc.abstractmethod
    async def load(self, doc: str, history_depth: int) -> DocState:
        """The document's current text and revision, with up to ``history_depth`` recent ops."""

    @abc.abstractmethod
    async def append(self, doc: str, ops: list[StoredOp], size: int, snapshot: tuple[int, str] | None = None,
                     nbytes: int | None = None) -> None:
        """Durably append ``ops`` (consecutive revisions) before returning.

        ``size`` is the document's length after the last op in code points,
        ``nbytes`` in bytes of UTF-8 (``None``: unknown), for the list;
        ``snapshot`` is ``(rev, text)`` to store as a new snapshot. Raises
        :class:`RevisionConflict` if one of the revisions is already taken.
        """

    def start_append(self, doc: str, ops: list[StoredOp], size: int, snapshot: tuple[int, str] | None = None,
                     on_done: "Callable[[asyncio.Future[None]], object] | None" = None,
                     nbytes: int | None = None) -> "asyncio.Future[None]":
        """Start :meth:`append` and return its future at once.

        ``on_done(future)`` is called once the future is done: as one of its
        done callbacks here; a pipelined store may call it sooner, straight
        from where it settles the future.
        """
        fut = asyncio.ensure_future(self.append(doc, ops, size, snapshot, nbytes))
        if on_done is not None:
            fut.add_done_callback(on_done)
        return fut

    def leases(self) -> "Any":
        """This process's document leases (``collab.store.pglease.Leases``, not yet open), or ``None``.

        Only a store shared by processes has them (see ``docs/cluster.md``).
        """
        return None

    async def cluster_key(self) -> bytes | None:
        """The key the processes sharing this store seal their announcements with (see
        :mod:`collab.seal`), made on first use; ``None`` where processes do not share the store."""
        return None

    def forget(self, doc: str) -> None:
        """The hub closed ``doc``: drop what is cached in memory for it (the default caches nothing)."""

    @abc.abstractmethod
    async def find_op(self, doc: str, op_id: str) -> int | None:
        """The revision at which op ``op_id`` was applied, if it ever was."""

    async def find_ops(self, doc: str, op_ids: list[str]) -> dict[str, int]:
        """The revisions of those of ``op_ids`` that were applied (one query where the store can)."""
        found = {}
        for op_id in op_ids:
            rev = await self.find_op(doc, op_id)
            if rev is not None:
                found[op_id] = rev
        return found

    @abc.abstractmethod
    async def ops_since(self, doc: str, rev: int) -> list[StoredOp]:
        """Every kept operation after ``rev``, ascending (for filling gaps). Ops of packed history
        (behind what loading and resuming read) come without their ``id``: look ids up with :meth:`find_op`."""

    @abc.abstractmethod
    async def list_docs(self, limit: int | None = None, after: ListPosition | None = None) -> list[DocInfo]:
        """The documents with at least one operation, most recently changed first (then by name): at most
        ``limit`` of them (``None``: all), those after ``after`` (one page's end, to read the next)."""

    async def revisions(self, docs: list[str]) -> dict[str, int]:
        """The committed revision of each of ``docs`` that has one (absent: revision 0).

        Processes sharing a store poll this to notice an operation whose
        announcement they missed; stores shared by processes override it
        with one cheap query.
        """
        wanted = set(docs)
        return {d.id: d.rev for d in await self.list_docs() if d.id in wanted}

    # -- history (see :mod:`collab.store.history`) ----------------------------------

    async def text_at(self, doc: str, rev: int) -> str:
        """The text of ``doc`` at revision ``rev``, rebuilt from the nearest checkpoint.

        Raises :class:`~collab.store.history.NoSuchDocument`, ``RevisionAhead``
        (beyond the committed head) or ``RevisionGone`` (thinned away).
        """
        raise NotImplementedError

    async def sessions(self, doc: str, before: int | None = None, limit: int = 50) -> "list[Session]":
        """``doc``'s editing sessions ending before revision ``before``, newest first, authors by name."""
        raise NotImplementedError

    async def authorship(self, doc: str, rev: int | None = None) -> list[dict]:
        """``[{"start", "end", "author"}]`` covering the text at ``rev`` (``None``: the head), in code points."""
        raise NotImplementedError

    async def thin(self, before: float) -> int:
        """Thin the history of sessions that ended before ``before`` (Unix time) to one checkpoint each;
        returns how many sessions were thinned (``COLLAB_HISTORY_RETAIN``)."""
        return 0

    async def maintain(self) -> int:
        """Bring the history's upkeep up to date now (authorship runs at checkpoints, packing where the
        store packs); returns how many ops were packed. Stores also do this by themselves."""
        return 0

    async def ping(self) -> None:
        """Raise if the store cannot serve (used by ``/healthz``)."""

    def health(self) -> str | None:
        """``None`` while the store is healthy, else why not, in one line (``/healthz`` answers 503 with it).

        Cheap and synchronous: for example a failed fsync (the store has
        stopped; restart the server), or an fsync outstanding for too long
        (a disk that does not answer).
        """
        return None

    # -- credentials (see :class:`Credential`) --------------------------------------

    async def put_credential(self, cred: Credential) -> Credential:
        """Record ``cred`` (insert, or replace the row with its id), durably; returns it with its new ``seq``."""
        raise NotImplementedError(f"{type(self).__name__} does not keep credentials")

    async def get_credential(self, cred_id: str) -> Credential | None:
        """The row of ``cred_id``, if any."""
        raise NotImplementedError(f"{type(self).__name__} does not keep credentials")

    async def doc_credentials(self, doc: str) -> list[Credential]:
        """The share links recorded for ``doc``, oldest first."""
        raise NotImplementedError(f"{type(self).__name__} does not keep credentials")

    async def credential_changes(self, after_seq: int) -> list[Credential]:
        """Every row changed after ``after_seq`` (revoked, or its role changed), in ``seq`` order."""
        raise NotImplementedError(f"{type(self).__name__} does not keep credentials")

    async def prune_credentials(self, expired_before: float) -> int:
        """Forget the rows of credentials that expired before ``expired_before`` (refused anyway); how many."""
        raise NotImplementedError(f"{type(self).__name__} does not keep credentials")

    # -- the trash ---------------------------------------------------------------------

    async def set_deleted(self, doc: str, when: float | None) -> bool:
        """Move ``doc`` into the trash at ``when`` (``None``: restore it). False when there was nothing to move:
        no document with an edit, or already in (out of) the trash."""
        raise NotImplementedError(f"{type(self).__name__} has no trash")

    async def trash(self) -> list[DocInfo]:
        """The documents in the trash, most recently deleted first (``list_docs`` leaves them out)."""
        raise NotImplementedError(f"{type(self).__name__} has no trash")

    async def purge(self, deleted_before: float, keep: set[str]) -> list[str]:
        """Remove for good every document deleted before ``deleted_before``, except those in ``keep``."""
        raise NotImplementedError(f"{type(self).__name__} has no trash")

    async def lifecycle_version(self) -> int | None:
        """A number that moves whenever the trash or the renamed names change (a deletion, a restore, a
        purge, a rename), so that a process sharing the store re-reads them only then; ``None``: not kept
        (read them every time)."""
        return None

    # -- titles and names --------------------------------------------------------------

    async def set_title(self, doc: str, title: str | None) -> bool:
        """Set ``doc``'s title by hand (``None``: back to its first heading); False if no such document."""
        raise NotImplementedError(f"{type(self).__name__} keeps no titles")

    async def set_heading(self, doc: str, heading: str | None) -> None:
        """Record ``doc``'s first heading (the title when none was set by hand)."""
        raise NotImplementedError(f"{type(self).__name__} keeps no titles")

    async def title(self, doc: str) -> str | None:
        """``doc``'s title set by hand, ``None`` if none (its first heading stands in)."""
        raise NotImplementedError(f"{type(self).__name__} keeps no titles")

    async def heading(self, doc: str) -> str | None:
        """``doc``'s first heading as last recorded (:meth:`set_heading`), ``None`` if none."""
        raise NotImplementedError(f"{type(self).__name__} keeps no titles")

    async def rename(self, old: str, new: str) -> str:
        """Move ``old`` (text, history, links) to the name ``new`` and leave a redirect behind.

        Returns ``"ok"``, ``"missing"`` (no document ``old`` out of the trash) or
        ``"taken"`` (``new`` has edits, or is in the trash).
        """
        raise NotImplementedError(f"{type(self).__name__} cannot rename")

    async def renames(self) -> dict[str, str]:
        """Every old name and the name it now redirects to."""
        raise NotImplementedError(f"{type(self).__name__} cannot rename")

    def exclusive(self, doc: str) -> AsyncContextManager[None]:
        """Hold ``doc``'s turn: no other process can append to it until the block ends.

        Inside, :meth:`ops_since` and :meth:`append` for ``doc`` see and extend
        the latest state, so an append cannot conflict on a revision. The hub
        uses it to retry after a :class:`RevisionConflict`, which guarantees
        progress on a hot document instead of losing the race again and again.
        Stores with a single writer need nothing: the default holds nothing.
        """
        return _nothing()


@contextlib.asynccontextmanager
async def _nothing() -> AsyncIterator[None]:
    yield
