"""The asyncio WebSocket driver of the collab client: connects a
:class:`~collab.clientstate.ClientState` to a server, reconnects with
exponential backoff and jitter, and offers the script API::

    async with collab.connect("ws://127.0.0.1:8000", "notes", user={"name": "bot"}) as d:
        await d.insert(0, "hello 👋")
        await d.synced()
        print(d.text, d.rev, d.peers)

The OT state machine itself, without I/O, is :mod:`collab.clientstate`; its
events and data types are in :mod:`collab.clientevents`.  They are
re-exported here, so ``from collab.client import ClientState`` keeps working.
Positions are code points (Python ``str`` indexing), as on the wire.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import random
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable, Union
from urllib.parse import quote, urlsplit, urlunsplit

from . import history_client, ot
from .aio import cancel_and_wait
from .history_client import HistoryError, Revision
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
    RetryLater,
    ServerError,
    TooLarge,
    Welcomed,
)
from .clientstate import ClientState
from .opsplit import CLOSE_ABNORMAL, dumps
from .ot import Operation
from .protocol import CLOSE_BAD_TOKEN, CLOSE_NO_DOCUMENT, CLOSE_NOT_ALLOWED, valid_doc_name
from .textdiff import diff_op

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
    "TooLarge",
    "ClientState",
    "Document",
    "Client",
    "connect",
    "diff_op",
    "ws_url",
    "http_url",
    "HistoryError",
    "Revision",
]

log = logging.getLogger("collab.client")

#: Close codes after which reconnecting cannot help: (error code, what to do).
PERMANENT_CLOSE_CODES = {
    CLOSE_BAD_TOKEN: ("unauthorized", "the server refused the token (missing, invalid or expired); "
                      "pass token=... (mint one with `collab token --doc NAME`)"),
    CLOSE_NOT_ALLOWED: ("forbidden", "the token is valid but does not cover this document; "
                        "mint one whose --doc pattern matches it"),
    CLOSE_NO_DOCUMENT: ("not_found", "no such document, or the name is invalid "
                        "(1-128 characters of A-Z a-z 0-9 . _ -, not starting with '.')"),
}

#: After this many failed attempts the backoff is long: used for overload and abuse closes.
_SLOW_DOWN_ATTEMPT = 4


@dataclass
class _Closed:
    """How a connection ended: its close code (``None`` if it never opened), reason and error."""

    code: int | None = None
    reason: str = ""
    error: BaseException | None = None


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


def ws_url(base: str, doc: str, token: str | None = None) -> str:
    """``http(s)://host`` or ``ws(s)://host`` + doc -> ``ws(s)://host/ws/{doc}?token=...``."""
    if not valid_doc_name(doc):
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


ChangeCallback = Callable[[Operation, Union[str, None]], Union[None, Awaitable[None]]]


class Document:
    """A live, collaboratively edited document (asyncio).

    Use ``async with connect(...) as d`` or ``d = await connect(...)`` and
    ``await d.close()``.  Edits apply to :attr:`text` at once and are sent in
    the background; :meth:`synced` waits for the server to acknowledge them.
    An edit too large for one frame goes out as several consecutive
    operations under the server's ``welcome.max_message_bytes``.
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
        self._http = (http_url(url), token)
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
        self._stuck = False

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
            await cancel_and_wait(self._task)
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

    # -- history (over HTTP) ---------------------------------------------------

    async def history(self, before: int | None = None, limit: int = 50) -> "list[Revision]":
        """Editing sessions, newest first (see :class:`collab.history_client.Revision`); ``before``
        keeps those ending before that revision. Raises ``HistoryError`` when refused."""
        return await history_client.revisions(self._http[0], self.doc, self._http[1], before, limit)

    async def text_at(self, rev: int) -> str:
        """The text at revision ``rev`` (``HistoryError`` ``rev_gone`` once thinned by the server's retention)."""
        return await history_client.text_at(self._http[0], self.doc, rev, self._http[1])

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
                        await ws.send(dumps(m))
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
        elif isinstance(ev, TooLarge):
            self._stuck = ev.stuck
            log.warning("connection closed for size (%s, a %d-byte message); sending the edit again "
                        "in pieces of at most %d bytes", ev.code, ev.nbytes, ev.limit)
        elif isinstance(ev, RetryLater):
            if self._retry_task is None or self._retry_task.done():
                self._retry_task = asyncio.ensure_future(self._retry(ev.id))

    async def _retry(self, op_id: str) -> None:
        await asyncio.sleep(0.5 + random.random())
        if self.state.inflight is not None and self.state.inflight.id == op_id:
            self.state.resend()
            await self._flush()

    async def _run(self) -> None:
        attempt = 0
        while not self._closing:
            welcomed_before = self.connections
            closed = await self._session()
            if self._closing:
                return
            if self.connections > welcomed_before:
                attempt = 0
            failure = self._permanent_failure(closed)
            if failure is not None:
                self._fail(failure)
                return
            if self._reconnect_now:
                self._reconnect_now = False
                delay = random.uniform(0, self.backoff_initial)
            else:
                if self._stuck:  # closed for size with nothing left to shrink: do not hammer the server
                    attempt = max(attempt, _SLOW_DOWN_ATTEMPT)
                cap = min(self.backoff_max, self.backoff_initial * (2 ** attempt))
                delay = cap / 2 + random.uniform(0, cap / 2)
                attempt += 1
            log.info("connection to %s lost (code %s %s); retrying in %.2f s",
                     self.doc, closed.code, closed.error or "", delay)
            await asyncio.sleep(delay)

    async def _session(self) -> _Closed:
        """One connection: join, then feed each message to the state machine until it closes."""
        import websockets
        from websockets.exceptions import ConnectionClosed, InvalidStatus

        closed = _Closed()
        try:
            async with websockets.connect(
                self.url, open_timeout=self.open_timeout, max_size=None, close_timeout=2
            ) as ws:
                self._ws = ws
                self._reconnect_now = False
                self.state.connection_made()
                await self._flush()
                async for raw in ws:
                    await self._receive(raw)
                if ws.close_code is not None:
                    closed = _Closed(ws.close_code, ws.close_reason or "")
        except ConnectionClosed as e:
            rcvd = e.rcvd
            closed = _Closed(CLOSE_ABNORMAL) if rcvd is None else _Closed(rcvd.code, rcvd.reason)
        except InvalidStatus as e:
            status = e.response.status_code
            code = {401: CLOSE_BAD_TOKEN, 403: CLOSE_NOT_ALLOWED, 404: CLOSE_NO_DOCUMENT}.get(status)
            closed = _Closed(code, f"HTTP {status}", e)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # OSError, handshake failures, timeouts
            closed = _Closed(error=e)
        finally:
            self._ws = None
            # A close we asked for says nothing about our frames.
            self.state.connection_lost(None if self._reconnect_now or self._closing else closed.code)
            await self._flush()
        return closed

    async def _receive(self, raw: str | bytes) -> None:
        if isinstance(raw, bytes):
            return
        try:
            msg = json.loads(raw)
        except ValueError:
            log.warning("ignoring a message that is not JSON: %.80r", raw)
            return
        self.state.receive(msg)
        await self._flush()

    def _permanent_failure(self, closed: _Closed) -> CollabError | None:
        """The error to raise when reconnecting cannot help (or is not wanted), else ``None``."""
        code, where = closed.code, self.url.split("?")[0]
        if code in PERMANENT_CLOSE_CODES and not self._reconnect_now:
            name, hint = PERMANENT_CLOSE_CODES[code]
            detail = f" ({closed.reason})" if closed.reason else ""
            return CollabError(name, f"{where} closed with {code}{detail}: {hint}")
        if self.connections == 0:
            what = f"closed with {code} {closed.reason}".strip() if code else f"{closed.error!r}"
            return CollabError("unreachable", f"cannot connect to {where}: {what}. "
                               "Is the server running? Start one with `collab serve`.")
        if not self.reconnect:
            return CollabError("disconnected", f"connection lost (close code {code}); "
                               "pass reconnect=True to reconnect automatically")
        return None

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
