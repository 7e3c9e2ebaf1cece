"""The Starlette app: routes, the HTTP API, the frontend's files, and the state behind them.

:class:`CollabApp` holds the settings, the store and the hub. A WebSocket
on ``/ws/{doc}`` is served by a :class:`collab.connection.Session` (one per
connection); the HTTP API reads and replaces documents through the hub and
refuses a body larger than ``max_message_bytes`` from its ``Content-Length``
or while it streams, never after reading it whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any, AsyncIterator, Coroutine

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import api_docs, api_tokens, auth, metrics, protocol, workermetrics
from .assets import REVALIDATE, Assets
from .backplane import open_backplane
from .config import Settings
from .connection import Fanout, Session
from .httpbody import read_body
from .hub import Hub, HubConfig
from .lifecycle import DELETED_REASON, RENAMED_REASON, Trash
from .protocol import CLOSE_NO_DOCUMENT, ProtocolError
from .revocation import Revocations
from .store import Store, open_store
from .store.history import MAX_SESSIONS, HistoryError, NoSuchDocument, RevisionGone
from .store.base import Credential, DocInfo
from .titles import HEAD_CHARS, first_heading

log = logging.getLogger("collab.app")

#: The largest body of ``POST /api/docs/{doc}/share`` and ``/restore`` (a small JSON object).
SHARE_BODY_BYTES = 4096


def _count(request: Request, name: str, default: int | None, largest: int | None = None) -> int | None:
    """Query parameter ``name`` as a whole number >= 0 (at most ``largest``); ``default`` when absent."""
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or (largest is not None and int(raw) > largest):
        bound = f" up to {largest}" if largest is not None else ""
        raise _Refused(400, protocol.BAD_REV if name in ("rev", "before") else protocol.BAD_MESSAGE,
                       f"{name}={raw!r} must be a whole number >= 0{bound}")
    return int(raw)


class _Refused(Exception):
    """A history request refused: answered ``{"error", "message"}`` with ``status``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _history_refusal(exc: HistoryError) -> _Refused:
    if isinstance(exc, NoSuchDocument):
        return _Refused(404, "not_found", str(exc))
    if isinstance(exc, RevisionGone):
        return _Refused(410, protocol.REV_GONE, str(exc))
    return _Refused(400, protocol.BAD_REV, str(exc))


def static_dir() -> Path | None:
    """Where the built frontend is: ``COLLAB_STATIC_DIR``, the source checkout, or the installed package."""
    env = os.environ.get("COLLAB_STATIC_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[2] / "frontend" / "dist")
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
        #: Revoked and lowered credentials, and the sessions using each (set up with the store).
        self.revocations = Revocations(store)
        #: Deleted documents (the trash), and closing their editors.
        self.trash = Trash(store, settings.trash_days, self._document_deleted, self._document_renamed)
        #: The first heading last recorded per open document, so that only a change is written.
        self.headings: dict[str, str | None] = {}
        self._owns_store = store is None
        root = static_dir()
        #: The built frontend's files, compressed and hashed in memory (``None``: not built).
        self.assets: Assets | None = None if root is None else Assets(root)
        #: Writes every session's queued frames once per event-loop turn.
        self.fanout = Fanout()

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        auth.install_log_redaction()  # after uvicorn configured logging: no token in any log line
        if self.settings.secret:
            auth.check_secret(self.settings.secret)
        if self.assets is not None:
            await asyncio.to_thread(self.assets.warm)  # gzip the bundle once, off the event loop
        if self.store is None:
            self.store = await open_store(self.settings)
            self.hub = Hub(self.store, HubConfig.from_settings(self.settings), backplane=await open_backplane(self.settings))
            self.revocations.store = self.trash.store = self.store
        hub = self.hub
        self.trash.in_use = lambda: set(hub.docs) if hub is not None else set()
        if hub is not None:
            hub.on_unload = self._unloading
        await self.revocations.start()
        await self.trash.start()
        shared = workermetrics.shared()
        sharing = asyncio.create_task(self._share_metrics(shared)) if shared is not None else None
        try:
            yield
        finally:
            assert self.hub is not None
            if sharing is not None:
                sharing.cancel()
            await self.trash.close()
            await self.revocations.close()
            for doc in list(self.hub.docs.values()):  # the list reads titles from the store after a restart
                with contextlib.suppress(Exception):
                    await self._record_heading(doc.id, doc.text)
            await self.hub.close()
            if self._owns_store:
                await self.store.close()
            if shared is not None:  # the last counts, for the workers that go on
                self._write_metrics(shared)

    async def _share_metrics(self, path: str) -> None:
        """Write this worker's metrics for the others' scrapes, now and every ``WRITE_INTERVAL`` seconds."""
        while True:
            self._write_metrics(path)
            await asyncio.sleep(workermetrics.WRITE_INTERVAL)

    def _write_metrics(self, path: str) -> None:
        try:
            workermetrics.write(path, self.metric_values())
        except OSError as exc:  # the directory went away (the group is stopping): scrapes just see less
            log.warning("could not share this worker's metrics (%s)", exc)

    # -- WebSocket -------------------------------------------------------------

    def asgi_websocket(self, scope: Scope, receive: Receive, send: Send, doc_id: str) -> Coroutine[Any, Any, None]:
        """``/ws/{doc}`` as a plain ASGI handler, ahead of Starlette's middleware stack.

        None of that stack acts on a WebSocket (SecurityHeaders only touches
        http; the error and exception middleware only wrap ``send``), and
        skipping it drops its coroutine frames per idle connection and a
        wrapper per frame sent. Returns the session's coroutine rather than
        awaiting it, one frame less per connection.
        """
        return Session(self, scope, receive, send, doc_id).run()

    # -- HTTP API ---------------------------------------------------------------

    def _doc_param(self, request: Request) -> str:
        doc = request.path_params["doc"]
        if not protocol.valid_doc_name(doc):
            raise HTTPException(404, "invalid document name: use 1-128 of A-Z a-z 0-9 . _ - not starting with '.'")
        return doc

    def _live_doc(self, request: Request) -> tuple[str, auth.Grant]:
        """The document of the request and the caller's grant for it; then, to a caller it reaches only,
        404 while the document is in the trash and 307 to its new name if it was renamed."""
        doc = self._doc_param(request)
        grant = self._grant(request, doc)
        if self.trash.is_deleted(doc):
            raise HTTPException(404, DELETED_REASON)
        new = self.trash.renamed.get(doc)
        if new is not None:
            path = request.url.path.replace(f"/{doc}", f"/{new}", 1)
            query = f"?{request.url.query}" if request.url.query else ""
            raise HTTPException(307, RENAMED_REASON + new, headers={"Location": path + query})
        return doc, grant

    def _document_renamed(self, old: str, new: str) -> None:
        """``old`` is now ``new``: close its editors here (4004, naming the new name)."""
        open_doc = self.hub.docs.get(old) if self.hub is not None else None
        if open_doc is not None:
            open_doc.kick_all(CLOSE_NO_DOCUMENT, RENAMED_REASON + new)

    async def record_headings(self) -> None:
        """Bring the first heading of each document open here up to date in the store (the list shows them)."""
        assert self.hub is not None
        for doc in list(self.hub.docs.values()):
            await self._record_heading(doc.id, doc.text)

    async def documents(self) -> list[DocInfo]:
        """The whole document list, with the first heading of each document open here brought up to date first."""
        assert self.store is not None
        await self.record_headings()
        return await self.store.list_docs()

    async def heading(self, doc_id: str) -> str | None:
        """``doc_id``'s first heading as the list shows it (brought up to date first if it is open here)."""
        assert self.store is not None and self.hub is not None
        open_doc = self.hub.docs.get(doc_id)
        if open_doc is not None:
            await self._record_heading(doc_id, open_doc.text)
            return self.headings[doc_id]
        return await self.store.heading(doc_id)

    async def _record_heading(self, doc_id: str, text: Any) -> None:
        heading = first_heading(text.head(HEAD_CHARS))
        if doc_id not in self.headings or self.headings[doc_id] != heading:
            assert self.store is not None
            await self.store.set_heading(doc_id, heading)
            self.headings[doc_id] = heading

    def _unloading(self, doc: Any) -> None:
        """A document leaves memory: record its first heading (the list reads it from the store from now on)."""
        if doc.failed or len(doc.text) == 0:
            self.headings.pop(doc.id, None)
            return

        async def record() -> None:
            try:
                await self._record_heading(doc.id, doc.text)
            except Exception as exc:  # the title waits for the next unload
                log.warning("recording the title of %r failed: %s", doc.id, exc)
            finally:
                self.headings.pop(doc.id, None)

        asyncio.get_running_loop().create_task(record())

    def _document_deleted(self, doc: str) -> None:
        """``doc`` went into the trash: close its editors here (4004, saying so)."""
        open_doc = self.hub.docs.get(doc) if self.hub is not None else None
        if open_doc is not None:
            open_doc.kick_all(CLOSE_NO_DOCUMENT, DELETED_REASON)

    def _grant(self, request: Request, doc: str | None) -> auth.Grant:
        """The caller's grant for ``doc``; raises HTTP 401/403 as the token deserves."""
        token = auth.extract_token(request.headers.get("authorization"), request.query_params.get("token"))
        try:
            return self.revocations.check(auth.authorize(self.settings.secret, token, doc))
        except auth.AuthError as exc:
            raise HTTPException(exc.http_status, str(exc)) from None

    def operator_notice(self) -> str | None:
        """What every page should tell the operator, or ``None``: documents on a disk that looks temporary.

        The start-up warning's substance, without the data directory's path
        (anyone who opens the editor reads it).
        """
        s = self.settings
        if s.storage_warning is None:
            return None
        return (f"Operator notice: this server keeps documents in a SQLite file on the local disk of {s.platform}, "
                "which is usually wiped on every restart and deploy, so documents may be lost. Set DATABASE_URL "
                "to a PostgreSQL database, or COLLAB_DATA_DIR to a persistent volume.")

    async def healthz(self, request: Request) -> Response:
        """200 when the store answers and reports no problem; else 503 with the reason.

        Carries ``notice`` (see :meth:`operator_notice`) when there is one; the editor shows it.
        """
        try:
            assert self.store is not None
            await self.store.ping()
            problem = self.store.health()
        except Exception as exc:
            problem = str(exc) or type(exc).__name__
        if problem is not None:
            return JSONResponse({"status": "unavailable", "reason": problem}, status_code=503)
        notice = self.operator_notice()
        return JSONResponse({"status": "ok", "notice": notice} if notice else {"status": "ok"})

    async def list_docs(self, request: Request) -> Response:
        return await api_docs.list_docs(self, request)

    async def _history(self, request: Request, read: Any) -> Response:
        """Answer a history request: ``read(doc, grant)`` returns the response; refusals become 400/404/410."""
        doc = self._doc_param(request)
        grant = self._grant(request, doc)
        try:
            return await read(doc, grant)
        except HistoryError as exc:
            refused = _history_refusal(exc)
        except _Refused as exc:
            refused = exc
        if refused.status == 404:
            return PlainTextResponse(refused.message, status_code=404)
        return JSONResponse({"error": refused.code, "message": refused.message}, status_code=refused.status)

    async def get_doc(self, request: Request) -> Response:
        if "rev" in request.query_params:
            return await self._history(request, lambda doc, _: self._doc_at(request, doc, json=True))
        doc, _ = self._live_doc(request)
        assert self.hub is not None
        rev, text = await self.hub.read(doc)
        return JSONResponse({"id": doc, "rev": rev, "text": text})

    async def get_text(self, request: Request) -> Response:
        if "rev" in request.query_params:
            return await self._history(request, lambda doc, _: self._doc_at(request, doc, json=False))
        doc, _ = self._live_doc(request)
        assert self.hub is not None
        _, text = await self.hub.read(doc)
        return PlainTextResponse(text, media_type="text/plain; charset=utf-8")

    async def _doc_at(self, request: Request, doc: str, json: bool) -> Response:
        """The text at ``?rev=N``: as ``{"id","rev","text"}`` or plain text."""
        assert self.store is not None
        rev = _count(request, "rev", 0)
        assert rev is not None
        text = await self.store.text_at(doc, rev)
        if json:
            return JSONResponse({"id": doc, "rev": rev, "text": text})
        return PlainTextResponse(text, media_type="text/plain; charset=utf-8")

    async def revisions(self, request: Request) -> Response:
        """``?before=REV&limit=N``: editing sessions, newest first."""
        async def read(doc: str, _: auth.Grant) -> Response:
            assert self.store is not None
            before = _count(request, "before", None)
            limit = _count(request, "limit", 50, MAX_SESSIONS)
            assert limit is not None
            found = await self.store.sessions(doc, before, limit)
            return JSONResponse([s.to_json() for s in found])
        return await self._history(request, read)

    async def authorship(self, request: Request) -> Response:
        """``?rev=N`` (default: now): who wrote each span of the text, in code points."""
        async def read(doc: str, _: auth.Grant) -> Response:
            assert self.store is not None
            return JSONResponse(await self.store.authorship(doc, _count(request, "rev", None)))
        return await self._history(request, read)

    async def restore(self, request: Request) -> Response:
        """``{"rev": N}``: one ordinary edit turning the current text into revision N's."""
        async def write(doc: str, grant: auth.Grant) -> Response:
            if grant.role != "edit":
                raise HTTPException(403, "this token is read-only: it may not restore a revision")
            raw = await read_body(request, SHARE_BODY_BYTES)
            if raw is None:
                raise _Refused(413, protocol.TOO_LARGE, f"the body exceeds {SHARE_BODY_BYTES} bytes")
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
            rev = body.get("rev") if isinstance(body, dict) else None
            if type(rev) is not int or rev < 0:
                raise _Refused(400, protocol.BAD_REV, 'send {"rev": N}, N a revision of the document (a whole number >= 0)')
            assert self.store is not None and self.hub is not None
            text = await self.store.text_at(doc, rev)
            try:
                new = await self.hub.replace(doc, text, author=grant.name or "")
            except ProtocolError as exc:
                raise _Refused(413 if exc.code == protocol.TOO_LARGE else 400, exc.code, exc.message) from None
            return JSONResponse({"id": doc, "rev": new, "restored": rev})
        return await self._history(request, write)

    async def put_text(self, request: Request) -> Response:
        doc, grant = self._live_doc(request)
        if grant.role != "edit":
            raise HTTPException(403, "this token is read-only: it may not change the document")
        assert self.hub is not None
        limit = self.settings.max_message_bytes
        body = await read_body(request, limit)
        if body is None:
            return JSONResponse({"error": protocol.TOO_LARGE, "message": f"the body exceeds {limit} bytes"}, status_code=413)
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return JSONResponse({"error": protocol.BAD_MESSAGE, "message": "the body must be UTF-8 text"}, status_code=400)
        try:
            rev = await self.hub.replace(doc, text, author=grant.name or "")
        except ProtocolError as exc:
            status = 413 if exc.code == protocol.TOO_LARGE else 400
            return JSONResponse({"error": exc.code, "message": exc.message}, status_code=status)
        return JSONResponse({"id": doc, "rev": rev})

    async def share(self, request: Request) -> Response:
        """Mint a link to this document with the asked role, within the caller's own rights."""
        doc, grant = self._live_doc(request)
        raw = await read_body(request, SHARE_BODY_BYTES)
        if raw is None:
            return JSONResponse({"error": protocol.TOO_LARGE, "message": f"the body exceeds {SHARE_BODY_BYTES} bytes"},
                                status_code=413)
        try:
            body = json.loads(raw) if raw else None
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
            return JSONResponse({"error": protocol.FORBIDDEN, "message": str(exc)}, status_code=exc.http_status)
        if link.id is not None:  # recorded, so that the document's links can be listed and revoked
            await self.revocations.record(Credential(link.id, doc, link.role, link.issued, link.expires, grant.name))
        return JSONResponse(link.to_json(), headers={"Cache-Control": "no-store"})

    async def delete_doc(self, request: Request) -> Response:
        return await api_docs.delete(self, request)

    async def restore_doc(self, request: Request) -> Response:
        return await api_docs.restore(self, request)

    async def list_trash(self, request: Request) -> Response:
        return await api_docs.trash(self, request)

    async def set_title(self, request: Request) -> Response:
        return await api_docs.set_title(self, request)

    async def get_title(self, request: Request) -> Response:
        return await api_docs.get_title(self, request)

    async def rename(self, request: Request) -> Response:
        return await api_docs.rename(self, request)

    async def links(self, request: Request) -> Response:
        return await api_tokens.links(self, request)

    async def revoke(self, request: Request) -> Response:
        return await api_tokens.revoke(self, request)

    async def lower_role(self, request: Request) -> Response:
        return await api_tokens.lower_role(self, request)

    def metric_values(self) -> metrics.Values:
        """This process's values of every family of :func:`metric_families`."""
        hub = self.hub
        bus = hub.backplane if hub else None
        return {
            "collab_documents_open": len(hub.docs) if hub else 0,
            "collab_clients": hub.connections if hub else 0,
            "collab_ops_applied_total": hub.ops_applied if hub else 0,
            "collab_conflicts_total": hub.conflicts if hub else 0,
            "collab_remote_ops_total": hub.remote_applied if hub else 0,
            "collab_remote_ops_sealed_total": hub.counters.remote_sealed if hub else 0,
            "collab_backplane_rejected_total": bus.rejected if bus else 0,
            "collab_backplane_published_total": bus.published if bus else 0,
            "collab_backplane_received_total": bus.received if bus else 0,
            "collab_backplane_bundles_total": bus.bundles if bus else 0,
            "collab_store_commits_total": getattr(self.store, "commits", 0),
            "collab_store_ops_written_total": getattr(self.store, "ops_written", 0),
            "collab_store_exclusive_turns_total": getattr(self.store, "exclusive_turns", 0),
            "collab_frames_sent_total": self.fanout.frames_sent,
            "collab_messages_coalesced_total": self.fanout.frames_coalesced,
            metrics.ACK_LATENCY_FAMILY.name: metrics.ACK_LATENCY.value(),
            metrics.STORE_SYNC_FAMILY.name: _sync_latency(self.store),
            **metrics.guard_values(),
        }

    async def metrics(self, request: Request) -> Response:
        """Prometheus text; with several workers, the sum over all of them (see :mod:`collab.workermetrics`)."""
        families = metric_families()
        values = self.metric_values()
        shared = workermetrics.shared()
        if shared is not None:
            values = metrics.merge(families, workermetrics.exchange(shared, values))
        return PlainTextResponse(metrics.render(families, values), media_type="text/plain; version=0.0.4")

    # -- pages ----------------------------------------------------------------------

    def _page(self, request: Request, name: str) -> Response:
        if self.assets is None or self.assets.get(name) is None:
            return PlainTextResponse(
                "The browser editor is not built: run frontend/build.sh (the API and WebSocket work without it).",
                status_code=404,
            )
        return self.assets.response(request, name, cache_control=REVALIDATE)

    async def index(self, request: Request) -> Response:
        return self._page(request, "index.html")

    async def editor(self, request: Request) -> Response:
        doc = self._doc_param(request)
        new = self.trash.renamed.get(doc)
        # On an open server the page redirects at once. With a secret the page cannot tell who asks (the token
        # is in the fragment), so the new name is told only over the WebSocket, after the token is checked.
        if new is not None and not self.settings.secret:
            return RedirectResponse(request.url_for("editor", doc=new).path, status_code=307)
        return self._page(request, "editor.html")

    async def static(self, request: Request) -> Response:
        """``/static/{name}``: a file of the built frontend (see :mod:`collab.assets`)."""
        assert self.assets is not None
        return self.assets.response(request, request.path_params["name"])


def _sync_latency(store: Store | None) -> dict:
    """The store's commit-sync histogram (empty for a store that keeps none)."""
    histogram = getattr(store, "sync_latency", None)
    return (histogram if isinstance(histogram, metrics.Histogram) else metrics.Histogram()).value()


def metric_families() -> list[metrics.Family]:
    """Everything ``/metrics`` reports, in order."""
    return metrics.APP_FAMILIES + metrics.guard_families()


def create_app(settings: Settings | None = None, store: Store | None = None) -> Starlette:
    """Build the ASGI app; with no arguments the settings come from the environment."""
    settings = settings or Settings.from_env()
    state = CollabApp(settings, store)
    ws_route = WebSocketRoute("/ws/{doc:path}", _WebSocketEndpoint(state))
    routes = [
        Route("/healthz", state.healthz),
        Route("/metrics", state.metrics),
        Route("/api/docs", state.list_docs),
        Route("/api/docs/{doc}", state.get_doc, methods=["GET", "HEAD"]),
        Route("/api/docs/{doc}", state.delete_doc, methods=["DELETE"]),
        Route("/api/trash/{doc}/restore", state.restore_doc, methods=["POST"]),
        Route("/api/trash", state.list_trash, methods=["GET"]),
        Route("/api/docs/{doc}/title", state.set_title, methods=["POST"]),
        Route("/api/docs/{doc}/title", state.get_title, methods=["GET"]),
        Route("/api/docs/{doc}/rename", state.rename, methods=["POST"]),
        Route("/api/docs/{doc}/text", state.get_text, methods=["GET"]),
        Route("/api/docs/{doc}/text", state.put_text, methods=["PUT"]),
        Route("/api/docs/{doc}/share", state.share, methods=["POST"]),
        Route("/api/docs/{doc}/restore", state.restore, methods=["POST"]),
        Route("/api/docs/{doc}/revisions", state.revisions),
        Route("/api/docs/{doc}/authorship", state.authorship),
        Route("/api/docs/{doc}/links", state.links, methods=["GET"]),
        Route("/api/tokens/revoke", state.revoke, methods=["POST"]),
        Route("/api/tokens/role", state.lower_role, methods=["POST"]),
        ws_route,
        Route("/", state.index),
        Route("/d/{doc}", state.editor, name="editor"),
    ]
    if state.assets is not None:
        routes.append(Route("/static/{name:path}", state.static, methods=["GET", "HEAD"], name="static"))
    app = _Starlette(routes=routes, lifespan=state.lifespan, middleware=[Middleware(SecurityHeaders)])
    app.ws_fast_path = (ws_route.path_regex.match, state.asgi_websocket)
    app.state.collab = state
    return app


class _Starlette(Starlette):
    """Starlette, with ``/ws/{doc}`` connections handed to the handler directly.

    The match is the route's own regex, so exactly the paths the router
    would give :class:`_WebSocketEndpoint` go there; anything else (other paths, a
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


class _WebSocketEndpoint:
    """``/ws/{doc}`` as a raw ASGI endpoint of Starlette's router (a class, so the router passes ASGI through)."""

    def __init__(self, state: CollabApp) -> None:
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await Session(self.state, scope, receive, send, scope["path_params"]["doc"]).run()


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
