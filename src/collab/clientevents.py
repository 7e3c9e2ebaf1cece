"""What the client state machine holds and reports: cursors, peers,
pending operations, and the events its driver reacts to.

Plain dataclasses with no behaviour beyond small views, shared by
:mod:`collab.clientstate` (which produces them) and :mod:`collab.client`
(the asyncio driver that consumes them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import ot
from .ot import Operation

__all__ = [
    "Cursor",
    "Peer",
    "Pending",
    "Resolve",
    "Event",
    "Welcomed",
    "Changed",
    "Acked",
    "Refused",
    "ServerError",
    "PeersChanged",
    "ReconnectNeeded",
    "RetryLater",
    "TooLarge",
    "cursor_from_wire",
    "cursor_to_wire",
    "move_cursor",
]

#: A selection ``(anchor, head)`` in code points.
Cursor = tuple[int, int]


def cursor_from_wire(value: Any) -> Cursor | None:
    """``{"anchor", "head"}`` from the wire, or ``None`` when absent or malformed."""
    if isinstance(value, dict):
        a, h = value.get("anchor"), value.get("head")
        if type(a) is int and type(h) is int:
            return (a, h)
    return None


def cursor_to_wire(cursor: Cursor | None) -> dict[str, int] | None:
    return None if cursor is None else {"anchor": cursor[0], "head": cursor[1]}


def move_cursor(cursor: Cursor | None, *ops: Operation | None) -> Cursor | None:
    """Move a selection through ``ops`` in order (``None`` entries skipped)."""
    if cursor is None:
        return None
    a, h = cursor
    for op in ops:
        if op:
            a, h = ot.transform_cursor(a, h, op)
    return (a, h)


@dataclass
class Peer:
    """Another client on the document; ``cursor`` is in current local-text coordinates."""

    client: str
    user: dict | None = None
    cursor: Cursor | None = None

    @property
    def name(self) -> str | None:
        return (self.user or {}).get("name") if isinstance(self.user, dict) else None


@dataclass
class Pending:
    """An operation sent to the server and not yet acknowledged.

    ``op`` is kept relative to the last known server text (transformed as
    other clients' operations arrive); ``sent_rev``/``sent_op`` are exactly
    what was first sent, for the resend after a long absence.  The rest is
    bookkeeping for edits refused for size: the frame's size in bytes, the
    connection it last went out on, how often it was sent, how many of
    those sends were refused, and abnormal closes that suggest a refusal.
    """

    op: Operation
    id: str
    sent_rev: int
    sent_op: Operation
    nbytes: int = 0
    sent_on: int = 0
    sends: int = 0
    refusals: int = 0
    suspect: int = 0


@dataclass
class Resolve:
    """A snapshot welcome received while an operation was unacknowledged:
    the snapshot, moved forward by the operations arriving after it."""

    text: str
    rev: int


class Event:
    """Base class of what :class:`~collab.clientstate.ClientState` reports to its driver."""


@dataclass
class Welcomed(Event):
    """A ``welcome`` was processed; the session is ready (or resolving a resend)."""

    client: str
    rev: int
    role: str


@dataclass
class Changed(Event):
    """A change not made locally was applied to the local text.

    ``origin`` is the author's client id, or ``None`` for a rebase on a
    snapshot or the rollback of a refused local edit.  ``before`` is the
    text the operation applies to.
    """

    op: Operation
    origin: str | None
    rev: int
    before: str


@dataclass
class Acked(Event):
    """Own operation ``id`` is revision ``rev`` on the server."""

    id: str
    rev: int


@dataclass
class Refused(Event):
    """The server refused own operation ``id``; all unacknowledged local edits were rolled back."""

    code: str
    message: str
    id: str | None


@dataclass
class ServerError(Event):
    """An ``error`` not tied to an own operation (e.g. ``bad_message``)."""

    code: str
    message: str


@dataclass
class PeersChanged(Event):
    """Someone joined, left or moved their cursor."""


@dataclass
class ReconnectNeeded(Event):
    """The driver should drop the connection and join again.

    ``fresh`` means join without ``since`` (the client needs a snapshot).
    """

    reason: str
    fresh: bool = False


@dataclass
class RetryLater(Event):
    """Own operation ``id`` was rate limited; call ``ClientState.resend()`` after a pause."""

    id: str


@dataclass
class TooLarge(Event):
    """The connection was closed because own operation's frame was too large.

    The edit is kept and goes out again in pieces of at most ``limit``
    bytes; ``stuck`` means the limit cannot shrink further (back off).
    """

    code: int
    nbytes: int
    limit: int
    stuck: bool = False
