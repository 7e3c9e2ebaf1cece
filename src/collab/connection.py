"""One WebSocket connection to a document: its session, from the handshake to the close.

A :class:`Session` is made per connection (as websockets' ``Connection``
is). :meth:`Session.run` accepts, checks the Origin, the document name and
the token, then reads messages until the connection ends. Every received
message goes through one decision, :meth:`Session.decide`: admit it (message
and byte budgets), parse it, and hand an edit to the document when that
needs no waiting; whatever must wait (the join, presence, an edit when the
document's inbox is full) is finished in the session's task by
:meth:`Session.complete`. The decision runs in the task, or inline in the
server's ``data_received`` while the task waits (:mod:`collab.transport`).

The way out: the hub queues frames on the session's :class:`~collab.hub.Peer`;
:class:`Fanout` writes every session's frames once per event-loop turn,
straight to the socket when the transport offers it, else a drain task awaits
ASGI ``send``. A client that lets its queue fill up is dropped at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from starlette.datastructures import Headers, QueryParams
from starlette.types import Receive, Scope, Send

from . import auth, protocol
from .addresses import ip_key
from .hub import Document, Peer
from .limits import TRANSFORM_OPS_PER_MESSAGE, SourceLimits, transform_cost
from .metrics import note_slow_client_drop
from .protocol import (
    BAD_MESSAGE,
    CLOSE_BAD_TOKEN,
    CLOSE_RESTART,
    CLOSE_INTERNAL,
    CLOSE_NORMAL,
    CLOSE_NO_DOCUMENT,
    CLOSE_POLICY,
    CLOSE_TOO_BIG,
    RATE_LIMITED,
    Join,
    Presence,
    ProtocolError,
    Submit,
    encode,
    error_msg,
)
from .lifecycle import DELETED_REASON, RENAMED_REASON
from .revocation import EXPIRED_REASON, LOWERED_REASON, REVOKED_REASON, expiry_timer
from .store import StoreFailed
from .transport import EXTENSION as DIRECT_EXTENSION
from .transport import ReceiverFailed

if TYPE_CHECKING:
    from .app import CollabApp

log = logging.getLogger("collab.app")

_SLOW_DOWN = "too many messages: slow down"
#: Seconds a closing session waits for its queued frames and close frame to go out.
DRAIN_TIMEOUT = 5.0


class _Close:
    """A step: close the connection with ``code`` (before the join; after it, the peer is kicked)."""

    __slots__ = ("code", "reason")

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason


#: A step: stop reading (the peer was closed).
_END = _Close(0, "")


class Fanout:
    """Writes what the hub queued, once per event-loop turn, for every session with frames."""

    __slots__ = ("dirty", "scheduled", "frames_sent", "frames_coalesced")

    def __init__(self) -> None:
        self.dirty: list[Session] = []
        self.scheduled = False
        #: WebSocket frames sent, and messages that rode in a batch frame instead of their own.
        self.frames_sent = 0
        self.frames_coalesced = 0

    def flush(self) -> None:
        """Write this turn's frames: one transport write per connection.

        A broadcast is encoded into frame bytes once, whoever receives it
        (the cache is keyed by the identity of the hub's encoded message, and
        keeps the message alive so the key stays unique until the end).
        """
        self.scheduled = False
        dirty, self.dirty = self.dirty, []
        cache: dict[int, tuple[str, bytes]] = {}
        for session in dirty:
            try:
                session.flush(cache)
            except Exception:  # one broken connection must not hold back the others' frames
                log.exception("writing to a client failed; closing that connection")
                session.fail_output()


class Session:
    """The server side of one WebSocket connection (see the module docstring)."""

    __slots__ = ("app", "settings", "max_bytes", "scope", "receive", "send", "doc_id", "direct", "grant", "limiter",
                 "peer", "doc", "charged", "drain", "closed_sent", "dropped", "timer")

    def __init__(self, app: "CollabApp", scope: Scope, receive: Receive, send: Send, doc_id: str) -> None:
        self.app = app
        self.settings = app.settings
        self.max_bytes = app.settings.max_message_bytes
        self.scope = scope
        self.receive = receive
        self.send = send
        self.doc_id = doc_id
        self.direct: Any = scope.get("extensions", {}).get(DIRECT_EXTENSION)
        self.grant: auth.Grant | None = None
        self.limiter: Any = None
        self.peer: Peer | None = None
        self.doc: Document | None = None
        #: ``peer.transformed`` already charged to the limiter.
        self.charged = 0
        self.drain: asyncio.Task[None] | None = None
        self.closed_sent = False
        #: The peer fell behind and was let go (counted once).
        self.dropped = False
        #: Closes the session when its token expires.
        self.timer: asyncio.TimerHandle | None = None

    # -- lifecycle -------------------------------------------------------------

    async def run(self) -> None:
        """Serve the connection until it ends."""
        if not await self._open():
            return
        try:
            await self._read()
        except Exception as exc:  # a server fault (the store failed, a bug): the client must hear 1011
            await self._fail(exc)
        finally:
            await self._finish()

    async def _fail(self, exc: Exception) -> None:
        """Close with 1011 so that the client keeps its edits and resumes, never a bare drop."""
        if isinstance(exc, StoreFailed):  # the store already said why, once
            log.warning("closing a session of %r with 1011: %s", self.doc_id, exc)
        else:
            log.error("closing a session of %r with 1011 after an unexpected error", self.doc_id, exc_info=exc)
        reason = "storage failed; reconnect to resume"
        if self.peer is not None:
            self.peer.kick(CLOSE_INTERNAL, reason)
        else:
            with contextlib.suppress(Exception):  # the connection may be gone already
                await self._close(CLOSE_INTERNAL, reason)

    async def _open(self) -> bool:
        """Accept the handshake, then check Origin, document name and token; close and ``False`` if refused."""
        s = self.settings
        if (await self.receive())["type"] != "websocket.connect":
            return False
        await self.send({"type": "websocket.accept"})
        headers = Headers(scope=self.scope)
        if not auth.origin_allowed(headers.get("origin"), headers.get("host"), s.allowed_origins, bool(s.secret)):
            await self._close(CLOSE_POLICY, "this Origin may not connect: see COLLAB_ALLOWED_ORIGINS")
            return False
        if not protocol.valid_doc_name(self.doc_id):
            await self._close(CLOSE_NO_DOCUMENT,
                              "invalid document name: use 1-128 of A-Z a-z 0-9 . _ - not starting with '.'")
            return False
        try:
            token = auth.extract_token(headers.get("authorization"),
                                       QueryParams(self.scope.get("query_string", b"")).get("token"))
            self.grant = self.app.revocations.check(auth.authorize(s.secret, token, self.doc_id))
        except auth.AuthError as exc:
            await self._close(exc.close_code, str(exc)[:120])
            return False
        trash = self.app.trash  # told only to a caller the token lets in
        if trash.is_deleted(self.doc_id) or self.doc_id in trash.renamed:
            renamed = trash.renamed.get(self.doc_id)
            await self._close(CLOSE_NO_DOCUMENT, DELETED_REASON if renamed is None else RENAMED_REASON + renamed)
            return False
        client = self.scope.get("client")
        source = ip_key(client[0], s.ipv6_prefix) if client else ""
        self.limiter = SourceLimits.for_settings(s).message_limiter(source)
        return True

    async def _close(self, code: int, reason: str) -> None:
        await self.send({"type": "websocket.close", "code": code, "reason": reason})

    async def _read(self) -> None:
        """Take messages until the connection ends: each one through :meth:`decide`, then :meth:`complete`."""
        receive, decide, complete = self.receive, self.decide, self.complete
        while True:
            event = await receive()
            if type(event) is dict:
                kind = event["type"]
                if kind != "websocket.receive":
                    return  # websocket.disconnect
                text = event.get("text")
                step = decide(text if text is not None else event.get("bytes") or b"")
            else:
                step = event  # decided inline by the transport's receiver
            if step is not None and not await complete(step):
                return

    async def _finish(self) -> None:
        """Leave the document, send what the server queued (and its close), within :data:`DRAIN_TIMEOUT`."""
        direct, peer = self.direct, self.peer
        if direct is not None:
            direct.receiver = None
        if peer is None:
            return
        self._unwatch()
        if self.doc is not None:
            self.doc.remove(peer)
        if not peer.closed:
            peer.closed = True  # the client went away: nothing more to send
        elif not peer.flush:
            self._drop()
        else:
            self.start_drain()
        drain = self.drain
        if drain is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(drain), timeout=DRAIN_TIMEOUT)
            if self.drain is not None and direct is not None:
                direct.drop(peer.close_code, peer.close_reason[:120])  # the client does not read: let it go

    # -- the decision for one received message ------------------------------------

    def decide(self, payload: str | bytes) -> Any:
        """Admit, parse and, where nothing must wait, handle one message.

        Returns ``None`` when the message is done with, else the step
        :meth:`complete` finishes in the task: a parsed message, a
        :class:`ProtocolError` to answer before the join, or a close.
        """
        peer = self.peer
        if peer is not None and peer.closed:
            return _END
        if type(payload) is str:
            size = len(payload) if payload.isascii() else len(payload.encode("utf-8", "surrogatepass"))
        else:
            size = len(payload)
        if size > self.max_bytes:
            return self._refuse(CLOSE_TOO_BIG, f"message larger than {self.max_bytes} bytes")
        if peer is not None and peer.transformed - self.charged >= TRANSFORM_OPS_PER_MESSAGE:
            self.limiter.charge(transform_cost(peer.transformed - self.charged))  # charged a message's worth at a time
            self.charged = peer.transformed
        verdict = self.limiter.check(size)
        if verdict != "ok":
            if verdict == "limited":
                return self._error(ProtocolError(RATE_LIMITED, _SLOW_DOWN))
            return self._refuse(CLOSE_POLICY, "message flood")
        try:
            msg = protocol.parse(payload)
            if type(msg) is Submit and self.doc is not None and self.doc.offer(peer, msg):  # type: ignore[arg-type]
                return _END if peer.closed else None  # type: ignore[union-attr]
        except ProtocolError as exc:
            return self._error(exc)
        return msg

    def _error(self, exc: ProtocolError) -> Any:
        """Answer ``exc`` on the peer's queue; before the join, the task sends it."""
        peer = self.peer
        if peer is None:
            return exc
        peer.send_msg(error_msg(exc.code, exc.message, exc.id))
        return _END if peer.closed else None

    def _refuse(self, code: int, reason: str) -> _Close:
        peer = self.peer
        if peer is None:
            return _Close(code, reason)
        peer.kick(code, reason + (": split the edit" if code == CLOSE_TOO_BIG else ""))
        return _END

    async def complete(self, step: Any) -> bool:
        """Finish what :meth:`decide` could not; ``False`` when the session must end."""
        if type(step) is _Close:
            if step is not _END:
                await self._close(step.code, step.reason)
            return False
        if type(step) is ReceiverFailed:
            raise step.exc
        try:
            if isinstance(step, ProtocolError):
                raise step
            if self.doc is None:
                await self._join(step)
            elif type(step) is Submit:
                await self.doc.submit(self.peer, step)
            elif type(step) is Presence:
                await self.doc.presence(self.peer, step)  # type: ignore[arg-type]
            else:
                raise ProtocolError(BAD_MESSAGE, "already joined: 'join' is only the first message")
        except ProtocolError as exc:
            if self.peer is None:
                await self.send({"type": "websocket.send", "text": encode(error_msg(exc.code, exc.message, exc.id))})
            else:
                self.peer.send_msg(error_msg(exc.code, exc.message, exc.id))
        return self.peer is None or not self.peer.closed

    async def _join(self, msg: Any) -> None:
        if not isinstance(msg, Join):
            raise ProtocolError(BAD_MESSAGE, "send 'join' first", getattr(msg, "id", None))
        grant, s = self.grant, self.settings
        assert grant is not None and self.app.hub is not None
        user = msg.user
        if grant.name:  # a name vouched for by the token beats a self-chosen one
            user = protocol.User(grant.name, user.color if user else "")
        peer = Peer(user, grant.role, s.client_queue_size, notify=self.notify)
        peer.batch, peer.titles = msg.batch, msg.titles
        self.peer = peer
        try:
            self.doc = await self.app.hub.join(self.doc_id, peer, msg.since)
        except ProtocolError:
            self.peer = None
            raise
        if self.direct is not None:
            self.direct.receiver = self.decide
        self._watch()

    # -- access taken back (see collab.revocation) ------------------------------------

    def _watch(self) -> None:
        """Follow the token after the join: revoked, lowered or expired, the session hears it."""
        grant, revocations = self.grant, self.app.revocations
        assert grant is not None
        revocations.hold(grant.jti, self)
        try:  # changed while the document loaded
            if revocations.check(grant).role != grant.role:
                self.lower_role("read", LOWERED_REASON)
        except auth.AuthError:
            self.revoke_access(CLOSE_BAD_TOKEN, REVOKED_REASON)
        self.timer = expiry_timer(grant, lambda: self.revoke_access(CLOSE_BAD_TOKEN, EXPIRED_REASON))
        if self.app.trash.is_deleted(self.doc_id):  # deleted while the document loaded
            self.revoke_access(CLOSE_NO_DOCUMENT, DELETED_REASON)
        elif self.doc_id in self.app.trash.renamed:
            self.revoke_access(CLOSE_NO_DOCUMENT, RENAMED_REASON + self.app.trash.renamed[self.doc_id])

    def _unwatch(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.grant is not None:
            self.app.revocations.release(self.grant.jti, self)

    def revoke_access(self, code: int, reason: str) -> None:
        """The token was revoked or expired (4001), or the document deleted (4004): close the session."""
        if self.peer is not None:
            self.peer.kick(code, reason)

    def lower_role(self, role: str, reason: str) -> None:
        """The token's role was lowered: refuse edits from now on, and have the client rejoin (1012) as ``role``."""
        peer = self.peer
        if peer is not None and peer.role != role:
            peer.role = role
            peer.kick(CLOSE_RESTART, reason)

    # -- the way out ---------------------------------------------------------------

    def notify(self) -> None:
        """The peer has frames (or was kicked): flush at the end of this event-loop turn."""
        fanout = self.app.fanout
        fanout.dirty.append(self)
        if not fanout.scheduled:
            fanout.scheduled = True
            asyncio.get_running_loop().call_soon(fanout.flush)

    def flush(self, cache: dict[int, tuple[str, bytes]]) -> None:
        """Write the peer's frames directly if the transport takes them now; else leave it to a drain task."""
        peer = self.peer
        if peer is None:
            return
        if peer.closed and not peer.flush:
            self._drop()
            return
        if self.drain is not None:
            return  # the drain task owns the output and looks at the outbox again before it ends
        if peer.closed:
            self.start_drain()
            return
        direct = self.direct
        frames = peer.outbox
        if not frames:
            return
        if direct is None:
            self.start_drain()
            return
        texts = self._texts(frames)
        parts = []
        for text in texts:
            hit = cache.get(id(text))
            if hit is None:
                hit = cache[id(text)] = (text, direct.encode_text(text))
            parts.append(hit[1])
        if direct.write_frames(parts[0] if len(parts) == 1 else b"".join(parts)):
            peer.take()
            self._count(frames, texts)
        else:  # the client is slow (or going away): wait for it in a task
            self.start_drain()

    def fail_output(self) -> None:
        """Writing failed unexpectedly: close this connection without sending more."""
        if self.peer is not None:
            self.peer.kick(CLOSE_INTERNAL, "the server could not write to this connection; reconnect", flush=False)

    def _drop(self) -> None:
        """The peer was closed without flushing (it fell behind): discard its queue and let the connection go now."""
        peer = self.peer
        if peer is None or self.dropped:
            return
        self.dropped = True
        peer.take()
        if peer.close_code == CLOSE_POLICY:
            client = self.scope.get("client")
            note_slow_client_drop(client[0] if client else "")
        if self.direct is None:  # plain ASGI cannot abort: the drain sends the close once the client reads
            self.start_drain()
            return
        self.closed_sent = True
        if self.drain is not None:
            self.drain.cancel()
        self.direct.drop(peer.close_code, peer.close_reason[:120])

    def _texts(self, frames: list[str]) -> list[str]:
        """The WebSocket messages for ``frames``: one ``batch`` frame if the client takes them, else each."""
        if self.peer is not None and self.peer.batch and len(frames) > 1:
            return [protocol.batch_frame(frames)]
        return frames

    def _count(self, frames: list[str], texts: list[str]) -> None:
        fanout = self.app.fanout
        fanout.frames_sent += len(texts)
        fanout.frames_coalesced += len(frames) - len(texts)

    def start_drain(self) -> None:
        if self.drain is None and not self.closed_sent:
            self.drain = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        """Send the outbox through ASGI ``send`` until it is empty; close if the hub asked to."""
        peer = self.peer
        assert peer is not None
        send = self.send  # the server's own send: a connection that is gone raises
        try:
            while True:
                frames = peer.take()
                if frames:
                    texts = self._texts(frames)
                    for text in texts:
                        await send({"type": "websocket.send", "text": text})
                    self._count(frames, texts)
                    continue
                if peer.closed:
                    self.closed_sent = True
                    if peer.close_code != CLOSE_NORMAL:
                        await self._close(peer.close_code, peer.close_reason[:120])
                return
        except Exception:  # the connection went away under us
            self.closed_sent = True
            if not peer.closed:
                peer.closed = True
                if peer.doc is not None:
                    peer.doc.remove(peer)
        finally:
            self.drain = None
