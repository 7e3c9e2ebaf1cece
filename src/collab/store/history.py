"""A document's kept history, independent of any database: sessions, checkpoints, text and authorship at a revision.

Every store keeps every operation with its author and commit time, plus a
*checkpoint* (the whole text) every so often, so that the text at any
revision is the nearest checkpoint at or before it with at most one
checkpoint interval of operations applied. Consecutive commits with no
pause longer than the session gap form one *editing session*, the unit
the revision list shows and the unit old history is thinned to (see
``COLLAB_HISTORY_RETAIN``): a thinned session keeps its summary and a
checkpoint at its last revision, never less.
"""

from __future__ import annotations

import bisect
import time
import zlib
from dataclasses import dataclass, field
from typing import Iterable

from .. import ot
from ..doctext import DocText
from .base import StoredOp

#: A checkpoint is stored once a document of N code points has had N / this many
#: operations since the previous one: checkpoints cost about this many code points
#: (before compression) per operation, and rebuilding a revision applies at most
#: N / this many operations.
CHECKPOINT_CHARS_PER_OP = 32
#: A pause longer than this (seconds) between two commits starts a new editing session.
SESSION_GAP = 300.0
#: The most sessions one ``revisions`` answer holds.
MAX_SESSIONS = 1000


class HistoryError(Exception):
    """A history read that cannot be answered; ``status`` is the HTTP status that says why."""

    status = 400


class NoSuchDocument(HistoryError):
    status = 404


class RevisionGone(HistoryError):
    """The revision was thinned away by the retention setting (or predates kept history)."""

    status = 410


class RevisionAhead(HistoryError):
    """The revision is beyond the document's committed head."""

    status = 400


@dataclass(slots=True)
class Session:
    """An editing session: revisions ``first``..``last``, committed from ``start`` to ``end`` (Unix time)."""

    first: int
    last: int
    start: float
    end: float
    #: Author keys in order of first edit (names in answers; a store may keep small integers).
    authors: list = field(default_factory=list)
    inserted: int = 0
    deleted: int = 0
    #: Its operations were thinned away (only a checkpoint at ``last`` is left).
    thinned: bool = False

    def to_json(self) -> dict:
        return {"from": self.first, "to": self.last, "start": self.start, "end": self.end,
                "authors": list(self.authors), "inserted": self.inserted, "deleted": self.deleted}


def counts(op: ot.Operation) -> tuple[int, int]:
    """Code points ``op`` inserts and deletes."""
    ins = dels = 0
    for c in op:
        if type(c) is str:
            ins += len(c)
        elif c < 0:
            dels -= c
    return ins, dels


def label(name: str, client: str) -> str:
    """How an author is named in answers: the name it edited under, else its client id."""
    return name or client


def advance(open_session: Session | None, ops: list[StoredOp], authors: list, now: float,
            gap: float = SESSION_GAP, in_place: bool = False) -> tuple[Session, Session | None]:
    """The open session after a commit of ``ops`` (by ``authors``, one key per op) at ``now``,
    and the session it closed, if the pause before this commit was longer than ``gap``.
    ``in_place``: move ``open_session`` itself on (a store that never rolls a commit back)."""
    ins = dels = 0
    for o in ops:
        i, d = counts(o.op)
        ins += i
        dels += d
    s = open_session
    closed = None
    if s is None or now - s.end > gap or s.last != ops[0].rev - 1:
        closed = s
        s = Session(ops[0].rev, ops[-1].rev, now, now, [], 0, 0)
    elif not in_place:  # a copy: a commit that fails must leave the open session as it was
        s = Session(s.first, s.last, s.start, s.end, list(s.authors), s.inserted, s.deleted)
    s.last, s.end = ops[-1].rev, now
    s.inserted += ins
    s.deleted += dels
    for a in dict.fromkeys(authors):
        if a not in s.authors:
            s.authors.append(a)
    return s, closed


def thinnable(sessions: Iterable[Session], before: float, bound: int) -> list[Session]:
    """The closed sessions to thin: ended before ``before``, not thinned yet, and wholly at or
    before revision ``bound`` (what loading and resuming still read is never thinned)."""
    return [s for s in sessions if not s.thinned and s.end < before and s.last <= bound]


def page(sessions: Iterable[Session], before: int | None, limit: int) -> list[Session]:
    """Newest first, those ending before revision ``before`` (``None``: all), at most ``limit``."""
    out = [s for s in sessions if before is None or s.last < before]
    out.sort(key=lambda s: s.first, reverse=True)
    return out[:limit]


def checkpoint_due(last_checkpoint: int, rev: int, length: int) -> bool:
    """Whether a snapshot at ``rev`` of a text of ``length`` code points should be kept as a checkpoint."""
    return rev - last_checkpoint >= max(1, length // CHECKPOINT_CHARS_PER_OP)


def pack(text: str) -> bytes:
    """A checkpoint's text as stored (compressed UTF-8)."""
    return zlib.compress(text.encode("utf-8", "surrogatepass"), 1)


def unpack(data: bytes) -> str:
    return zlib.decompress(data).decode("utf-8", "surrogatepass")


def rebuild(doc: str, base: int, text: str, ops: list[StoredOp], rev: int) -> str:
    """The text at ``rev``: ``text`` (at ``base``) with ``ops`` (ascending, from ``base + 1``) applied.

    Raises :class:`RevisionGone` when the operations between are not all kept.
    """
    current = base
    doc_text = DocText(text)
    for o in ops:
        if o.rev <= current:
            continue
        if o.rev > rev:
            break
        if o.rev != current + 1:
            raise RevisionGone(f"revision {rev} of {doc!r} is no longer kept (its history was thinned)")
        doc_text.apply(o.op)
        current = o.rev
    if current != rev:
        raise RevisionGone(f"revision {rev} of {doc!r} is no longer kept (its history was thinned)")
    return str(doc_text)


def check_rev(doc: str, rev: int, head: int | None) -> None:
    """Raise unless ``rev`` is a revision of ``doc`` (whose head is ``head``, ``None``: no such document)."""
    if head is None or head == 0:
        raise NoSuchDocument(f"there is no document {doc!r}")
    if rev < 0 or rev > head:
        raise RevisionAhead(f"revision {rev} does not exist: {doc!r} is at revision {head}")


# -- authorship -------------------------------------------------------------------

#: Authorship as runs: ``[[length, author], ...]``, adjacent runs of one author merged.
Runs = list


def apply_runs(runs: Runs, op: ot.Operation, author: str) -> Runs:
    """The runs after ``op`` by ``author`` (inserted text is the author's; kept text keeps its author)."""
    out: Runs = []
    k = 0
    left = runs[0][0] if runs else 0

    def put(n: int, who: str) -> None:
        if out and out[-1][1] == who:
            out[-1][0] += n
        else:
            out.append([n, who])

    for c in op:
        if type(c) is str:
            put(len(c), author)
            continue
        n = c if c > 0 else -c
        while n:
            if left == 0:
                k += 1
                left = runs[k][0]
            take = min(n, left)
            if c > 0:
                put(take, runs[k][1])
            n -= take
            left -= take
    if left:
        put(left, runs[k][1])
        k += 1
    elif runs:
        k += 1
    for n, who in runs[k:]:
        put(n, who)
    return out


def unknown_runs(text: str) -> Runs:
    """The runs of ``text`` written before authors were recorded (author "")."""
    return [[len(text), ""]] if text else []


def spans(runs: Runs) -> list[dict]:
    """Runs as ``[{"start", "end", "author"}]`` in code points."""
    out = []
    pos = 0
    for n, who in runs:
        out.append({"start": pos, "end": pos + n, "author": who})
        pos += n
    return out


class AuthorshipCache:
    """Authorship runs at some revisions of recently asked documents, so the next question replays little."""

    def __init__(self, docs: int = 16, every: int = 2000) -> None:
        self.docs = docs
        self.every = every
        self._cache: dict[str, tuple[list[int], list[Runs]]] = {}

    def nearest(self, doc: str, rev: int) -> tuple[int, Runs]:
        revs, runs = self._cache.get(doc, ([], []))
        i = bisect.bisect_right(revs, rev)
        if i == 0:
            return 0, []
        return revs[i - 1], runs[i - 1]

    def add(self, doc: str, rev: int, runs: Runs) -> None:
        if doc not in self._cache and len(self._cache) >= self.docs:
            self._cache.pop(next(iter(self._cache)))
        revs, kept = self._cache.setdefault(doc, ([], []))
        i = bisect.bisect_left(revs, rev)
        if i < len(revs) and revs[i] == rev:
            return
        revs.insert(i, rev)
        kept.insert(i, [list(r) for r in runs])

    def forget(self, doc: str) -> None:
        self._cache.pop(doc, None)

    def replay(self, doc: str, base: int, runs: Runs, ops: list[StoredOp], rev: int) -> Runs:
        """``runs`` (at ``base``) moved to ``rev`` through ``ops``, remembering some on the way."""
        runs = [list(r) for r in runs]
        current = base
        for o in ops:
            if o.rev <= current:
                continue
            if o.rev > rev:
                break
            if o.rev != current + 1:
                raise RevisionGone(f"the authorship of revision {rev} of {doc!r} is no longer kept")
            runs = apply_runs(runs, o.op, label(o.name, o.client))
            current = o.rev
            if current % self.every == 0:
                self.add(doc, current, runs)
        if current != rev:
            raise RevisionGone(f"the authorship of revision {rev} of {doc!r} is no longer kept")
        return runs


def now() -> float:
    """The server's clock, for commit times."""
    return time.time()
