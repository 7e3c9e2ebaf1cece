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
import re
import time
import zlib
from dataclasses import dataclass, field
from typing import Iterable

from .. import ot
from ..doctext import DocText
from .base import StoredOp, dump_op, load_op

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
    s = open_session
    closed = None
    first = ops[0].rev
    if s is None or now - s.end > gap or s.last != first - 1:
        closed = s
        s = Session(first, first, now, now, [], 0, 0)
    elif not in_place:  # a copy: a commit that fails must leave the open session as it was
        s = Session(s.first, s.last, s.start, s.end, list(s.authors), s.inserted, s.deleted)
    ins = dels = 0
    for o in ops:  # counts(), inlined: this runs for every commit
        for c in o.op:
            if type(c) is str:
                ins += len(c)
            elif c < 0:  # type: ignore[operator]
                dels -= c  # type: ignore[operator]
    s.last, s.end = ops[-1].rev, now
    s.inserted += ins
    s.deleted += dels
    known = s.authors
    for a in authors:
        if a not in known:
            known.append(a)
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

_RUN = re.compile(r"(.)\1*", re.DOTALL)


class AuthorText:
    """Authorship as a text of marker code points, one per author, moved by each op as the text is.

    Inserted text becomes the author's marker repeated; kept text keeps its
    markers. A :class:`DocText` does the moving, so an op costs about what
    applying it to the document does, however many runs there are (editing
    a list of runs costs a copy of the list per op).
    """

    __slots__ = ("keys", "marks", "text")

    def __init__(self, runs: Runs) -> None:
        self.keys: list = []
        self.marks: dict = {}
        self.text = DocText("".join(self.mark(who) * n for n, who in runs))

    def mark(self, who: object) -> str:
        """The marker code point of author ``who`` (any hashable key: a label, or a store's author id)."""
        m = self.marks.get(who)
        if m is None:
            if len(self.keys) >= 0x110000:
                raise HistoryError("too many authors in one document's history to track")
            m = self.marks[who] = chr(len(self.keys))
            self.keys.append(who)
        return m

    def apply(self, op: ot.Operation, who: object) -> None:
        m = self.mark(who)
        self.text.apply([c if type(c) is int else m * len(c) for c in op])

    def runs(self) -> Runs:
        keys = self.keys
        return [[m.end() - m.start(), keys[ord(m.group(1))]] for m in _RUN.finditer(str(self.text))]


def move_runs(runs: Runs, ops: Iterable[StoredOp]) -> Runs:
    """``runs`` after ``ops`` (consecutive, by their labels)."""
    t = AuthorText(runs)
    for o in ops:
        t.apply(o.op, label(o.name, o.client))
    return t.runs()


def sole_runs(runs: Runs, ops: list[StoredOp], length: int) -> Runs | None:
    """The runs after ``ops`` without replaying them, when that is known for free: every op is by the
    author who wrote all of ``runs`` (or there was no text); ``None`` otherwise. ``length``: the text's after."""
    if not ops:
        return [list(r) for r in runs]
    o = ops[0]
    name, client = o.name, o.client
    who = label(name, client)
    if any(r[1] != who for r in runs):
        return None
    for o in ops:
        if o.client != client or o.name != name:
            return None
    return [[length, who]] if length else []


def dump_runs(runs: Runs) -> bytes:
    """Runs as stored with a checkpoint: each author once, then (length, author index) pairs, compressed."""
    keys = list(dict.fromkeys(who for _, who in runs))
    index = {k: i for i, k in enumerate(keys)}
    flat = [x for n, who in runs for x in (n, index[who])]
    return zlib.compress(dump_op({"a": keys, "r": flat}).encode("utf-8", "surrogatepass"), 6)


def load_runs(data: bytes) -> Runs:
    """The inverse of :func:`dump_runs`; also reads the plain ``[[length, author], ...]`` of thinned checkpoints."""
    v = load_op(zlib.decompress(data))
    if isinstance(v, list):
        return v
    keys, flat = v["a"], v["r"]
    return [[flat[i], keys[flat[i + 1]]] for i in range(0, len(flat), 2)]


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
        t = AuthorText(runs)
        current = base
        for o in ops:
            if o.rev <= current:
                continue
            if o.rev > rev:
                break
            if o.rev != current + 1:
                raise RevisionGone(f"the authorship of revision {rev} of {doc!r} is no longer kept")
            t.apply(o.op, label(o.name, o.client))
            current = o.rev
            if current % self.every == 0:
                self.add(doc, current, t.runs())
        if current != rev:
            raise RevisionGone(f"the authorship of revision {rev} of {doc!r} is no longer kept")
        return t.runs()


def now() -> float:
    """The server's clock, for commit times."""
    return time.time()
