"""The Starlette app: WebSocket transport, HTTP API and the frontend's files.

This module adapts Starlette's WebSocket to a :class:`collab.hub.Peer`: one
task reads frames, parses them with :mod:`collab.protocol` and hands them to
the document; what the hub queues for the peer is written once per
event-loop turn, straight to the socket where the server offers it
(:mod:`collab.transport`), else by a drain task through ASGI ``send``.
Everything about ordering and presence lives in :mod:`collab.hub`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path
from typing import Any, AsyncIterator, Coroutine

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from . import auth, guard, protocol
from .config import Settings
from .hub import Document, Hub, HubConfig, Peer
from .protocol import (
    BAD_MESSAGE,
    CLOSE_INTERNAL,
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
from .backplane import open_backplane
from .store import Store, open_store
from .transport import EXTENSION as DIRECT_EXTENSION

log = logging.getLogger("collab.app")


#: Events a session's ``received`` hands to its task (see ``DirectWebSocketProtocol.receiver``).
_CHECKED = "collab.checked"
_FAILED = "collab.failed"
_END_TYPE = "collab.end"
_END = {"type": _END_TYPE}
_SLOW_DOWN = "too many messages: slow down"


def _payload_bytes(payload: str | bytes) -> int:
    """The size of a message on the wire (a ``str`` as UTF-8)."""
    return len(payload.encode("utf-8", "surrogatepass")) if isinstance(payload, str) else len(payload)


def static_dir() -> Path | None:
    """Where the built frontend is: ``COLLAB_STATIC_DIR``, the source checkout, or the installed package."""
    env = os.environ.get("COLLAB_STATIC_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parent.parent / "frontend" / "dist")
    import importlib.util

    spec = importlib.util.find_spec("collab_frontend")  # the wheel maps frontend/dist to this data-only package
    if spec is not None and spec.submodule_search_locations:
        candidates.extend(Path(p) for p in spec.submodule_search_locations)
    for path in candidates:
        if (path / "index.html").is_file():
            return path
    return None


class CollabApp:
    """The state behind the routes: settings, store and hub."""

    def __init__(self, settings: Settings, store: Store | None = None) -> None:
        self.settings = settings
        self.store = store
        self.hub: Hub | None = None if store is None else Hub(store, HubConfig.from_settings(settings))
        self._owns_store = store is None
        #: WebSocket frames sent, and messages that rode in a batch frame instead of their own.
        self.frames_sent = 0
        self.frames_coalesced = 0
        #: Connections with frames to write at the end of this event-loop turn.
        self._dirty: list[_Conn] = []
        self._flush_scheduled = False

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        auth.install_log_redaction()  # after uvicorn configured logging: no token in any log line
        if self.settings.secret:
            auth.check_secret(self.settings.secret)
        if self.store is None:
            self.store = await open_store(self.settings)
            self.hub = Hub(self.store, HubConfig.from_settings(self.settings), backplane=await open_backplane(self.settings))
        try:
            yield
        finally:
            assert self.hub is not None
            await self.hub.close()
            if self._owns_store:
                await self.store.close()

    # -- WebSocket -------------------------------------------------------------

    async def websocket(self, ws: WebSocket) -> None:
        """The ``/ws/{doc}`` route when reached through Starlette's router (see :class:`_Starlette`)."""
        await self._session(ws, ws.path_params["doc"])

    def asgi_websocket(self, scope: Scope, receive: Receive, send: Send, doc_id: str) -> Coroutine[Any, Any, None]:
        """``/ws/{doc}`` as a plain ASGI handler, ahead of Starlette's middleware stack.

        None of that stack acts on a WebSocket (SecurityHeaders only touches
        http; the error and exception middleware only wrap ``send``), and
        skipping it drops its coroutine frames per idle connection and a
        wrapper per frame sent. Returns the session's coroutine rather than
        awaiting it, one frame less per connection.
        """
        return self._session(WebSocket(scope, receive, send), doc_id)

    async def _session(self, ws: WebSocket, doc_id: str) -> None:
        s = self.settings
        await ws.accept()
        if not auth.origin_allowed(ws.headers.get("origin"), ws.headers.get("host"), s.allowed_origins, bool(s.secret)):
            await ws.close(CLOSE_POLICY, "this Origin may not connect: see COLLAB_ALLOWED_ORIGINS")
            return
        if not protocol.valid_doc_name(doc_id):
            await ws.close(CLOSE_NO_DOCUMENT, "invalid document name: use 1-128 of A-Z a-z 0-9 . _ - not starting with '.'")
            return
        try:
            token = auth.extract_token(ws.headers.get("authorization"), ws.query_params.get("token"))
            grant = auth.authorize(s.secret, token, doc_id)
        except auth.AuthError as exc:
            await ws.close(exc.close_code, str(exc)[:120])
            return
        assert self.hub is not None
        limiter = guard.MessageLimiter(s.msg_rate, s.msg_burst, s.bytes_rate, s.bytes_burst)
        peer: Peer | None = None
        doc: Document | None = None
        conn: _Conn | None = None

        async def reply(msg: dict) -> None:
            if peer is not None:
                peer.send_msg(msg)
            else:
                await ws.send_text(encode(msg))

        def admit(payload: str | bytes) -> int | str | None:
            """``None`` to go on with ``payload``, else why not: ``RATE_LIMITED``
            (answer with an error) or a close code (see :func:`refusal`)."""
            size = len(payload)
            if size * 4 > s.max_message_bytes and _payload_bytes(payload) > s.max_message_bytes:
                return CLOSE_TOO_BIG
            verdict = limiter.check(size)
            if verdict == "ok":
                return None
            return CLOSE_POLICY if verdict == "close" else RATE_LIMITED

        def refusal(verdict: int | str, joined: bool) -> tuple[int, str]:
            """The close code and reason for a message :func:`admit` refused with ``verdict``."""
            if verdict == CLOSE_TOO_BIG:
                return CLOSE_TOO_BIG, f"message larger than {s.max_message_bytes} bytes" + (": split the edit" if joined else "")
            return CLOSE_POLICY, "message flood"

        def received(payload: str | bytes) -> dict | None:
            """A message that came while this task waited (see ``DirectWebSocketProtocol.receiver``).

            Runs the checks and parsing of the loop below, and an edit's usual
            case (``Document.offer``), in uvicorn's ``data_received``; anything
            that must wait goes on in this task, as the event returned.
            """
            assert peer is not None and doc is not None
            if peer.closed:
                return _END
            try:
                verdict = admit(payload)
                if verdict is not None:
                    if verdict == RATE_LIMITED:
                        peer.send_msg(error_msg(RATE_LIMITED, _SLOW_DOWN))
                        return None
                    peer.kick(*refusal(verdict, joined=True))
                    return _END
                try:
                    msg = protocol.parse(payload)
                    if type(msg) is not Submit or not doc.offer(peer, msg):
                        return {"type": _CHECKED, "msg": msg}
                except ProtocolError as exc:
                    peer.send_msg(error_msg(exc.code, exc.message, exc.id))
                return _END if peer.closed else None
            except Exception as exc:  # raised in the task instead, as if it had happened there
                return {"type": _FAILED, "exc": exc}

        # After accept, the raw ASGI receive: Starlette's WebSocket.receive only
        # re-checks the message type on the way, and we look at it ourselves.
        receive = ws._receive
        try:
            while True:
                message = await receive()
                kind = message["type"]
                if kind == _CHECKED:  # checked and parsed by received()
                    msg = message["msg"]
                elif kind == "websocket.disconnect" or kind == _END_TYPE:
                    break
                elif kind == _FAILED:
                    raise message["exc"]
                else:
                    msg = None
                    text = message.get("text")
                    payload = text if text is not None else message.get("bytes") or b""
                    verdict = admit(payload)
                    if verdict is not None:
                        if verdict == RATE_LIMITED:
                            await reply(error_msg(RATE_LIMITED, _SLOW_DOWN))
                            continue
                        if peer is not None:
                            peer.kick(*refusal(verdict, joined=True))
                            break
                        await ws.close(*refusal(verdict, joined=False))
                        return
                try:
                    if msg is None:
                        msg = protocol.parse(payload)
                    if peer is None or doc is None:
                        if not isinstance(msg, Join):
                            raise ProtocolError(BAD_MESSAGE, "send 'join' first", getattr(msg, "id", None))
                        user = msg.user
                        if grant.name:  # a name vouched for by the token beats a self-chosen one
                            user = protocol.User(grant.name, user.color if user else "")
                        peer = Peer(user, grant.role, s.client_queue_size)
                        peer.batch = msg.batch
                        conn = _Conn(self, ws, peer)
                        try:
                            doc = await self.hub.join(doc_id, peer, msg.since)
                        except ProtocolError:
                            peer, conn = None, None
                            raise
                        if conn.direct is not None:
                            conn.direct.receiver = received
                    elif isinstance(msg, Submit):
                        if not doc.offer(peer, msg):
                            await doc.submit(peer, msg)
                    elif isinstance(msg, Presence):
                        await doc.presence(peer, msg)
                    else:
                        raise ProtocolError(BAD_MESSAGE, "already joined: 'join' is only the first message")
                except ProtocolError as exc:
                    await reply(error_msg(exc.code, exc.message, exc.id))
                if peer is not None and peer.closed:
                    break
        except WebSocketDisconnect:
            pass
        finally:
            if conn is not None and conn.direct is not None:
                conn.direct.receiver = None
            if peer is not None and conn is not None:
                if doc is not None:
                    doc.remove(peer)
                if peer.closed:  # closed by the server: send what it queued, then the close frame
                    conn.start_drain()
                else:
                    peer.closed = True  # the client went away: nothing more to send
                if conn.drain is not None:
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await asyncio.wait_for(asyncio.shield(conn.drain), timeout=5)

    # -- fan-out -----------------------------------------------------------------

    def _schedule(self, conn: "_Conn") -> None:
        """Flush ``conn`` at the end of this event-loop turn, with every other connection that has frames."""
        self._dirty.append(conn)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """Write what the hub queued this turn: one transport write per connection.

        A broadcast is encoded into frame bytes once, whoever receives it
        (the cache is keyed by the identity of the hub's encoded message, and
        keeps the message alive so the key stays unique until the end).
        """
        self._flush_scheduled = False
        dirty, self._dirty = self._dirty, []
        cache: dict[int, tuple[str, bytes]] = {}
        for conn in dirty:
            try:
                conn.flush(cache)
            except Exception:  # one broken connection must not hold back the others' frames
                log.exception("writing to a client failed; closing that connection")
                conn.peer.kick(CLOSE_INTERNAL, "the server could not write to this connection; reconnect", flush=False)

    # -- HTTP API ---------------------------------------------------------------

    def _doc_param(self, request: Request) -> str:
        doc = request.path_params["doc"]
        if not protocol.valid_doc_name(doc):
            raise HTTPException(404, "invalid document name: use 1-128 of A-Z a-z 0-9 . _ - not starting with '.'")
        return doc

    def _grant(self, request: Request, doc: str | None) -> auth.Grant:
        """The caller's grant for ``doc``; raises HTTP 401/403 as the token deserves."""
        token = auth.extract_token(request.headers.get("authorization"), request.query_params.get("token"))
        try:
            return auth.authorize(self.settings.secret, token, doc)
        except auth.AuthError as exc:
            raise HTTPException(exc.http_status, str(exc)) from None

    async def healthz(self, request: Request) -> Response:
        try:
            assert self.store is not None
            await self.store.ping()
        except Exception as exc:
            return JSONResponse({"status": "unavailable", "reason": str(exc)}, status_code=503)
        return JSONResponse({"status": "ok"})

    async def list_docs(self, request: Request) -> Response:
        grant = self._grant(request, None)
        assert self.store is not None
        return JSONResponse([d.to_json() for d in await self.store.list_docs() if grant.allows(d.id)])

    async def get_doc(self, request: Request) -> Response:
        doc = self._doc_param(request)
        self._grant(request, doc)
        assert self.hub is not None
        rev, text = await self.hub.read(doc)
        return JSONResponse({"id": doc, "rev": rev, "text": text})

    async def get_text(self, request: Request) -> Response:
        doc = self._doc_param(request)
        self._grant(request, doc)
        assert self.hub is not None
        _, text = await self.hub.read(doc)
        return PlainTextResponse(text, media_type="text/plain; charset=utf-8")

    async def put_text(self, request: Request) -> Response:
        doc = self._doc_param(request)
        if self._grant(request, doc).role != "edit":
            raise HTTPException(403, "this token is read-only: it may not change the document")
        assert self.hub is not None
        body = await request.body()
        if len(body) > self.settings.max_message_bytes:
            return JSONResponse(
                {"error": "too_large", "message": f"the body exceeds {self.settings.max_message_bytes} bytes"}, status_code=413
            )
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return JSONResponse({"error": "bad_message", "message": "the body must be UTF-8 text"}, status_code=400)
        try:
            rev = await self.hub.replace(doc, text)
        except ProtocolError as exc:
            status = 413 if exc.code == protocol.TOO_LARGE else 400
            return JSONResponse({"error": exc.code, "message": exc.message}, status_code=status)
        return JSONResponse({"id": doc, "rev": rev})

    async def share(self, request: Request) -> Response:
        """Mint a link to this document with the asked role, within the caller's own rights."""
        doc = self._doc_param(request)
        grant = self._grant(request, doc)
        try:
            body = await request.json()
        except ValueError:
            body = None
        role = body.get("role") if isinstance(body, dict) else None
        # A path, not an absolute URL: behind a TLS proxy the app cannot know the public scheme and host.
        page = request.app.url_path_for("editor", doc=doc)
        try:
            link = auth.share(self.settings.secret, grant, doc, role if isinstance(role, str) else "", page)
        except ValueError as exc:
            return JSONResponse({"error": "bad_request", "message": str(exc)}, status_code=400)
        except auth.AuthError as exc:
            return JSONResponse({"error": "forbidden", "message": str(exc)}, status_code=exc.http_status)
        return JSONResponse(link.to_json(), headers={"Cache-Control": "no-store"})

    async def metrics(self, request: Request) -> Response:
        hub = self.hub
        lines = [
            "# HELP collab_documents_open Documents loaded in memory.",
            "# TYPE collab_documents_open gauge",
            f"collab_documents_open {len(hub.docs) if hub else 0}",
            "# HELP collab_clients Connected clients (joined).",
            "# TYPE collab_clients gauge",
            f"collab_clients {hub.connections if hub else 0}",
            "# HELP collab_ops_applied_total Operations applied and committed.",
            "# TYPE collab_ops_applied_total counter",
            f"collab_ops_applied_total {hub.ops_applied if hub else 0}",
            "# HELP collab_conflicts_total Batches whose revisions another process took first (retried).",
            "# TYPE collab_conflicts_total counter",
            f"collab_conflicts_total {hub.conflicts if hub else 0}",
            "# HELP collab_remote_ops_total Operations committed by other processes and relayed here.",
            "# TYPE collab_remote_ops_total counter",
            f"collab_remote_ops_total {hub.remote_applied if hub else 0}",
            "# HELP collab_store_commits_total Transactions the store committed (with SQLite, one fsync each).",
            "# TYPE collab_store_commits_total counter",
            f"collab_store_commits_total {getattr(self.store, 'commits', 0)}",
            "# HELP collab_store_ops_written_total Operations the store wrote (per commit: how much group commit groups).",
            "# TYPE collab_store_ops_written_total counter",
            f"collab_store_ops_written_total {getattr(self.store, 'ops_written', 0)}",
            "# HELP collab_frames_sent_total WebSocket frames sent to clients.",
            "# TYPE collab_frames_sent_total counter",
            f"collab_frames_sent_total {self.frames_sent}",
            "# HELP collab_messages_coalesced_total Messages sent inside a batch frame instead of their own frame.",
            "# TYPE collab_messages_coalesced_total counter",
            f"collab_messages_coalesced_total {self.frames_coalesced}",
        ]
        return PlainTextResponse("\n".join(lines) + "\n" + guard.metrics_text(), media_type="text/plain; version=0.0.4")

    # -- pages ----------------------------------------------------------------------

    def _page(self, name: str) -> Response:
        root = static_dir()
        if root is None or not (root / name).is_file():
            return PlainTextResponse(
                "The browser editor is not built: run frontend/build.sh (the API and WebSocket work without it).",
                status_code=404,
            )
        return FileResponse(root / name, media_type="text/html; charset=utf-8")

    async def index(self, request: Request) -> Response:
        return self._page("index.html")

    async def editor(self, request: Request) -> Response:
        self._doc_param(request)
        return self._page("editor.html")


class _Conn:
    """The way out of one WebSocket connection: frames the hub queued for its peer.

    Written synchronously through uvicorn's ``collab.direct`` extension
    (:mod:`collab.transport`) when the server offers it and the client keeps
    up; otherwise, and to close, a drain task awaits ASGI ``send`` (which
    waits while the client is slow, and raises once it is gone). While that
    task runs it owns the connection's output, so frames stay in order.
    """

    __slots__ = ("app", "ws", "peer", "direct", "drain", "closed_sent")

    def __init__(self, app: CollabApp, ws: WebSocket, peer: Peer) -> None:
        self.app = app
        self.ws = ws
        self.peer = peer
        self.direct = ws.scope.get("extensions", {}).get(DIRECT_EXTENSION)
        self.drain: asyncio.Task[None] | None = None
        self.closed_sent = False
        peer.notify = self.schedule

    def schedule(self) -> None:
        self.app._schedule(self)

    def flush(self, cache: dict[int, tuple[str, bytes]]) -> None:
        if self.drain is not None:
            return  # the drain task owns the output and looks at the outbox again before it ends
        peer = self.peer
        if peer.closed:
            self.start_drain()
            return
        direct = self.direct
        if not peer.outbox:
            return
        if direct is None:
            self.start_drain()
            return
        frames = peer.outbox
        texts = self._texts(frames)
        parts = []
        for text in texts:
            hit = cache.get(id(text))
            if hit is None:
                hit = cache[id(text)] = (text, direct.encode_text(text))
            parts.append(hit[1])
        if direct.write_frames(parts[0] if len(parts) == 1 else b"".join(parts)):
            peer.outbox = []
            self._count(frames, texts)
        else:  # the client is slow (or going away): wait for it in a task
            self.start_drain()

    def _texts(self, frames: list[str]) -> list[str]:
        """The WebSocket messages for ``frames``: one ``batch`` frame if the client takes them, else each."""
        if self.peer.batch and len(frames) > 1:
            return [protocol.batch_frame(frames)]
        return frames

    def _count(self, frames: list[str], texts: list[str]) -> None:
        self.app.frames_sent += len(texts)
        self.app.frames_coalesced += len(frames) - len(texts)

    def start_drain(self) -> None:
        if self.drain is None and not self.closed_sent:
            self.drain = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        """Send the outbox through ASGI ``send`` until it is empty; close if the hub asked to."""
        peer = self.peer
        send = self.ws._send  # uvicorn's own send: a connection that is gone raises
        try:
            while True:
                if peer.closed and not peer.flush and peer.outbox:
                    peer.take()  # dropped as too slow: don't wait on it any longer
                    guard.note_slow_client_drop()
                frames = peer.take()
                if frames:
                    texts = self._texts(frames)
                    for text in texts:
                        await send({"type": "websocket.send", "text": text})
                    self._count(frames, texts)
                    continue
                if peer.closed:
                    self.closed_sent = True
                    if peer.close_code != 1000:
                        await self.ws.close(peer.close_code, peer.close_reason[:120])
                return
        except Exception:  # the connection went away under us
            self.closed_sent = True
            if not peer.closed:
                peer.closed = True
                if peer.doc is not None:
                    peer.doc.remove(peer)
        finally:
            self.drain = None


def create_app(settings: Settings | None = None, store: Store | None = None) -> Starlette:
    """Build the ASGI app; with no arguments the settings come from the environment."""
    settings = settings or Settings.from_env()
    state = CollabApp(settings, store)
    root = static_dir()
    ws_route = WebSocketRoute("/ws/{doc:path}", state.websocket)
    routes = [
        Route("/healthz", state.healthz),
        Route("/metrics", state.metrics),
        Route("/api/docs", state.list_docs),
        Route("/api/docs/{doc}", state.get_doc),
        Route("/api/docs/{doc}/text", state.get_text, methods=["GET"]),
        Route("/api/docs/{doc}/text", state.put_text, methods=["PUT"]),
        Route("/api/docs/{doc}/share", state.share, methods=["POST"]),
        ws_route,
        Route("/", state.index),
        Route("/d/{doc}", state.editor, name="editor"),
    ]
    if root is not None:
        routes.append(Mount("/static", StaticFiles(directory=str(root)), name="static"))
    app = _Starlette(routes=routes, lifespan=state.lifespan, middleware=[Middleware(SecurityHeaders)])
    app.ws_fast_path = (ws_route.path_regex.match, state.asgi_websocket)
    app.state.collab = state
    return app


class _Starlette(Starlette):
    """Starlette, with ``/ws/{doc}`` connections handed to the handler directly.

    The match is the route's own regex, so exactly the paths the router
    would give ``state.websocket`` go there; anything else (other paths, a
    ``root_path`` to strip, HTTP, lifespan) takes the usual middleware stack.
    """

    ws_fast_path: tuple | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and self.ws_fast_path is not None and not scope.get("root_path"):
            match, handler = self.ws_fast_path
            m = match(scope["path"])
            if m is not None:
                scope["app"] = self
                await handler(scope, receive, send, m["doc"])
                return
        await super().__call__(scope, receive, send)


class SecurityHeaders:
    """Add :data:`collab.auth.SECURITY_HEADERS` to every HTTP response (pure ASGI, so streaming is untouched)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.headers = [(k.lower().encode(), v.encode()) for k, v in auth.SECURITY_HEADERS.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = dict(message)
                message["headers"] = list(message.get("headers", [])) + self.headers
            await send(message)

        await self.app(scope, receive, send_with_headers)
