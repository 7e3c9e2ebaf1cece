"""Python client for a collab server: the OT client state machine plus an
asyncio WebSocket layer with automatic reconnect.

Two layers, in the style of python-websockets:

* :class:`ClientState` is *sans-I/O*: it holds the document, the
  unacknowledged operations and the peers, takes parsed server messages and
  local edits as input, and produces messages to send and :class:`Event`
  objects.  It never touches a socket or a clock, so it is unit-testable.
* :class:`Document` drives a :class:`ClientState` over ``websockets``,
  reconnecting with exponential backoff and jitter, and offers the script
  API::

      async with collab.connect("ws://127.0.0.1:8000", "notes", user={"name": "bot"}) as d:
          await d.insert(0, "hello 👋")
          await d.synced()
          print(d.text, d.rev, d.peers)

The state machine is ot.js's ``Client`` (synchronized / awaiting-confirm /
awaiting-with-buffer) extended for reconnects: the join carries ``since`` =
the last server revision known, an own operation found in ``welcome.ops`` (by
``id``) counts as its ``ack``, and an unacknowledged operation is resent with
the same ``id`` so the server never applies it twice.  When the server
answers with a snapshot instead (our revision fell out of its history), the
client follows docs/protocol.md: it resends its oldest unacknowledged
operation with its original ``rev`` and ``id``; ``ack`` means it had been
applied, ``stale_rev`` means it had not; then it rebases the local changes
on the snapshot by diffing the last known server text against it.

Positions are code points (Python ``str`` indexing), as on the wire.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import json
import logging
import random
import re
import secrets
from collections import deque
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable, Union
from urllib.parse import quote, urlsplit, urlunsplit

from . import ot
from .ot import Operation

__all__ = [
    "CollabError",
    "Peer",
    "Pending",
    "Event",
    "Welcomed",
    "Changed",
    "Acked",
    "Refused",
    "ServerError",
    "PeersChanged",
    "ReconnectNeeded",
    "RetryLater",
    "ClientState",
    "Document",
    "Client",
    "connect",
    "diff_op",
    "ws_url",
    "http_url",
]

log = logging.getLogger("collab.client")

Cursor = tuple[int, int]

#: Close codes after which reconnecting cannot help.
PERMANENT_CLOSE_CODES = {
    4001: ("unauthorized", "the server refused the token (missing, invalid or expired); "
           "pass token=... (mint one with `collab token --doc NAME`)"),
    4003: ("forbidden", "the token is valid but does not cover this document; "
           "mint one whose --doc pattern matches it"),
    4004: ("not_found", "no such document, or the name is invalid "
           "(1-128 characters of A-Z a-z 0-9 . _ -, not starting with '.')"),
    1009: ("too_large", "a message was larger than the server's size limit "
           "(COLLAB_MAX_MESSAGE_BYTES); make smaller edits"),
}

_DOC_NAME = re.compile(r"^(?!\.)[A-Za-z0-9._-]{1,128}$")


class CollabError(Exception):
    """Something the server refused or a connection that cannot be used.

    ``code`` is the protocol's error code (``forbidden``, ``too_large``, ...)
    or, for a closed connection, one of ``unauthorized``, ``not_found``,
    ``unreachable``, ``closed``.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


# ---------------------------------------------------------------------------
# Small pure helpers


def diff_op(old: str, new: str) -> Operation:
    """The operation turning ``old`` into ``new`` (code points, normalized).

    Uses diff-match-patch when installed, with a common prefix/suffix diff as
    fallback (and for very large texts, where a fine diff is not worth it).
    """
    if old == new:
        return [len(old)] if old else []
    try:
        if len(old) + len(new) > 2_000_000:
            raise ImportError
        from diff_match_patch import diff_match_patch
    except ImportError:
        return ot.diff_splice(old, new)
    dmp = diff_match_patch()
    dmp.Diff_Timeout = 0.5
    diffs = dmp.diff_main(old, new, False)
    op: Operation = []
    for kind, chunk in diffs:
        if not chunk:
            continue
        if kind == 0:
            op.append(len(chunk))
        elif kind == 1:
            op.append(chunk)
        else:
            op.append(-len(chunk))
    return ot.normalize(op)


def _cursor_from_wire(value: Any) -> Cursor | None:
    if isinstance(value, dict):
        a, h = value.get("anchor"), value.get("head")
        if type(a) is int and type(h) is int:
            return (a, h)
    return None


def _cursor_to_wire(cursor: Cursor | None) -> dict[str, int] | None:
    return None if cursor is None else {"anchor": cursor[0], "head": cursor[1]}


def _move(cursor: Cursor | None, *ops: Operation | None) -> Cursor | None:
    """Move a selection through ``ops`` in order (``None`` entries skipped)."""
    if cursor is None:
        return None
    a, h = cursor
    for op in ops:
        if op:
            a, h = ot.transform_cursor(a, h, op)
    return (a, h)


# ---------------------------------------------------------------------------
# Sans-I/O state machine


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
    what was first sent, for the resend after a long absence.
    """

    op: Operation
    id: str
    sent_rev: int
    sent_op: Operation


class Event:
    """Base class of what :class:`ClientState` reports to its driver."""


@dataclass
class Welcomed(Event):
    """A ``welcome`` was processed; the session is ready (or resolving a resend)."""

    client: str
    rev: int
    role: str


@dataclass
class Changed(Event):
    """A change not made locally was applied to :attr:`ClientState.text`.

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
    """Own operation ``id`` was rate limited; call :meth:`ClientState.resend` after a pause."""

    id: str


@dataclass
class _Resolve:
    """A snapshot welcome received while an operation was unacknowledged."""

    text: str
    rev: int


class ClientState:
    """The OT client of one document, without I/O.

    Inputs: :meth:`connection_made`, :meth:`receive` (a parsed server
    message), :meth:`connection_lost`, :meth:`edit`, :meth:`set_cursor`,
    :meth:`resend`.  Outputs: :meth:`messages_to_send` (dicts to serialize as
    JSON text frames, in order) and :meth:`events_received`.

    Invariants: ``text == apply(apply(server_text, inflight.op), buffer)``;
    ``inflight`` is the one operation on the wire; ``buffer`` is composed
    local edits not sent yet.
    """

    #: Recent server operations kept to move presence sent at older revisions.
    HISTORY = 256

    def __init__(self, user: dict | None = None, *, id_prefix: str | None = None) -> None:
        self.user = user
        self.text = ""
        self.server_text = ""
        self.rev: int | None = None
        self.inflight: Pending | None = None
        self.buffer: Operation | None = None
        self.cursor: Cursor | None = None
        self.peers: dict[str, Peer] = {}
        self.client_id: str | None = None
        self.role: str | None = None
        #: ``disconnected`` -> ``joining`` -> ``ready`` (or ``resolving`` -> ``ready``).
        self.phase = "disconnected"
        self._cursor_dirty = False
        self._fresh_join = False
        self._resolve: _Resolve | None = None
        self._own_clients: set[str] = set()
        self._history: deque[tuple[int, Operation]] = deque(maxlen=self.HISTORY)
        self._prefix = id_prefix or secrets.token_hex(6)
        self._ids = itertools.count(1)
        self._out: list[dict] = []
        self._events: list[Event] = []

    # -- outputs -----------------------------------------------------------

    def messages_to_send(self) -> list[dict]:
        """Messages produced since the last call, oldest first."""
        out, self._out = self._out, []
        return out

    def events_received(self) -> list[Event]:
        """Events produced since the last call, oldest first."""
        ev, self._events = self._events, []
        return ev

    @property
    def synchronized(self) -> bool:
        """True when connected and every local edit is acknowledged."""
        return self.phase == "ready" and self.inflight is None and self.buffer is None

    # -- connection lifecycle ---------------------------------------------

    def connection_made(self) -> None:
        """A socket is open: send ``join`` (resuming after :attr:`rev` if known)."""
        self.phase = "joining"
        self._resolve = None
        since = None if (self.rev is None or self._fresh_join) else self.rev
        # batch: let the server coalesce what is queued for us into one frame (docs/protocol.md).
        msg: dict[str, Any] = {"type": "join", "since": since, "batch": True}
        if self.user is not None:
            msg["user"] = self.user
        self._out.append(msg)

    def connection_lost(self) -> None:
        """The socket closed; local edits keep accumulating until the next join."""
        self.phase = "disconnected"
        self._resolve = None
        if self.peers:
            self.peers.clear()
            self._events.append(PeersChanged())

    # -- local input -------------------------------------------------------

    def edit(self, op: Operation) -> Operation:
        """Apply a local operation (on :attr:`text`) and queue it for the server.

        Raises :class:`ot.InvalidOperation` if it does not fit the text.
        Returns the normalized operation.
        """
        ot.validate(op, len(self.text))
        op = ot.normalize(op)
        if ot.is_noop(op):
            return op
        self.text = ot.apply(self.text, op)
        self.buffer = op if self.buffer is None else ot.compose(self.buffer, op)
        self.cursor = _move(self.cursor, op)
        for peer in self.peers.values():
            peer.cursor = _move(peer.cursor, op)
        self._flush_pending()
        return op

    def set_cursor(self, cursor: Cursor | None) -> None:
        """Set own selection; sent now if nothing is unacknowledged, else with the next op."""
        if cursor is not None:
            n = len(self.text)
            cursor = (min(max(cursor[0], 0), n), min(max(cursor[1], 0), n))
        self.cursor = cursor
        if self.synchronized:
            self._send_presence()
        else:
            self._cursor_dirty = True

    def resend(self) -> None:
        """Send the unacknowledged operation again (after ``rate_limited``)."""
        if self.phase == "ready" and self.inflight is not None:
            self._send_op(self.inflight.op, self.inflight.id, self.rev, with_cursor=self.buffer is None)
        elif self.phase == "resolving" and self.inflight is not None:
            self._send_resolve_probe()

    # -- server input ------------------------------------------------------

    def receive(self, msg: dict) -> None:
        """Process one parsed server message."""
        kind = msg.get("type") if isinstance(msg, dict) else None
        handler = getattr(self, f"_on_{kind}", None) if isinstance(kind, str) else None
        if handler is None:
            log.debug("ignoring unknown message %r", msg)
            return
        handler(msg)

    def _on_batch(self, msg: dict) -> None:
        """Several server messages in one frame, in order."""
        messages = msg.get("messages")
        if isinstance(messages, list):
            for inner in messages:
                self.receive(inner)

    def _on_welcome(self, msg: dict) -> None:
        self.client_id = str(msg.get("client"))
        self._own_clients.add(self.client_id)
        self.role = msg.get("role", "edit")
        wrev = msg.get("rev")
        if type(wrev) is not int:
            self._events.append(ReconnectNeeded("welcome without a revision", fresh=True))
            return
        self._fresh_join = False
        # Peers arrive in server coordinates at welcome.rev.
        self.peers = {}
        for p in msg.get("peers") or []:
            if isinstance(p, dict) and p.get("client") is not None and p.get("client") != self.client_id:
                cid = str(p["client"])
                self.peers[cid] = Peer(cid, p.get("user"), _cursor_from_wire(p.get("cursor")))
        self._events.append(Welcomed(self.client_id, wrev, str(self.role)))
        self._events.append(PeersChanged())

        if "text" in msg and isinstance(msg.get("text"), str):
            text = msg["text"]
            if self.inflight is None:
                # The first snapshot is the starting text, not a change to report.
                self._settle(self.server_text, self.buffer, text, wrev, report=self.rev is not None)
            else:
                self.phase = "resolving"
                self._resolve = _Resolve(text, wrev)
                self._send_resolve_probe()
            return

        # Resume: every operation after our revision.
        self.phase = "ready"
        for entry in msg.get("ops") or []:
            if not isinstance(entry, dict):
                continue
            if self._is_own(entry):
                self._handle_ack(entry.get("rev"))
            else:
                self._handle_server_op(entry.get("rev"), entry.get("op"), entry.get("client"), None, False)
            if self.phase != "ready":
                return  # an inconsistency asked for a reconnect
        if self.rev != wrev:
            self._events.append(ReconnectNeeded(f"welcome.ops ended at {self.rev}, not {wrev}", fresh=True))
            return
        for peer in self.peers.values():
            peer.cursor = _move(peer.cursor, self.inflight.op if self.inflight else None, self.buffer)
        if self.inflight is not None:
            # Not among the applied ops: resend it, same id, rebased on the current revision.
            self._send_op(self.inflight.op, self.inflight.id, self.rev, with_cursor=self.buffer is None)
        self._flush_pending()
        if self.synchronized and self.cursor is not None:
            self._send_presence()

    def _is_own(self, entry: dict) -> bool:
        if self.inflight is None:
            return False
        if "id" in entry:
            return entry.get("id") == self.inflight.id
        # A server that does not echo ids: an op by one of our earlier
        # connections can only be the one op we had on the wire.
        return entry.get("client") in self._own_clients

    def _on_op(self, msg: dict) -> None:
        rev = msg.get("rev")
        if self.phase == "resolving":
            assert self._resolve is not None
            if self.inflight is not None and msg.get("id") == self.inflight.id:
                self._resolve_applied(rev)
                return
            r = self._resolve
            op = msg.get("op")
            if rev != r.rev + 1:
                self._events.append(ReconnectNeeded(f"expected revision {r.rev + 1}, got {rev}", fresh=True))
                return
            try:
                ot.validate(op, len(r.text))
                r.text = ot.apply(r.text, op)
            except ot.InvalidOperation as e:
                self._events.append(ReconnectNeeded(f"server op does not apply: {e}", fresh=True))
                return
            r.rev = rev
            cid = msg.get("client")
            for peer in self.peers.values():
                peer.cursor = _move(peer.cursor, op)
            if cid in self.peers and "cursor" in msg:
                self.peers[cid].cursor = _cursor_from_wire(msg.get("cursor"))
            return
        if self.phase != "ready":
            return
        if self.inflight is not None and msg.get("id") is not None and msg.get("id") == self.inflight.id:
            self._handle_ack(rev)
            return
        self._handle_server_op(rev, msg.get("op"), msg.get("client"), msg.get("cursor"), "cursor" in msg)

    def _handle_server_op(self, rev: Any, op: Any, client: Any, cursor: Any, has_cursor: bool) -> None:
        assert self.rev is not None
        if type(rev) is not int or rev <= self.rev:
            return  # a duplicate of something already applied
        if rev != self.rev + 1:
            self._gap(f"expected revision {self.rev + 1}, got {rev}")
            return
        try:
            ot.validate(op, len(self.server_text))
            op = ot.normalize(op)
        except ot.InvalidOperation as e:
            self._gap(f"server op does not apply to the known text: {e}", fresh=True)
            return
        self.server_text = ot.apply(self.server_text, op)
        self.rev = rev
        self._history.append((rev, op))
        local = op
        if self.inflight is not None:
            self.inflight.op, local = ot.transform(self.inflight.op, local)
        if self.buffer is not None:
            self.buffer, local = ot.transform(self.buffer, local)
        before = self.text
        self.text = ot.apply(before, local)
        self.cursor = _move(self.cursor, local)
        for peer in self.peers.values():
            peer.cursor = _move(peer.cursor, local)
        cid = None if client is None else str(client)
        if cid is not None and cid != self.client_id and has_cursor:
            peer = self.peers.setdefault(cid, Peer(cid))
            peer.cursor = self._to_local(_cursor_from_wire(cursor))
            self._events.append(PeersChanged())
        self._events.append(Changed(local, cid, rev, before))

    def _on_ack(self, msg: dict) -> None:
        if self.inflight is None or msg.get("id") != self.inflight.id:
            return  # an ack for something already settled
        if self.phase == "resolving":
            self._resolve_applied(msg.get("rev"))
        elif self.phase == "ready":
            self._handle_ack(msg.get("rev"))

    def _handle_ack(self, rev: Any) -> None:
        assert self.inflight is not None and self.rev is not None
        if rev != self.rev + 1:
            # We missed operations: join again; welcome.ops will hold ours.
            self._gap(f"ack for revision {rev} but we are at {self.rev}")
            return
        pending = self.inflight
        self.server_text = ot.apply(self.server_text, pending.op)
        self.rev = rev
        self._history.append((rev, pending.op))
        self.inflight = None
        self._events.append(Acked(pending.id, rev))
        self._flush_pending()
        if self.synchronized and self._cursor_dirty:
            self._send_presence()

    def _on_presence(self, msg: dict) -> None:
        cid = msg.get("client")
        if cid is None or str(cid) == self.client_id:
            return
        cid = str(cid)
        peer = self.peers.setdefault(cid, Peer(cid))
        if "user" in msg and msg["user"] is not None:
            peer.user = msg["user"]
        cursor = _cursor_from_wire(msg.get("cursor"))
        rev = msg.get("rev")
        if self.phase == "resolving":
            peer.cursor = cursor
        elif self.phase == "ready" and cursor is not None and self.rev is not None:
            if type(rev) is int and rev < self.rev:
                cursor = _move(cursor, *(op for r, op in self._history if r > rev))
            peer.cursor = self._to_local(cursor)
        else:
            peer.cursor = cursor
        self._events.append(PeersChanged())

    def _on_join(self, msg: dict) -> None:
        cid = msg.get("client")
        if cid is None or str(cid) == self.client_id:
            return
        cid = str(cid)
        peer = self.peers.setdefault(cid, Peer(cid))
        peer.user = msg.get("user", peer.user)
        self._events.append(PeersChanged())

    def _on_leave(self, msg: dict) -> None:
        if self.peers.pop(str(msg.get("client")), None) is not None:
            self._events.append(PeersChanged())

    def _on_error(self, msg: dict) -> None:
        code = str(msg.get("code", "error"))
        message = str(msg.get("message", ""))
        mid = msg.get("id")
        own = self.inflight is not None and mid is not None and mid == self.inflight.id
        if not own:
            if code == "bad_rev" and self.phase == "joining":
                # Our `since` is in the server's future (it lost data?): start over from its snapshot.
                self._gap("the server does not know our revision", fresh=True)
                return
            self._events.append(ServerError(code, message))
            return
        if code == "rate_limited":
            self._events.append(RetryLater(str(mid)))
            return
        if self.phase == "resolving":
            if code in ("stale_rev", "bad_rev"):
                self._resolve_not_applied()
            else:
                self._resolve_refused(code, message)
            return
        if code == "stale_rev":
            self._gap("our base revision fell out of the server's history")
        elif code == "bad_rev":
            self._gap("the server does not know our base revision", fresh=True)
        else:
            self._rollback(code, message, str(mid))

    # -- helpers -------------------------------------------------------------

    def _gap(self, reason: str, fresh: bool = False) -> None:
        self.phase = "disconnected"
        if fresh:
            self._fresh_join = True
        self._events.append(ReconnectNeeded(reason, fresh=fresh))

    def _to_local(self, cursor: Cursor | None) -> Cursor | None:
        """Server coordinates at :attr:`rev` -> local text coordinates."""
        return _move(cursor, self.inflight.op if self.inflight else None, self.buffer)

    def _new_id(self) -> str:
        return f"{self._prefix}-{next(self._ids)}"

    def _send_op(self, op: Operation, op_id: str, rev: int | None, *, with_cursor: bool) -> None:
        msg: dict[str, Any] = {"type": "op", "rev": rev, "op": op, "id": op_id}
        if with_cursor:
            msg["cursor"] = _cursor_to_wire(self.cursor)
            self._cursor_dirty = False
        self._out.append(msg)

    def _send_presence(self) -> None:
        self._cursor_dirty = False
        self._out.append({"type": "presence", "rev": self.rev, "cursor": _cursor_to_wire(self.cursor)})

    def _flush_pending(self) -> None:
        """Put the buffer on the wire if nothing else is (ot.js: synchronized -> awaiting)."""
        if self.phase != "ready" or self.inflight is not None or self.buffer is None:
            return
        assert self.rev is not None
        op, self.buffer = self.buffer, None
        self.inflight = Pending(op, self._new_id(), self.rev, op)
        self._send_op(op, self.inflight.id, self.rev, with_cursor=True)

    def _send_resolve_probe(self) -> None:
        assert self.inflight is not None
        p = self.inflight
        self._out.append({"type": "op", "rev": p.sent_rev, "op": p.sent_op, "id": p.id})

    def _resolve_applied(self, rev: Any) -> None:
        """The resent op had been applied (``ack``): rebase the buffer only."""
        r, p = self._resolve, self.inflight
        assert r is not None and p is not None
        base = ot.apply(self.server_text, p.op)
        if type(rev) is int and rev <= r.rev:
            self.inflight = None
            self._events.append(Acked(p.id, rev))
            self._settle(base, self.buffer, r.text, r.rev)
            return
        # Applied only now: its transformed form is unknown, so fetch a snapshot.
        self.server_text = base
        self.inflight = None
        if type(rev) is int:
            self._events.append(Acked(p.id, rev))
        self._resolve = None
        self._gap("resent operation was applied at a new revision", fresh=True)

    def _resolve_not_applied(self) -> None:
        """The resent op had never been applied (``stale_rev``): rebase all local changes."""
        r, p = self._resolve, self.inflight
        assert r is not None and p is not None
        pending = p.op if self.buffer is None else ot.compose(p.op, self.buffer)
        self.inflight = None
        self.buffer = None
        self._settle(self.server_text, pending, r.text, r.rev)

    def _resolve_refused(self, code: str, message: str) -> None:
        r, p = self._resolve, self.inflight
        assert r is not None and p is not None
        self.inflight = None
        self.buffer = None
        self._events.append(Refused(code, message, p.id))
        self._settle(self.server_text, None, r.text, r.rev, origin_note="refused")

    def _settle(self, base: str, pending: Operation | None, text: str, rev: int,
                origin_note: str | None = None, report: bool = True) -> None:
        """Adopt server snapshot ``text`` at ``rev``; ``pending`` (on ``base``) is rebased onto it.

        The server's changes are taken as ``diff(base, text)``; the rebased
        local changes stay in the buffer and go out as one new operation.
        Peer cursors are expected in snapshot coordinates.
        """
        before = self.text
        server_change = diff_op(base, text)
        local = server_change
        if pending is not None and not ot.is_noop(pending):
            pending, local = ot.transform(pending, server_change)
        else:
            pending = None
        self.server_text = text
        self.rev = rev
        self.inflight = None
        self.buffer = pending
        self._history.clear()
        self._resolve = None
        if origin_note is None:
            # `before` is apply(base, old pending): move through the server change.
            self.text = ot.apply(before, local) if not ot.is_noop(local) else before
        else:
            # Local changes were dropped: the text is the snapshot.
            local = diff_op(before, text)
            self.text = text
        self.cursor = _move(self.cursor, local)
        for peer in self.peers.values():
            peer.cursor = _move(peer.cursor, self.buffer)
        if report and local and not ot.is_noop(local):
            self._events.append(Changed(local, None, rev, before))
        self.phase = "ready"
        self._flush_pending()
        if self.synchronized and self.cursor is not None:
            self._send_presence()

    def _rollback(self, code: str, message: str, op_id: str) -> None:
        """Own op refused: undo every unacknowledged local edit."""
        assert self.inflight is not None
        before = self.text
        pending = self.inflight.op if self.buffer is None else ot.compose(self.inflight.op, self.buffer)
        undo = ot.invert(pending, self.server_text)
        self.inflight = None
        self.buffer = None
        self.text = self.server_text
        self.cursor = _move(self.cursor, undo)
        for peer in self.peers.values():
            peer.cursor = _move(peer.cursor, undo)
        self._events.append(Refused(code, message, op_id))
        if not ot.is_noop(undo):
            self._events.append(Changed(undo, None, self.rev or 0, before))
        if self._cursor_dirty and self.cursor is not None:
            self._send_presence()


# ---------------------------------------------------------------------------
# URLs


def ws_url(base: str, doc: str, token: str | None = None) -> str:
    """``http(s)://host`` or ``ws(s)://host`` + doc -> ``ws(s)://host/ws/{doc}?token=...``."""
    if not _DOC_NAME.match(doc):
        raise ValueError(
            f"invalid document name {doc!r}: use 1-128 characters of A-Z a-z 0-9 . _ - "
            "not starting with '.'"
        )
    parts = urlsplit(base if "://" in base else f"ws://{base}")
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme.lower())
    if scheme is None:
        raise ValueError(f"unsupported URL scheme in {base!r}: use http://, https://, ws:// or wss://")
    path = parts.path.rstrip("/") + f"/ws/{quote(doc)}"
    query = f"token={quote(token, safe='')}" if token else ""
    return urlunsplit((scheme, parts.netloc, path, query, ""))


def http_url(base: str) -> str:
    """``ws(s)://host`` -> ``http(s)://host`` (no trailing slash)."""
    parts = urlsplit(base if "://" in base else f"http://{base}")
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme.lower(), parts.scheme.lower())
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


# ---------------------------------------------------------------------------
# asyncio layer

ChangeCallback = Callable[[Operation, Union[str, None]], Union[None, Awaitable[None]]]


class Document:
    """A live, collaboratively edited document (asyncio).

    Use ``async with connect(...) as d`` or ``d = await connect(...)`` and
    ``await d.close()``.  Edits apply to :attr:`text` at once and are sent in
    the background; :meth:`synced` waits for the server to acknowledge them.
    """

    def __init__(
        self,
        url: str,
        doc: str,
        *,
        user: dict | None = None,
        token: str | None = None,
        reconnect: bool = True,
        open_timeout: float = 10.0,
        backoff_initial: float = 0.1,
        backoff_max: float = 10.0,
        close_timeout: float = 10.0,
    ) -> None:
        self.doc = doc
        self.url = ws_url(url, doc, token)
        self.reconnect = reconnect
        self.open_timeout = open_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.close_timeout = close_timeout
        self.state = ClientState(user)
        self.last_error: CollabError | None = None
        #: Number of successful joins (1 after open; more after reconnects).
        self.connections = 0
        self._ws: Any = None
        self._task: asyncio.Task | None = None
        self._send_lock = asyncio.Lock()
        self._waiters: list[asyncio.Future] = []
        self._callbacks: list[ChangeCallback] = []
        self._subscribers: list[asyncio.Queue] = []
        self._failure: CollabError | None = None
        self._op_error: CollabError | None = None
        self._closing = False
        self._reconnect_now = False
        self._retry_task: asyncio.Task | None = None

    # -- read-only views ---------------------------------------------------

    @property
    def text(self) -> str:
        """The current local text (including edits not yet acknowledged)."""
        return self.state.text

    @property
    def rev(self) -> int | None:
        """The last server revision this client has integrated."""
        return self.state.rev

    @property
    def peers(self) -> dict[str, Peer]:
        """Other clients by id, with cursors in current local coordinates."""
        return dict(self.state.peers)

    @property
    def client_id(self) -> str | None:
        return self.state.client_id

    @property
    def role(self) -> str | None:
        return self.state.role

    @property
    def cursor(self) -> Cursor | None:
        return self.state.cursor

    @property
    def connected(self) -> bool:
        return self._ws is not None and self.state.phase == "ready"

    # -- lifecycle -----------------------------------------------------------

    async def open(self) -> "Document":
        """Connect and wait for the first ``welcome``; raises :class:`CollabError` if that fails."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"collab:{self.doc}")
        try:
            await asyncio.wait_for(self._until(lambda: self.connections > 0), self.open_timeout + 5)
        except asyncio.TimeoutError:
            await self.close()
            raise CollabError("unreachable", f"no welcome from {self.url} within {self.open_timeout + 5:g} s; "
                              "is it a collab server?") from None
        except BaseException:
            await self.close()
            raise
        return self

    def __await__(self):
        return self.open().__await__()

    async def __aenter__(self) -> "Document":
        return await self.open()

    async def __aexit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None and self._failure is None:
                await self.synced(timeout=self.close_timeout)
        finally:
            await self.close()

    async def close(self) -> None:
        """Close the connection (unacknowledged edits are dropped; call :meth:`synced` first)."""
        self._closing = True
        if self._retry_task is not None:
            self._retry_task.cancel()
        ws = self._ws
        if ws is not None:
            try:
                await ws.close()
            except Exception:  # pragma: no cover - best effort
                pass
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        if self._failure is None:
            self._failure = CollabError("closed", "the document was closed; connect again to keep editing")
        self._notify()

    # -- editing ---------------------------------------------------------------

    async def apply(self, op: Operation) -> None:
        """Apply a raw operation (spanning :attr:`text`) and send it."""
        self._check_writable()
        try:
            self.state.edit(op)
        except ot.InvalidOperation as e:
            raise ValueError(f"invalid edit: {e}") from None
        await self._flush()

    async def insert(self, pos: int, text: str) -> None:
        """Insert ``text`` at code-point position ``pos``."""
        await self.replace(pos, 0, text)

    async def delete(self, pos: int, count: int) -> None:
        """Delete ``count`` code points starting at ``pos``."""
        await self.replace(pos, count, "")

    async def replace(self, pos: int, count: int, text: str) -> None:
        """Replace ``count`` code points at ``pos`` with ``text``."""
        n = len(self.state.text)
        if not (0 <= pos <= n) or count < 0 or pos + count > n:
            raise IndexError(
                f"cannot change {count} character(s) at {pos}: the text has {n} characters "
                "(positions count code points, so an emoji is one)"
            )
        await self.apply(ot.from_splice(n, pos, count, text))

    async def set_text(self, text: str) -> None:
        """Make the text equal ``text`` with a minimal diff."""
        await self.apply(diff_op(self.state.text, text))

    async def set_cursor(self, anchor: int | None, head: int | None = None) -> None:
        """Set own selection (``None`` hides it); others see it as presence."""
        if self._failure is not None:
            raise self._failure
        self.state.set_cursor(None if anchor is None else (anchor, anchor if head is None else head))
        await self._flush()

    def _check_writable(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self.state.role == "read":
            raise CollabError("forbidden", f"this connection to {self.doc!r} is read-only; "
                              "connect with a token whose role is 'edit'")

    # -- waiting -----------------------------------------------------------------

    def on_change(self, callback: ChangeCallback) -> ChangeCallback:
        """Call ``callback(op, origin)`` after each change not made here.

        ``origin`` is the author's client id (``None`` for a resync or a
        rollback).  Coroutine functions are scheduled as tasks.  Returns
        ``callback`` so it can be used as a decorator.
        """
        self._callbacks.append(callback)
        return callback

    async def changes(self) -> AsyncIterator[Changed]:
        """Iterate over remote changes as :class:`Changed` events (with ``rev`` and ``before``)."""
        q: asyncio.Queue = asyncio.Queue()
        self._subscribers.append(q)
        try:
            while True:
                item = await q.get()
                if isinstance(item, CollabError):
                    if item.code == "closed":
                        return
                    raise item
                yield item
        finally:
            self._subscribers.remove(q)

    async def synced(self, timeout: float | None = None) -> None:
        """Wait until every local edit is acknowledged.

        Raises :class:`CollabError` if the server refused an edit (it was
        rolled back) or the connection failed for good.
        """
        async def wait() -> None:
            await self._until(lambda: self.state.synchronized or self._op_error is not None)

        try:
            await asyncio.wait_for(wait(), timeout)
        except asyncio.TimeoutError:
            raise asyncio.TimeoutError(
                f"edits to {self.doc!r} not acknowledged within {timeout:g} s "
                f"(connected: {self.connected}); is the server reachable?"
            ) from None
        self._raise_op_error()

    async def wait_for(self, predicate: Callable[[str], bool], timeout: float | None = None) -> str:
        """Wait until ``predicate(text)`` is true; returns the text."""
        try:
            await asyncio.wait_for(self._until(lambda: bool(predicate(self.state.text))), timeout)
        except asyncio.TimeoutError:
            preview = self.state.text if len(self.state.text) < 200 else self.state.text[:200] + "..."
            raise asyncio.TimeoutError(
                f"condition not met within {timeout:g} s; text at rev {self.rev} is {preview!r}"
            ) from None
        return self.state.text

    def _raise_op_error(self) -> None:
        if self._op_error is not None:
            err, self._op_error = self._op_error, None
            raise err

    async def _until(self, cond: Callable[[], bool]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if cond():
                return
            if self._failure is not None:
                if self._op_error is not None:
                    self._raise_op_error()
                raise self._failure
            fut = loop.create_future()
            self._waiters.append(fut)
            try:
                await fut
            finally:
                if fut in self._waiters:
                    self._waiters.remove(fut)

    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    # -- I/O ---------------------------------------------------------------------

    async def _flush(self) -> None:
        """Send what the state machine produced and dispatch its events."""
        async with self._send_lock:
            msgs = self.state.messages_to_send()
            ws = self._ws
            if ws is not None:
                try:
                    for m in msgs:
                        await ws.send(json.dumps(m, ensure_ascii=False))
                except Exception as e:  # the reader notices and reconnects
                    log.debug("send failed: %r", e)
        for ev in self.state.events_received():
            self._dispatch(ev)
        self._notify()

    def _dispatch(self, ev: Event) -> None:
        if isinstance(ev, Changed):
            for cb in list(self._callbacks):
                try:
                    res = cb(ev.op, ev.origin)
                    if inspect.isawaitable(res):
                        asyncio.ensure_future(res)
                except Exception:
                    log.exception("on_change callback failed")
            for q in self._subscribers:
                q.put_nowait(ev)
        elif isinstance(ev, Welcomed):
            self.connections += 1
        elif isinstance(ev, Refused):
            self._op_error = CollabError(ev.code, ev.message or "the server refused the edit")
            self.last_error = self._op_error
            log.warning("edit refused (%s): %s; local edits were rolled back", ev.code, ev.message)
        elif isinstance(ev, ServerError):
            self.last_error = CollabError(ev.code, ev.message)
            log.warning("server error %s: %s", ev.code, ev.message)
        elif isinstance(ev, ReconnectNeeded):
            log.info("rejoining %s: %s", self.doc, ev.reason)
            self._reconnect_now = True
            ws = self._ws
            if ws is not None:
                asyncio.ensure_future(ws.close())
        elif isinstance(ev, RetryLater):
            if self._retry_task is None or self._retry_task.done():
                self._retry_task = asyncio.ensure_future(self._retry(ev.id))

    async def _retry(self, op_id: str) -> None:
        await asyncio.sleep(0.5 + random.random())
        if self.state.inflight is not None and self.state.inflight.id == op_id:
            self.state.resend()
            await self._flush()

    async def _run(self) -> None:
        import websockets
        from websockets.exceptions import ConnectionClosed, InvalidStatus

        attempt = 0
        while not self._closing:
            code: int | None = None
            reason = ""
            error: BaseException | None = None
            welcomed_before = self.connections
            try:
                async with websockets.connect(
                    self.url, open_timeout=self.open_timeout, max_size=None, close_timeout=2
                ) as ws:
                    self._ws = ws
                    self._reconnect_now = False
                    self.state.connection_made()
                    await self._flush()
                    async for raw in ws:
                        if isinstance(raw, bytes):
                            continue
                        try:
                            msg = json.loads(raw)
                        except ValueError:
                            log.warning("ignoring a message that is not JSON: %.80r", raw)
                            continue
                        self.state.receive(msg)
                        await self._flush()
                        if self.connections > welcomed_before:
                            attempt = 0
                    if ws.close_code is not None:
                        code, reason = ws.close_code, ws.close_reason or ""
            except ConnectionClosed as e:
                code = e.rcvd.code if e.rcvd is not None else 1006
                reason = e.rcvd.reason if e.rcvd is not None else ""
            except InvalidStatus as e:
                status = e.response.status_code
                code = {401: 4001, 403: 4003, 404: 4004}.get(status)
                error = e
                reason = f"HTTP {status}"
            except asyncio.CancelledError:
                raise
            except Exception as e:  # OSError, handshake failures, timeouts
                error = e
            finally:
                self._ws = None
                self.state.connection_lost()
                await self._flush()
            if self._closing:
                return
            if code in PERMANENT_CLOSE_CODES and not self._reconnect_now:
                name, hint = PERMANENT_CLOSE_CODES[code]
                detail = f" ({reason})" if reason else ""
                self._fail(CollabError(name, f"{self.url.split('?')[0]} closed with {code}{detail}: {hint}"))
                return
            if self.connections == 0:
                what = f"closed with {code} {reason}".strip() if code else f"{error!r}"
                self._fail(CollabError("unreachable", f"cannot connect to {self.url.split('?')[0]}: {what}. "
                                       "Is the server running? Start one with `collab serve`."))
                return
            if not self.reconnect:
                self._fail(CollabError("disconnected", f"connection lost (close code {code}); "
                                       "pass reconnect=True to reconnect automatically"))
                return
            if self._reconnect_now:
                self._reconnect_now = False
                delay = random.uniform(0, self.backoff_initial)
            else:
                cap = min(self.backoff_max, self.backoff_initial * (2 ** attempt))
                delay = cap / 2 + random.uniform(0, cap / 2)
                attempt += 1
            log.info("connection to %s lost (code %s %s); retrying in %.2f s", self.doc, code, error or "", delay)
            await asyncio.sleep(delay)

    def _fail(self, err: CollabError) -> None:
        self._failure = err
        self.last_error = err
        for q in self._subscribers:
            q.put_nowait(err)
        self._notify()


#: Alias: the same class, for long-lived use.
Client = Document


def connect(
    url: str,
    doc: str,
    *,
    user: dict | None = None,
    token: str | None = None,
    reconnect: bool = True,
    **kwargs: Any,
) -> Document:
    """Open document ``doc`` on the server at ``url`` (``http(s)://`` or ``ws(s)://``).

    Use as ``async with connect(...) as d:`` (waits for pending edits on
    exit) or ``d = await connect(...)`` then ``await d.close()``.
    """
    return Document(url, doc, user=user, token=token, reconnect=reconnect, **kwargs)
