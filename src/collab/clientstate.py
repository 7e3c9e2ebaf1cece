"""The collab client's state machine without I/O: the document, the
unacknowledged operations and the peers of one client, driven by parsed
server messages and local edits, producing messages to send and
:mod:`collab.clientevents` events.  No socket, no clock: :mod:`collab.client`
drives it over a WebSocket, and ``tests/conformance/client.json`` replays
the same transcripts against it and against the browser's ``SyncClient``.

It is ot.js's ``Client`` (synchronized / awaiting-confirm / awaiting-with-
buffer) extended for reconnects: ``join`` carries ``since``; an own op found
in ``welcome.ops`` or a broadcast (by ``id``) is its ``ack``; an unacked op
is resent with the same ``id``.  After a snapshot welcome, the oldest unacked
op is resent with its original ``rev`` and ``id`` (``ack``: it had been
applied, ``stale_rev``: not) and local changes are rebased by diffing.
Edits too large for one frame go out in pieces (:mod:`collab.opsplit`).
Positions are code points, as on the wire.
"""

from __future__ import annotations

import itertools
import logging
import secrets
from collections import deque
from typing import Any

from . import ot
from .clientevents import (
    Acked,
    Changed,
    Cursor,
    Event,
    Peer,
    PeersChanged,
    Pending,
    ReconnectNeeded,
    Refused,
    Resolve,
    RetryLater,
    ServerError,
    Welcomed,
    cursor_from_wire,
    cursor_to_wire,
    move_cursor,
)
from .ot import Operation
from .opsplit import DEFAULT_MAX_MESSAGE_BYTES, FrameLimit, json_bytes
from .protocol import BAD_REV, RATE_LIMITED, STALE_REV
from .textdiff import diff_op

__all__ = ["ClientState", "diff_op"]

log = logging.getLogger("collab.client")


class ClientState:
    """The OT client of one document, without I/O.

    Outputs: :meth:`messages_to_send` (dicts to serialize as JSON text
    frames, in order) and :meth:`events_received`.

    Invariants: ``text == apply(apply(server_text, inflight.op), buffer)``;
    ``inflight`` is the one operation on the wire; ``buffer`` is composed
    local edits not sent yet.
    """

    #: Recent server operations kept to move presence sent at older revisions.
    HISTORY = 256

    def __init__(self, user: dict | None = None, *, id_prefix: str | None = None,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 force_max_message_bytes: int | None = None) -> None:
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
        self.limit = FrameLimit(max_message_bytes, force_max_message_bytes)
        self._conn = 0
        self._open = False
        self._cursor_dirty = False
        self._fresh_join = False
        self._resolve: Resolve | None = None
        self._own_clients: set[str] = set()
        self._history: deque[tuple[int, Operation]] = deque(maxlen=self.HISTORY)
        self._prefix = id_prefix or secrets.token_hex(6)
        self._ids = itertools.count(1)
        self._out: list[dict] = []
        self._events: list[Event] = []


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
        return self.phase == "ready" and self.saved

    @property
    def saved(self) -> bool:
        """True when no local edit waits for an acknowledgement (connected or not)."""
        return self.inflight is None and self.buffer is None

    @property
    def max_message_bytes(self) -> int:
        """The largest ``op`` message this client sends, in bytes of JSON."""
        return self.limit.bytes


    def connection_made(self) -> None:
        """A socket is open: send ``join`` (resuming after :attr:`rev` if known)."""
        self._conn += 1
        self._open = True
        self.phase = "joining"
        self._resolve = None
        since = None if (self.rev is None or self._fresh_join) else self.rev
        # batch: let the server coalesce what is queued for us into one frame (docs/protocol.md).
        msg: dict[str, Any] = {"type": "join", "since": since, "batch": True}
        if self.user is not None:
            msg["user"] = self.user
        self._out.append(msg)

    def connection_lost(self, code: int | None = None) -> None:
        """The socket closed with close ``code`` (``None``: closed by us).

        Local edits keep accumulating until the next join.  A close for size
        (1009, or twice an abnormal close after a large operation) lowers
        the frame limit so that the edit goes out again in smaller pieces.
        """
        self._check_too_large(code)
        self._open = False
        self.phase = "disconnected"
        self._resolve = None
        if self.peers:
            self.peers.clear()
            self._events.append(PeersChanged())

    def _check_too_large(self, code: int | None) -> None:
        p = self.inflight
        if p is not None and self._open and p.sent_on == self._conn and code is not None:
            event = self.limit.closed(code, p)
            if event is not None:
                self._events.append(event)


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
        self.cursor = move_cursor(self.cursor, op)
        for peer in self.peers.values():
            peer.cursor = move_cursor(peer.cursor, op)
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
            self._transmit(self.rev, self.inflight.op, with_cursor=self.buffer is None)
        elif self.phase == "resolving" and self.inflight is not None:
            self._send_resolve_probe()


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
        limit = msg.get("max_message_bytes")
        if type(limit) is int and limit > 0:
            self.limit.server = limit
        self._fresh_join = False
        # Peers arrive in server coordinates at welcome.rev.
        self.peers = {}
        for p in msg.get("peers") or []:
            if isinstance(p, dict) and p.get("client") is not None and p.get("client") != self.client_id:
                cid = str(p["client"])
                self.peers[cid] = Peer(cid, p.get("user"), cursor_from_wire(p.get("cursor")))
        self._events.append(Welcomed(self.client_id, wrev, str(self.role)))
        self._events.append(PeersChanged())
        if isinstance(msg.get("text"), str):
            self._welcome_text(msg["text"], wrev)
        else:
            self._welcome_ops(msg.get("ops") or [], wrev)

    def _welcome_text(self, text: str, wrev: int) -> None:
        p = self.inflight
        if p is not None and self._inflight_too_large() and p.refusals == p.sends:
            # Every frame that carried it was refused for size: it was never applied.
            self._unsend()
        if self.inflight is None:
            # The first snapshot is the starting text, not a change to report.
            self._settle(self.server_text, self.buffer, text, wrev, report=self.rev is not None)
        else:
            self.phase = "resolving"
            self._resolve = Resolve(text, wrev)
            self._send_resolve_probe()

    def _welcome_ops(self, ops: list, wrev: int) -> None:
        """Resume: every operation after our revision."""
        self.phase = "ready"
        for entry in ops:
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
            peer.cursor = move_cursor(peer.cursor, self.inflight.op if self.inflight else None, self.buffer)
        if self._inflight_too_large():
            # Refused for size and not among welcome.ops: not applied; send it again in pieces.
            self._unsend()
        if self.inflight is not None:
            # Not among the applied ops: resend it, same id, rebased on the current revision.
            self._transmit(self.rev, self.inflight.op, with_cursor=self.buffer is None)
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
        own = self.inflight is not None and msg.get("id") is not None and msg.get("id") == self.inflight.id
        if self.phase == "resolving":
            if own:
                self._resolve_applied(rev)
            else:
                self._resolving_op(msg)
        elif self.phase == "ready":
            if own:
                self._handle_ack(rev)
            else:
                self._handle_server_op(rev, msg.get("op"), msg.get("client"), msg.get("cursor"), "cursor" in msg)

    def _resolving_op(self, msg: dict) -> None:
        """Another client's operation arriving after the snapshot we are resolving."""
        r = self._resolve
        assert r is not None
        rev, op = msg.get("rev"), msg.get("op")
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
            peer.cursor = move_cursor(peer.cursor, op)
        if cid in self.peers and "cursor" in msg:
            self.peers[cid].cursor = cursor_from_wire(msg.get("cursor"))

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
        self.cursor = move_cursor(self.cursor, local)
        for peer in self.peers.values():
            peer.cursor = move_cursor(peer.cursor, local)
        cid = None if client is None else str(client)
        if cid is not None and cid != self.client_id and has_cursor:
            peer = self.peers.setdefault(cid, Peer(cid))
            peer.cursor = self._to_local(cursor_from_wire(cursor))
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
        cursor = cursor_from_wire(msg.get("cursor"))
        rev = msg.get("rev")
        if self.phase == "ready" and cursor is not None and self.rev is not None:
            if type(rev) is int and rev < self.rev:
                cursor = move_cursor(cursor, *(op for r, op in self._history if r > rev))
            cursor = self._to_local(cursor)
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
            if code == BAD_REV and self.phase == "joining":
                # Our `since` is in the server's future (it lost data?): start over from its snapshot.
                self._gap("the server does not know our revision", fresh=True)
                return
            self._events.append(ServerError(code, message))
        elif code == RATE_LIMITED:
            self._events.append(RetryLater(str(mid)))
        elif self.phase == "resolving":
            if code in (STALE_REV, BAD_REV):
                self._resolve_not_applied()
            else:
                self._resolve_refused(code, message)
        elif code == STALE_REV:
            self._gap("our base revision fell out of the server's history")
        elif code == BAD_REV:
            self._gap("the server does not know our base revision", fresh=True)
        else:
            self._rollback(code, message, str(mid))


    def _gap(self, reason: str, fresh: bool = False) -> None:
        self.phase = "disconnected"
        if fresh:
            self._fresh_join = True
        self._events.append(ReconnectNeeded(reason, fresh=fresh))

    def _to_local(self, cursor: Cursor | None) -> Cursor | None:
        """Server coordinates at :attr:`rev` -> local text coordinates."""
        return move_cursor(cursor, self.inflight.op if self.inflight else None, self.buffer)

    def _transmit(self, rev: int | None, op: Operation, *, with_cursor: bool) -> None:
        """Send the in-flight operation (first send or resend, same id)."""
        p = self.inflight
        assert p is not None
        msg: dict[str, Any] = {"type": "op", "rev": rev, "op": op, "id": p.id}
        if with_cursor:
            msg["cursor"] = cursor_to_wire(self.cursor)
            self._cursor_dirty = False
        p.sent_on = self._conn
        p.sends += 1
        p.nbytes = p.nbytes or json_bytes(msg)
        self._out.append(msg)

    def _send_presence(self) -> None:
        self._cursor_dirty = False
        self._out.append({"type": "presence", "rev": self.rev, "cursor": cursor_to_wire(self.cursor)})

    def _flush_pending(self) -> None:
        """Put the buffer on the wire if nothing else is (ot.js: synchronized -> awaiting).

        An operation whose message would exceed :attr:`max_message_bytes`
        goes out in pieces: the first now, the rest stays in the buffer and
        follows on each ack.
        """
        if self.phase != "ready" or self.inflight is not None or self.buffer is None:
            return
        assert self.rev is not None
        op, self.buffer = self.buffer, None
        op_id = f"{self._prefix}-{next(self._ids)}"
        part = self.limit.first_piece(op, self.rev, op_id, cursor_to_wire(self.cursor))
        self.inflight = Pending(part.head, op_id, self.rev, part.head, nbytes=part.nbytes)
        if part.tail is None:
            self._transmit(self.rev, part.head, with_cursor=True)
            return
        # The cursor is where it will be after the whole edit: it rides on the last piece.
        self.buffer = part.tail
        self._transmit(self.rev, part.head, with_cursor=False)

    def _inflight_too_large(self) -> bool:
        return self.inflight is not None and self.inflight.nbytes > self.max_message_bytes

    def _unsend(self) -> None:
        """The in-flight operation was not applied: make it unsent local changes again."""
        p = self.inflight
        assert p is not None
        self.inflight = None
        self.buffer = p.op if self.buffer is None else ot.compose(p.op, self.buffer)


    def _send_resolve_probe(self) -> None:
        p = self.inflight
        assert p is not None
        self._transmit(p.sent_rev, p.sent_op, with_cursor=False)

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
        self.cursor = move_cursor(self.cursor, local)
        for peer in self.peers.values():
            peer.cursor = move_cursor(peer.cursor, self.buffer)
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
        self.cursor = move_cursor(self.cursor, undo)
        for peer in self.peers.values():
            peer.cursor = move_cursor(peer.cursor, undo)
        self._events.append(Refused(code, message, op_id))
        if not ot.is_noop(undo):
            self._events.append(Changed(undo, None, self.rev or 0, before))
        if self._cursor_dirty and self.cursor is not None:
            self._send_presence()
