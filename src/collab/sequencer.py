"""The order of one document's operations, without I/O: revision, kept history, op ids, transforms, positions.

A :class:`Sequencer` is the authority of one document, as ot.js's ``Server``
or prosemirror-collab's authority: given a submit based on some revision, it
transforms the operation through what was applied since, checks it, applies
it to the text and assigns the next revision. It keeps the last
``history_depth`` operations (to transform late submits, resume clients
with ``since`` and move selections), remembers their op ids (a resend is
answered with its first revision, a reused id with new content is refused),
and moves selections between revisions. Plain methods, no asyncio, no
store: the document session (:mod:`collab.document`) decides when to call
them and what is durable.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass
from typing import Iterable, Protocol

from . import ot
from .doctext import DocText
from .protocol import BAD_OP, BAD_REV, STALE_REV, TOO_LARGE, Cursor, ProtocolError, Submit, User
from .store.base import StoredOp


class Positioned(Protocol):
    """Someone with a selection: a local or remote client (the sequencer moves it between revisions)."""

    id: str
    cursor: Cursor | None
    #: The revision :attr:`cursor` is valid at.
    cursor_rev: int


class Author(Positioned, Protocol):
    """The connection that submitted an operation."""

    #: History operations its submits were transformed against.
    transformed: int
    #: Who it joined as (its token's name, else its own); its ops are recorded under ``user.name``.
    user: User | None


@dataclass(slots=True)
class Saved:
    """The sequencer's state before a batch, to roll back to when another process took its revisions."""

    text: DocText
    rev: int
    cursors: list[tuple[Positioned, Cursor | None, int]]


def reused(op_id: str, rev: int) -> ProtocolError:
    """The refusal of an op id already used for a different operation."""
    return ProtocolError(
        BAD_OP, f"operation id {op_id!r} was already used for a different operation (applied at revision {rev}); "
        "send each new operation with a fresh id", op_id)


class Sequencer:
    """Revision, text and kept history of one document; orders submits into them."""

    def __init__(self, rev: int, text: str, history: list[StoredOp], history_depth: int, max_chars: int) -> None:
        self.text = DocText(text)
        self.rev = rev
        #: Kept operations, ``history[i].rev == history_start + 1 + i``.
        self.history: deque[StoredOp] = deque(history)
        self.history_start = rev - len(self.history)
        #: Op id -> revision, for every op in :attr:`history`.
        self.ids: dict[str, int] = {o.id: o.rev for o in history}
        self.history_depth = history_depth
        #: :meth:`trim` waits until this many ops are past the depth, then drops them together:
        #: what it costs (moving the selections about to lose their ops) is paid once per chunk.
        self.trim_every = max(1, history_depth // 32)
        self.max_chars = max_chars

    # -- ordering submits ------------------------------------------------------

    def apply(self, sub: Submit, author: Author | None) -> StoredOp | int:
        """Order one submit: returns the new entry, or the revision of an earlier application of its id.

        Raises :class:`ProtocolError` for a refused submit (nothing changes then).
        """
        op_id, base, rev = sub.id, sub.rev, self.rev
        known = self.ids.get(op_id)
        if known is not None:
            if not self.is_resend(sub, known):
                raise reused(op_id, known)
            return known
        if base > rev:
            raise ProtocolError(BAD_REV, f"'rev' is {base} but the document is at revision {rev}", op_id)
        if base < self.history_start:
            raise ProtocolError(STALE_REV, f"revision {base} is older than the kept history; rejoin", op_id)
        op = sub.op
        cursor = sub.cursor
        text = self.text
        size = len(text)
        if base == rev:
            spans, new_len = sub.lengths or ot.lengths(op)
            if spans != size:
                raise ProtocolError(BAD_OP, f"operation spans {spans} characters but revision {base} has {size}", op_id)
        else:
            concurrent = self.after(base)
            expected = ot.base_length(concurrent[0].op)
            spans = ot.base_length(op)
            if spans != expected:
                raise ProtocolError(BAD_OP, f"operation spans {spans} characters but revision {base} has {expected}", op_id)
            if author is not None:
                author.transformed += len(concurrent)
            for entry in concurrent:
                op, other = ot.transform(op, entry.op)
                if cursor is not None:
                    cursor = Cursor(*ot.transform_cursor(cursor.anchor, cursor.head, other))
            new_len = ot.target_length(op)
        if new_len > size and new_len > self.max_chars:
            raise ProtocolError(
                TOO_LARGE, f"the document would have {new_len} characters; the limit is {self.max_chars}", op_id
            )
        text.apply(op)
        self.rev = rev = rev + 1
        if author is not None:
            user = author.user
            entry = StoredOp(rev, op, author.id, op_id, sub.author or (user.name if user is not None else ""))
        else:
            entry = StoredOp(rev, op, "server", op_id, sub.author)
        # Trimmed to history_depth only once committed (see trim), so a conflict can roll back.
        self.history.append(entry)
        self.ids[op_id] = rev
        if author is not None:  # everyone else's selection moves lazily (cursor_now)
            if cursor is not None and (cursor.anchor > new_len or cursor.head > new_len):
                cursor = Cursor(min(cursor.anchor, new_len), min(cursor.head, new_len))
            author.cursor, author.cursor_rev = cursor, rev
        return entry

    def is_resend(self, sub: Submit, rev: int) -> bool:
        """Whether ``sub`` is the op applied at ``rev`` (same id) sent again, as is or rebased.

        A client resends its unacknowledged op with the same id, on its
        original base or rebased onto the revisions it saw since (never one
        at or after ``rev``, which it would have taken as its ack). So ``sub``
        transformed up to ``rev - 1`` is the applied op. When ``sub``'s base is
        no longer kept, only the id can be compared, and it is taken as a resend.
        """
        base, start = sub.rev, self.history_start
        if base < start:
            return True
        if base >= rev:
            return False
        history = self.history
        op = sub.op
        if ot.base_length(op) != ot.base_length(history[base - start].op):
            return False
        try:
            for i in range(base - start, rev - start - 1):
                op = ot.transform(op, history[i].op)[0]
        except ValueError:
            return False
        return op == history[rev - start - 1].op

    def knows(self, op_id: str) -> bool:
        """Whether op ``op_id`` is in the kept history."""
        return op_id in self.ids

    def integrate(self, entry: StoredOp) -> None:
        """Apply an operation committed elsewhere at the next revision; raises ``ValueError`` if it does not fit."""
        if entry.rev != self.rev + 1:
            raise ValueError(f"revision {entry.rev} does not follow {self.rev}")
        self.text.apply(entry.op)
        self.rev = entry.rev
        self.history.append(entry)
        self.ids[entry.id] = entry.rev

    def after(self, rev: int) -> list[StoredOp]:
        """The kept operations after revision ``rev`` (which must be kept), oldest first.

        Read from whichever end of the deque is nearer: a submit is usually a
        few revisions behind, and the history is long.
        """
        skip = rev - self.history_start
        count = len(self.history) - skip
        if count <= skip:
            newest = list(itertools.islice(reversed(self.history), count))
            newest.reverse()
            return newest
        return list(itertools.islice(self.history, skip, None))

    def entry(self, rev: int) -> StoredOp:
        """The kept operation that made revision ``rev``."""
        return self.history[rev - self.history_start - 1]

    # -- history ---------------------------------------------------------------------

    def trim(self, holders: Iterable[Positioned]) -> None:
        """Keep about ``history_depth`` operations (after a commit; at most :attr:`trim_every` - 1 more);
        selections about to lose their ops move first."""
        excess = len(self.history) - self.history_depth
        if excess < self.trim_every:
            return
        new_start = self.history[excess - 1].rev
        for p in holders:
            if p.cursor is not None and p.cursor_rev < new_start:
                self.cursor_now(p)  # move it while the ops it needs are still kept
        popleft, forget = self.history.popleft, self.ids.pop
        for _ in range(excess):
            forget(popleft().id, None)
        self.history_start = new_start

    def save(self, holders: Iterable[Positioned]) -> Saved:
        """The state to :meth:`rollback` to if the next batch loses its revisions."""
        return Saved(self.text.copy(), self.rev, [(p, p.cursor, p.cursor_rev) for p in holders])

    def rollback(self, saved: Saved) -> None:
        """Undo the operations applied since :meth:`save`, selections included.

        The history may have been trimmed at its start meanwhile (an earlier batch landed while this
        one was in flight): what is undone is the operations after the saved revision, however many
        are kept before them.
        """
        history, ids = self.history, self.ids
        while history and history[-1].rev > saved.rev:
            ids.pop(history.pop().id, None)
        self.history_start = min(self.history_start, saved.rev)  # (trimmed past it: nothing older is kept)
        self.text = saved.text
        self.rev = saved.rev
        for p, cursor, rev in saved.cursors:
            p.cursor, p.cursor_rev = cursor, rev

    # -- positions ------------------------------------------------------------------

    def move_cursor(self, cursor: Cursor | None, rev: int) -> Cursor | None:
        """``cursor``, valid at ``rev``, in current coordinates (``None`` if ``rev`` is out of the kept history)."""
        if cursor is None or rev < self.history_start or rev > self.rev:
            return None
        anchor, head = cursor.anchor, cursor.head
        if anchor == head:  # a caret, the usual case: one call per op
            transform_index = ot.transform_index
            for entry in self.after(rev):
                anchor = transform_index(anchor, entry.op)
            head = anchor
        else:
            for entry in self.after(rev):
                anchor, head = ot.transform_cursor(anchor, head, entry.op)
        size = len(self.text)
        return Cursor(min(anchor, size), min(head, size))

    def cursor_now(self, p: Positioned) -> Cursor | None:
        """``p``'s selection in current coordinates.

        Selections are moved through applied operations only when read (here),
        not on every operation for every client: the per-op cost does not grow
        with the number of people on the document. :meth:`trim` reads the
        ones that would otherwise fall out of the kept history.
        """
        if p.cursor is not None and p.cursor_rev != self.rev:
            p.cursor = self.move_cursor(p.cursor, p.cursor_rev)
        p.cursor_rev = self.rev
        return p.cursor
