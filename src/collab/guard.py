"""The uvicorn glue of flood protection: limits at accept time, a handshake deadline, and a proxy-aware middleware.

Three layers, cheapest first:

* **Accept time** (:class:`GuardedProtocol`, installed by :func:`install`
  around uvicorn's protocol factory): the :class:`collab.limits.SourceLimits`
  shared with the app decide from the peer address alone (per-address rate,
  concurrency cap, back-off after a flood, the global cap and its reserve).
  A refused connection is aborted inside ``connection_made``, before uvicorn
  allocates a parser or reads a byte.
* **Handshake deadline**: an accepted connection whose request has not
  reached the application within ``handshake_timeout`` seconds is aborted
  (slowloris). The deadline is re-armed after each plain-HTTP response, so a
  trickled keep-alive request is cut off too.
* **Per connection**: the app's sessions take a
  :class:`collab.limits.MessageLimiter` from the same ``SourceLimits``.

Behind a reverse proxy every TCP connection comes from the proxy, so
connections from ``trusted_proxies`` skip the per-address accept checks (the
global cap still applies) and :class:`ProxyIPLimit` applies them to WebSocket
handshakes, keyed by :func:`collab.addresses.client_ip`.

The pure parts live in :mod:`collab.limits`, :mod:`collab.addresses` and
:mod:`collab.metrics`; their public names are re-exported here.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import os
from collections import deque
from typing import Any, Awaitable, Callable, Mapping

from .addresses import IPNetwork, client_ip, ip_key, is_trusted, parse_networks
from .limits import (
    ConnectionLimiter,
    Limits,
    MessageLimiter,
    MessageVerdict,
    SourceLimits,
    TokenBucket,
    Verdict,
    transform_cost,
)
from .handoff import MAX_HANDED_BYTES, HandOff, relayed, ws_document
from .link import LinkError, OwnerLink, Preface, RelayStream, read_preface
from .metrics import COUNTERS, LOG_INTERVAL, Counters, metrics_text, note, note_slow_client_drop, track
from .protocol import CLOSE_OVERLOADED

log = logging.getLogger("collab.guard")

__all__ = [
    "COUNTERS", "LOG_INTERVAL", "ConnectionLimiter", "Counters", "Guard", "GuardedProtocol", "IPNetwork",
    "Limits", "MessageLimiter", "MessageVerdict", "ProxyIPLimit", "SourceLimits", "TokenBucket", "Verdict",
    "client_ip", "install", "ip_key", "metrics_text", "note_slow_client_drop", "parse_networks",
    "source_limits", "transform_cost",
]

#: Bytes of a request body the server drops, unparsed, after answering without reading it (a 413).
LINGER_BYTES = 1024 * 1024

#: New connections whose first request is handed to uvicorn per event-loop turn (:class:`HandshakeGate`).
HANDSHAKES_PER_TURN = 4

#: The counter each accept-time refusal bumps.
_REFUSAL_COUNTER = {
    "rate": "refused_conn_rate",
    "per_ip": "refused_conn_per_ip",
    "global": "refused_global",
    "crowded": "refused_crowded",
    "backoff": "refused_backoff",
}


def source_limits(limits: Any) -> SourceLimits:
    """The :class:`SourceLimits` for a ``SourceLimits``, a :class:`Limits` (a new one) or settings (the shared one)."""
    if isinstance(limits, SourceLimits):
        return limits
    if isinstance(limits, Limits):
        return SourceLimits(limits)
    return SourceLimits.for_settings(limits)


def _declared_body(scope: Mapping[str, Any]) -> tuple[bool, int]:
    """Whether the request has a body, and its ``Content-Length`` (0 if absent, chunked or unreadable)."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                length = max(int(value), 0)
            except ValueError:
                return value.strip() != b"", 0
            return length > 0, length
        if name == b"transfer-encoding":
            return True, 0
    return False, 0


def _addr_key(host: Any, port: Any, local_port: Any) -> tuple[str, int, int]:
    return (str(host), int(port), int(local_port))


class HandshakeGate:
    """Spreads a burst of new connections' first requests over event-loop turns.

    One loop turn runs the callbacks of every socket that became readable:
    when a few hundred connections of a flood send their handshakes together,
    each would be parsed, upgraded and given an app task in that one turn,
    and every other client's message would wait behind all of them.
    :meth:`admit` lets ``per_turn`` first requests through per turn; the
    rest are paused (:meth:`GuardedProtocol.data_received`) and resumed,
    oldest first, ``per_turn`` per later turn.
    """

    def __init__(self, per_turn: int = HANDSHAKES_PER_TURN) -> None:
        self.per_turn = per_turn
        self.used = 0
        self.waiting: deque[GuardedProtocol] = deque()
        self._scheduled = False

    def admit(self) -> bool:
        """Whether a first request may be handled now; if not, the caller waits in :attr:`waiting`."""
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._turn)
        if self.used < self.per_turn and not self.waiting:
            self.used += 1
            return True
        COUNTERS.deferred_handshakes += 1
        return False

    def _turn(self) -> None:
        """Once per loop turn while anything happens: the oldest waiters resumed in what the turn's
        new arrivals left of ``per_turn``, then a fresh count for the next turn."""
        self._scheduled = False
        waiting = self.waiting
        room = self.per_turn - self.used
        while waiting and room > 0:
            room -= 1
            waiting.popleft().resume()
        self.used = 0
        if waiting:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._turn)


class Guard:
    """Accept-time accounting shared by the :class:`GuardedProtocol` of one server."""

    def __init__(self, limits: Limits | SourceLimits | Any, keep_alive: float = 5.0) -> None:
        self.gate = HandshakeGate()
        self.limiter = source_limits(limits)
        self.limits = self.limiter.limits
        self.trusted = parse_networks(tuple(self.limits.trusted_proxies))
        self.keep_alive = keep_alive
        #: Accepted connections by (peer host, peer port, local port), for the ASGI hook.
        self.by_addr: dict[tuple[str, int, int], GuardedProtocol] = {}
        #: Accepted connections by transport, for the WebSocket protocol after the upgrade.
        self.by_transport: dict[Any, GuardedProtocol] = {}
        #: Where WebSocket connections to a document owned by another process here go (``None``: nowhere).
        self.handoff: HandOff | None = None
        #: Lookups of new connections' owners under way (:meth:`GuardedProtocol._route`).
        self.routing: set[asyncio.Task[None]] = set()
        track(self.limiter)
        # From the crowded mark on (``max_connections`` less its reserve) this process takes no other
        # process's clients of its documents, and again once a twentieth below it, so that a
        # connection or two coming and going does not flap (:meth:`check_room`).
        limiter = self.limiter
        full = limiter.high_water if limiter.high_water != math.inf else limiter.max_connections
        self._full_at = full if full > 0 else math.inf
        self._room_below = full - max(1, int(full) // 20) if full > 0 else math.inf

    def check_room(self) -> None:
        """Tell the other processes (through the hand-over) whether this one takes their clients of
        its documents, by the marks above."""
        handoff = self.handoff
        if handoff is None:
            return
        active = self.limiter.active
        if handoff.crowded:
            if active < self._room_below:
                handoff.set_crowded(False)
        elif active >= self._full_at:
            handoff.set_crowded(True)

    def refuse(self, verdict: Verdict, source: str) -> None:
        """Count a refusal and maybe log the summary."""
        name = _REFUSAL_COUNTER[verdict]
        setattr(COUNTERS, name, getattr(COUNTERS, name) + 1)
        note(source)

    def wrap_app(self, app: Callable[..., Any]) -> Callable[..., Any]:
        """ASGI wrapper that stops the handshake timer when a request reaches the app.

        A request with a body keeps a deadline until the body is complete
        (re-armed by each chunk, so a large upload on a slow link is fine but
        a stalled one is not). For plain HTTP the timer is re-armed
        (``handshake_timeout`` + keep-alive) when the response is complete,
        so a slowly trickled next request on a keep-alive connection is cut
        off as well. After a response sent before the request's body was read
        whole (a 413 refused from ``Content-Length``) the connection lingers
        (:meth:`GuardedProtocol.linger`) instead of reading the rest.
        """
        by_addr = self.by_addr

        def guarded_app(scope: dict, receive: Callable, send: Callable) -> Awaitable[None]:
            client, server = scope.get("client"), scope.get("server")
            conn = None
            if client and server:
                conn = by_addr.get((str(client[0]), int(client[1]), int(server[1])))
            if conn is None:
                return app(scope, receive, send)
            if scope["type"] != "http":
                conn.request_started()
                return app(scope, receive, send)  # no wrapper frame held for a WebSocket's lifetime
            return _guarded_http(app, conn, scope, receive, send)

        return guarded_app

    def wrap_ws_class(self, cls: type) -> type:
        """A subclass of uvicorn's WebSocket protocol that keeps the connection's accounting.

        uvicorn swaps the transport's protocol on upgrade (``set_protocol``),
        after which the :class:`GuardedProtocol` no longer hears about the
        connection; this subclass takes over its ``connection_lost``.
        """
        by_transport = self.by_transport

        def connection_made(proto: Any, transport: Any) -> None:
            proto._collab_guarded = by_transport.get(transport)
            if proto._collab_guarded is not None:
                proto._collab_guarded.upgraded()
            cls.connection_made(proto, transport)

        def connection_lost(proto: Any, exc: Exception | None) -> None:
            conn = getattr(proto, "_collab_guarded", None)
            if conn is not None:
                proto._collab_guarded = None
                conn.finish()
            cls.connection_lost(proto, exc)

        def refused_oversized(proto: Any, nbytes: int) -> None:
            conn = getattr(proto, "_collab_guarded", None)
            if conn is not None:
                conn.oversized(nbytes)

        return type(f"Guarded{cls.__name__}", (cls,),
                    {"connection_made": connection_made, "connection_lost": connection_lost,
                     "refused_oversized": refused_oversized})


async def _guarded_http(app: Callable[..., Any], conn: "GuardedProtocol", scope: dict,
                        receive: Callable, send: Callable) -> None:
    """One plain-HTTP request under the handshake deadline (see :meth:`Guard.wrap_app`)."""
    body_pending, declared = _declared_body(scope)
    if not body_pending:
        conn.request_started()
    else:
        # A request body must keep arriving: each chunk re-arms the deadline;
        # the complete body (or the response starting) stops it.
        conn.rearm()
        inner_receive = receive

        async def receive() -> dict:
            nonlocal body_pending
            message = await inner_receive()
            if message.get("more_body"):
                conn.rearm()
            else:
                body_pending = False
                conn.request_started()
            return message

    async def guarded_send(message: dict) -> None:
        if message["type"] == "http.response.start":
            conn.request_started()
        await send(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            conn.request_finished()
            if body_pending:  # answered before its body was read: do not read the rest
                conn.linger(declared)

    await app(scope, receive, guarded_send)


class GuardedProtocol(asyncio.Protocol):
    """Wraps uvicorn's HTTP protocol: admits or aborts the connection in ``connection_made``.

    The wrapped protocol is only constructed for admitted connections, so a
    refused one costs a peer-address lookup, a dict probe and an abort.
    Every protocol callback is delegated to the wrapped protocol.
    """

    __slots__ = ("_guard", "_factory", "_kwargs", "_inner", "_transport", "_key", "_per_source",
                 "_addr", "_timer", "_done", "_linger", "_gated", "_deferred", "_handed", "_routed", "_pipe")

    def __init__(self, guard: Guard, factory: Callable[..., asyncio.Protocol], **kwargs: Any) -> None:
        self._guard = guard
        self._factory = factory
        self._kwargs = kwargs
        self._inner: Any = None
        self._transport: Any = None
        self._key = ""
        self._per_source = True
        self._addr: tuple[str, int, int] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._done = True
        #: Bytes of an unwanted request body still to be dropped (see :meth:`linger`); -1: not lingering.
        self._linger = -1
        #: Whether the first request went through the :class:`HandshakeGate`; what arrived while it waits.
        self._gated = False
        self._deferred: list[bytes] | None = None
        #: What another process read of this connection before handing it here (``None``: accepted here).
        self._handed: bytes | None = None
        #: Whether the first request was looked at for a hand-over (once per connection).
        self._routed = False
        #: Where this connection's bytes go instead of uvicorn (:mod:`collab.link`): the owner's process
        #: (a client relayed there), or the streams of a link another process opened to this one.
        self._pipe: RelayStream | OwnerLink | None = None

    def handed_in(self, data: bytes) -> None:
        """This connection was accepted by another process, which read ``data`` of it: serve it here,
        ``data`` first, and never hand it on (:mod:`collab.handoff`). Call before ``connection_made``."""
        self._handed = data

    # -- admission -------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # type: ignore[override]
        guard = self._guard
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            host = peer[0]
            key = host if ":" not in host else ip_key(host, guard.limits.ipv6_prefix)
            per_source = not (guard.trusted and is_trusted(host, guard.trusted))
        else:  # Unix socket: no address to limit by, only the global cap.
            host, key, per_source = "", "", False
        verdict = guard.limiter.acquire(key, per_source=per_source)
        if verdict != "ok":
            guard.refuse(verdict, key)
            transport.abort()
            return
        COUNTERS.accepted_connections += 1
        guard.check_room()
        self._done = False
        self._key = key
        self._per_source = per_source
        self._transport = transport
        guard.by_transport[transport] = self
        if host:
            local = transport.get_extra_info("sockname")
            self._addr = _addr_key(host, peer[1], local[1] if isinstance(local, tuple) else 0)
            guard.by_addr[self._addr] = self
        if guard.limits.handshake_timeout > 0:
            self._timer = asyncio.get_running_loop().call_later(guard.limits.handshake_timeout, self._expired)
        inner = self._factory(**self._kwargs)
        self._kwargs = None
        self._inner = inner
        inner.connection_made(transport)
        if self._handed:  # before the transport reads anything: the bytes stay in order
            self.data_received(self._handed)

    def _expired(self) -> None:
        self._timer = None
        if self._done:
            return
        COUNTERS.handshake_timeouts += 1
        note(self._key)
        self._transport.abort()

    def request_started(self) -> None:
        """The request reached the app: the handshake is done, stop the deadline."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def rearm(self) -> None:
        """Restart the deadline (a request body is still arriving)."""
        if self._done or self._guard.limits.handshake_timeout <= 0:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(self._guard.limits.handshake_timeout, self._expired)

    def request_finished(self) -> None:
        """A plain-HTTP response is complete: the next request gets a fresh deadline."""
        if self._done or self._timer is not None or self._guard.limits.handshake_timeout <= 0:
            return
        delay = self._guard.limits.handshake_timeout + self._guard.keep_alive
        self._timer = asyncio.get_running_loop().call_later(delay, self._expired)

    def upgraded(self) -> None:
        """The WebSocket protocol took over the transport; drop the HTTP protocol."""
        self.request_started()
        self._inner = None

    def finish(self) -> None:
        """Release the connection's slot (idempotent)."""
        if self._done:
            return
        self._done = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        guard = self._guard
        guard.by_transport.pop(self._transport, None)
        if self._addr is not None and guard.by_addr.get(self._addr) is self:
            del guard.by_addr[self._addr]
        guard.limiter.release(self._key, per_source=self._per_source)
        guard.check_room()

    # -- delegation ------------------------------------------------------
    def oversized(self, nbytes: int) -> None:
        """A message or body of ``nbytes`` was refused unread: charge it to the address as if read."""
        if self._per_source and nbytes > 0:
            self._guard.limiter.oversized(self._key, nbytes)

    def linger(self, declared: int = 0) -> None:
        """The response is out but its request body was not read: drop at most :data:`LINGER_BYTES` more.

        The body's declared length (``declared``, from ``Content-Length``) is
        charged to the address (:meth:`oversized`).

        uvicorn would parse and drop the rest of the body however large it
        is. Instead the write side is closed (the client reads the response,
        then EOF), what still arrives is dropped unparsed, and past the budget
        the connection is aborted; otherwise uvicorn's keep-alive timeout or
        the deadline closes it.
        """
        if self._done or self._linger >= 0:
            return
        self.oversized(declared)
        self._linger = LINGER_BYTES
        transport = self._transport
        if transport.can_write_eof() and not transport.is_closing():
            transport.write_eof()

    def data_received(self, data: bytes) -> None:
        pipe = self._pipe
        if pipe is not None:
            pipe.feed(data)
            return
        if self._linger >= 0:
            self._linger -= len(data)
            if self._linger < 0:
                self._transport.abort()
            return
        inner = self._inner
        if inner is None:
            return
        if self._deferred is not None:
            self._deferred.append(data)
            return
        if not self._gated:
            self._gated = True
            gate = self._guard.gate
            if not gate.admit():
                self._deferred = [data]
                self._transport.pause_reading()
                gate.waiting.append(self)
                return
            if self._routing([data]):
                return
        inner.data_received(data)

    def _routing(self, data: list[bytes]) -> bool:
        """Whether the first request, ``data``, is being routed (:meth:`_route`): a WebSocket
        connection that may belong on another process here. Asked once, after the gate."""
        handoff = self._guard.handoff
        if self._routed or handoff is None:
            return False
        first = data[0]
        if handoff.stream_factory is not None and not self._per_source:  # a trusted peer: maybe a link
            try:
                preface = read_preface(first)
            except LinkError as exc:
                log.warning("refused a link from %s: %s", self._key or "a local peer", exc)
                self._routed = True
                self._transport.abort()
                return True
            if preface is not None:
                self._routed = True
                path = handoff.local_path(preface.process) if preface.process and self._handed is None else None
                if path is not None:  # for another process here
                    self._deferred = data
                    self._transport.pause_reading()
                    self._task(self._hand_link(handoff, path, preface))
                else:
                    self._link(handoff, data, preface)
                return True
        if self._handed is not None:  # a WebSocket connection another process here passed on: served here
            self._routed = True
            COUNTERS.handed_in_connections += 1
            return False
        if not handoff.active:
            return False
        self._routed = True
        doc = ws_document(first) if len(first) <= MAX_HANDED_BYTES else None
        if doc is None:
            return False
        if relayed(first):  # another process relayed it here: served here
            COUNTERS.relayed_in_connections += 1
            return False
        self._deferred = data
        self._transport.pause_reading()
        self._task(self._route(handoff, doc))
        return True

    def _task(self, routing: Any) -> None:
        """Run ``routing`` (this connection waits for it, reading nothing meanwhile)."""
        task = asyncio.ensure_future(routing)
        self._guard.routing.add(task)
        task.add_done_callback(self._guard.routing.discard)

    async def _hand_link(self, handoff: HandOff, path: str, preface: Preface) -> None:
        """A link for another process on this machine (it shares this one's port, and so its relay
        address): hand it there, or serve it here if that fails."""
        if await self._hand(handoff, path):
            COUNTERS.handed_over_links += 1
            return
        data, self._deferred = self._deferred, None
        if not self._done and data is not None:
            self._link(handoff, data, preface)

    def _link(self, handoff: HandOff, data: list[bytes], preface: Preface) -> None:
        """This connection is a link another process opened to relay its clients here (its peer is a
        trusted proxy): from now on its bytes are frames of those clients' connections."""
        self.request_started()  # a link has no handshake deadline; each of its streams has its own
        inner, self._inner = self._inner, None
        # uvicorn's HTTP protocol has parsed nothing: it lets go (with an error, so it leaves the transport open)
        inner.connection_lost(ConnectionAbortedError("the connection is a relay link"))
        transport = self._transport
        link = self._pipe = OwnerLink(transport, handoff.stream_factory, handoff.owner_links, preface.version)
        if handoff.closing:
            link.drain()
        elif handoff.crowded:
            link.set_full(True)
        COUNTERS.relay_links += 1
        transport.resume_reading()
        first = data[0][preface.size:]
        for chunk in [first, *data[1:]]:
            if chunk and not link.closed:
                link.feed(chunk)

    async def _route(self, handoff: HandOff, doc: str) -> None:
        """Hand this connection to ``doc``'s owner if it is another process here, or relay it there if
        that process is elsewhere and takes relayed connections; else serve it here.

        Only a connection that came through a trusted proxy (``X-Forwarded-For`` names its client
        to the owner) is relayed."""
        dest = await handoff.destination(doc, relay=not self._per_source)
        if self._done or self._deferred is None:  # closed meanwhile
            return
        transport = self._transport
        if dest is not None and dest.path is not None:
            if await self._hand(handoff, dest.path):
                COUNTERS.handed_over_connections += 1
                return
            if self._done:
                return
        elif dest is not None and dest.address is not None and dest.process is not None:
            relay = await handoff.relay(dest.address, dest.process, transport, b"".join(self._deferred))
            if relay is not None:
                if self._done:  # the client left meanwhile
                    relay.close()
                    return
                self._pipe, self._deferred = relay, None
                COUNTERS.relayed_connections += 1
                self.request_started()  # the owner's guard times the handshake now
                transport.resume_reading()
                return
            if self._done:
                return
        self.resume()  # served here

    async def _hand(self, handoff: HandOff, path: str) -> bool:
        """Pass this connection's socket, with what was read of it, to the process at ``path``; whether
        it went (it is then let go here)."""
        transport = self._transport
        sock = transport.get_extra_info("socket")
        if sock is None or self._deferred is None:
            return False
        fd = os.dup(sock.fileno())  # the send may wait: this fd stays this connection's meanwhile
        try:
            sent = await handoff.send(path, fd, b"".join(self._deferred))
        finally:
            os.close(fd)
        if sent:
            self._deferred = None
            if not self._done:  # the other process holds the socket now: let go of it here (no FIN, no RST)
                transport.close()
        return sent

    def resume(self) -> None:
        """The :class:`HandshakeGate` lets the first request through (or :meth:`_route` keeps it here):
        hand uvicorn what arrived."""
        data, self._deferred = self._deferred, None
        if self._done or self._inner is None or not data or self._routing(data):
            return
        transport = self._transport
        transport.resume_reading()
        for chunk in data:  # in order; after an upgrade the rest belongs to the WebSocket protocol
            if transport.is_closing():
                return
            (self._inner or transport.get_protocol()).data_received(chunk)

    def eof_received(self) -> bool | None:
        if self._pipe is not None:
            return None  # the peer is done: close, and so does what the bytes went to
        inner = self._inner
        return inner.eof_received() if inner is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        self.finish()
        if self._pipe is not None:
            self._pipe.close()
        inner = self._inner
        if inner is not None:
            self._inner = None
            inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._pipe is not None:  # the peer reads slower than the owner (or its streams) writes
            self._pipe.pause_output()
        elif self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._pipe is not None:
            self._pipe.resume_output()
        elif self._inner is not None:
            self._inner.resume_writing()


def install(server_or_config: Any, limits: Limits | SourceLimits | Any) -> Guard:
    """Install the guard on a ``uvicorn.Server`` or ``uvicorn.Config`` before it starts.

    Loads the config if needed, then wraps ``config.http_protocol_class``
    (accept-time checks), ``config.ws_protocol_class`` (accounting after the
    upgrade) and ``config.loaded_app`` (handshake deadline). ``limits`` is a
    :class:`collab.config.Settings` (the app's sessions then share the
    per-address state, see :meth:`SourceLimits.for_settings`), a
    :class:`SourceLimits` or a :class:`Limits` (state of its own).
    """
    config = getattr(server_or_config, "config", server_or_config)
    if getattr(config, "_collab_guard", None) is not None:
        raise RuntimeError("the flood guard is already installed on this uvicorn config; install it once")
    if not config.loaded:
        config.load()
    guard = Guard(limits, keep_alive=float(getattr(config, "timeout_keep_alive", 5) or 5))
    config.http_protocol_class = functools.partial(GuardedProtocol, guard, config.http_protocol_class)
    if config.ws_protocol_class is not None:
        config.ws_protocol_class = guard.wrap_ws_class(config.ws_protocol_class)
    config.loaded_app = guard.wrap_app(config.loaded_app)
    config._collab_guard = guard
    return guard



class ProxyIPLimit:
    """ASGI middleware: the per-address connection limits, keyed by :func:`client_ip`.

    Behind a trusted proxy the accept-time guard sees only the proxy, so this
    applies ``conn_rate``/``conn_burst``/``conn_per_ip``, the back-off after
    a flood and the reserve near the global cap to WebSocket handshakes per
    forwarded client address (plain HTTP requests pass). It also rewrites
    ``scope["client"]`` to the resolved address so the app logs and limits
    the real client. Refused handshakes get HTTP 429 (or close 1013 when the
    server cannot send a denial response). Given settings, it shares their
    :class:`SourceLimits` with the accept-time guard, which has already
    counted connections that do not come through a proxy.
    """

    def __init__(self, app: Callable[..., Any], limits: Limits | SourceLimits | Any) -> None:
        self.app = app
        self.shared = not isinstance(limits, Limits)
        self.limiter = source_limits(limits)
        self.limits = self.limiter.limits
        self.trusted = tuple(self.limits.trusted_proxies)
        self.nets = parse_networks(self.trusted)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] not in ("http", "websocket") or not scope.get("client"):
            return await self.app(scope, receive, send)
        host, port = scope["client"][0], scope["client"][1]
        ip = client_ip(host, scope.get("headers", []), self.trusted)
        if ip != host:
            scope = dict(scope)
            scope["client"] = (ip, port)
        if scope["type"] != "websocket" or (self.shared and not is_trusted(host, self.nets)):
            return await self.app(scope, receive, send)
        key = ip_key(ip, self.limits.ipv6_prefix)
        verdict = self.limiter.acquire(key, global_slot=False)
        if verdict != "ok":
            COUNTERS.refused_proxied += 1
            note(key)
            why = ("closed for flooding: wait before reconnecting" if verdict == "backoff"
                   else "too many connections from your address; retry later")
            await _deny_websocket(scope, send, why)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self.limiter.release(key, global_slot=False)


async def _deny_websocket(scope: Mapping[str, Any], send: Callable, message: str) -> None:
    if "websocket.http.response" in scope.get("extensions", {}) or {}:
        body = message.encode()
        await send({"type": "websocket.http.response.start", "status": 429,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"retry-after", b"1"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": CLOSE_OVERLOADED, "reason": message[:120]})
