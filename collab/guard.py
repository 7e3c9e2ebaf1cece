"""Flood protection: limits applied before, during and after the HTTP handshake.

Three layers, cheapest first:

* **Accept time** (:class:`GuardedProtocol`, installed by :func:`install`
  around uvicorn's protocol factory): per source IP (IPv6 grouped per
  ``/ipv6_prefix``) a token bucket on new connections and a cap on
  concurrent ones, plus a global cap. A refused connection is aborted inside
  ``connection_made``, before uvicorn allocates a parser or reads a byte.
* **Handshake deadline**: an accepted connection whose request has not
  reached the application within ``handshake_timeout`` seconds is aborted
  (slowloris). The deadline is re-armed after each plain-HTTP response, so a
  trickled keep-alive request is cut off too.
* **Per connection** (:class:`MessageLimiter`, called by the app's WebSocket
  receive loop): token buckets on messages and bytes per second.

Behind a reverse proxy every TCP connection comes from the proxy, so
connections from ``trusted_proxies`` skip the per-IP accept checks (the
global cap still applies) and :class:`ProxyIPLimit` enforces the same
per-IP limits on WebSocket handshakes, keyed by :func:`client_ip`.

Counters live in :data:`COUNTERS`; :func:`metrics_text` renders them in the
Prometheus text format and refusals are logged on the ``collab.guard``
logger, at most one summary line per :data:`LOG_INTERVAL` seconds.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import time
import weakref
from dataclasses import dataclass, fields
from typing import Any, Callable, Iterable, Literal, Mapping, Sequence

log = logging.getLogger("collab.guard")

#: Seconds between two refusal summary log lines.
LOG_INTERVAL = 10.0

_monotonic = time.monotonic

Verdict = Literal["ok", "rate", "per_ip", "global"]
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


# --------------------------------------------------------------------------
# Counters, metrics and bounded-rate logging


@dataclass
class Counters:
    """Process-wide totals since start; exposed on ``GET /metrics``."""

    #: Connections that passed the accept-time checks.
    accepted_connections: int = 0
    #: Refused at accept: the source IP opened connections too fast.
    refused_conn_rate: int = 0
    #: Refused at accept: the source IP already holds ``conn_per_ip`` connections.
    refused_conn_per_ip: int = 0
    #: Refused at accept: the server already holds ``max_connections``.
    refused_global: int = 0
    #: Aborted because the request did not arrive within ``handshake_timeout``.
    handshake_timeouts: int = 0
    #: WebSocket handshakes refused by the proxy-aware (HTTP-level) per-IP limit.
    refused_proxied: int = 0
    #: Messages answered with ``rate_limited`` (counted by :meth:`MessageLimiter.check`).
    limited_messages: int = 0
    #: Connections closed with 1008 for flooding (counted by :meth:`MessageLimiter.check`).
    flood_closes: int = 0
    #: Clients dropped because their outgoing queue was full (counted by the hub).
    slow_client_drops: int = 0


COUNTERS = Counters()

_METRIC_HELP = {
    "accepted_connections": "Connections accepted by the accept-time guard.",
    "refused_conn_rate": "Connections refused: per-IP new-connection rate exceeded.",
    "refused_conn_per_ip": "Connections refused: per-IP concurrent-connection cap reached.",
    "refused_global": "Connections refused: global connection cap reached.",
    "handshake_timeouts": "Connections aborted: request not received within the handshake timeout.",
    "refused_proxied": "WebSocket handshakes refused by the per-client limit behind a trusted proxy.",
    "limited_messages": "WebSocket messages refused with rate_limited.",
    "flood_closes": "WebSocket connections closed with 1008 for flooding.",
    "slow_client_drops": "Clients dropped because their outgoing queue was full.",
}

_guards: "weakref.WeakSet[Guard]" = weakref.WeakSet()


def metrics_text() -> str:
    """All guard counters and gauges in the Prometheus text exposition format."""
    lines: list[str] = []
    for f in fields(Counters):
        name = f"collab_guard_{f.name}_total"
        lines.append(f"# HELP {name} {_METRIC_HELP[f.name]}")
        lines.append(f"# TYPE {name} counter")
        lines.append(f"{name} {getattr(COUNTERS, f.name)}")
    active = sum(g.limiter.active for g in list(_guards))
    tracked = sum(len(g.limiter) for g in list(_guards))
    lines += [
        "# HELP collab_guard_open_connections Connections currently held (accepted, not yet closed).",
        "# TYPE collab_guard_open_connections gauge",
        f"collab_guard_open_connections {active}",
        "# HELP collab_guard_tracked_sources Source addresses with live rate-limit state.",
        "# TYPE collab_guard_tracked_sources gauge",
        f"collab_guard_tracked_sources {tracked}",
    ]
    return "\n".join(lines) + "\n"


class _Summary:
    """Logs what was refused, at most one line per :data:`LOG_INTERVAL` seconds."""

    def __init__(self) -> None:
        self.last = -LOG_INTERVAL
        self.seen = Counters()
        self.last_source = ""

    def note(self, source: str = "") -> None:
        """Call after bumping a refusal counter; logs only if the interval has passed."""
        if source:
            self.last_source = source
        now = _monotonic()
        if now - self.last < LOG_INTERVAL:
            return
        self.last = now
        parts = []
        for f in fields(Counters):
            if f.name == "accepted_connections":
                continue
            delta = getattr(COUNTERS, f.name) - getattr(self.seen, f.name)
            if delta:
                parts.append(f"{f.name}={delta}")
            setattr(self.seen, f.name, getattr(COUNTERS, f.name))
        if parts:
            log.warning(
                "flood protection active: %s (latest source %s; totals on GET /metrics)",
                " ".join(parts),
                self.last_source or "-",
            )


_summary = _Summary()


def note_slow_client_drop(source: str = "") -> None:
    """Count (and log at a bounded rate) a client dropped for not reading its queue."""
    COUNTERS.slow_client_drops += 1
    _summary.note(source)


# --------------------------------------------------------------------------
# Token buckets


class TokenBucket:
    """Classic token bucket: ``burst`` tokens, refilled at ``rate`` per second.

    ``rate <= 0`` disables the limit (every ``take`` succeeds).
    """

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float, now: float | None = None) -> None:
        self.rate = float(rate)
        self.burst = float(max(burst, 1))
        self.tokens = self.burst
        self.stamp = _monotonic() if now is None else now

    def take(self, n: float = 1.0, now: float | None = None) -> bool:
        """Remove ``n`` tokens if available; False (and nothing removed) otherwise."""
        if self.rate <= 0:
            return True
        if now is None:
            now = _monotonic()
        tokens = self.tokens + (now - self.stamp) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        self.stamp = now
        if tokens >= n:
            self.tokens = tokens - n
            return True
        self.tokens = tokens
        return False

    def is_full(self, now: float | None = None) -> bool:
        """True when the bucket has refilled completely (its state can be forgotten)."""
        if now is None:
            now = _monotonic()
        return self.rate <= 0 or self.tokens + (now - self.stamp) * self.rate >= self.burst


MessageVerdict = Literal["ok", "limited", "close"]


class MessageLimiter:
    """Per-connection limit on messages and bytes per second.

    ``check(nbytes)`` is called once per received message and answers:

    * ``"ok"``: process it;
    * ``"limited"``: drop it and send ``error`` ``rate_limited``;
    * ``"close"``: the client kept flooding; close with 1008.

    A client gets ``strikes`` limited messages of slack, refilled over
    ``strike_window`` seconds, before ``"close"``: an occasional burst is
    forgiven, a sustained flood is not. A single message larger than
    ``bytes_burst`` passes when the byte bucket is full and leaves it in debt.
    The counters ``limited_messages`` / ``flood_closes`` are bumped here; the
    caller must not count them again.
    """

    __slots__ = (
        "msg_rate", "msg_burst", "bytes_rate", "bytes_burst", "strike_rate", "strikes",
        "msg_tokens", "byte_tokens", "strike_tokens", "stamp", "source",
    )

    def __init__(
        self,
        msg_rate: float,
        msg_burst: float,
        bytes_rate: float,
        bytes_burst: float,
        strikes: int = 50,
        strike_window: float = 10.0,
        source: str = "",
    ) -> None:
        self.msg_rate = float(msg_rate) if msg_rate > 0 else float("inf")
        self.msg_burst = float(max(msg_burst, 1))
        self.bytes_rate = float(bytes_rate) if bytes_rate > 0 else float("inf")
        self.bytes_burst = float(max(bytes_burst, 1))
        self.strikes = float(max(strikes, 1))
        self.strike_rate = self.strikes / strike_window if strike_window > 0 else float("inf")
        self.msg_tokens = self.msg_burst
        self.byte_tokens = self.bytes_burst
        self.strike_tokens = self.strikes
        self.stamp = _monotonic()
        self.source = source

    @classmethod
    def from_settings(cls, settings: Any, source: str = "") -> "MessageLimiter":
        """A limiter with ``msg_*`` / ``bytes_*`` from a :class:`collab.config.Settings`."""
        return cls(settings.msg_rate, settings.msg_burst, settings.bytes_rate, settings.bytes_burst, source=source)

    def check(self, nbytes: int) -> MessageVerdict:
        """Account one received message of ``nbytes`` bytes; see the class doc."""
        now = _monotonic()
        elapsed = now - self.stamp
        self.stamp = now
        m = self.msg_tokens + elapsed * self.msg_rate
        if m > self.msg_burst:
            m = self.msg_burst
        b = self.byte_tokens + elapsed * self.bytes_rate
        if b > self.bytes_burst:
            b = self.bytes_burst
        s = self.strike_tokens + elapsed * self.strike_rate
        if s > self.strikes:
            s = self.strikes
        self.strike_tokens = s
        need = nbytes if nbytes < self.bytes_burst else self.bytes_burst
        if m >= 1.0 and b >= need:
            self.msg_tokens = m - 1.0
            self.byte_tokens = b - nbytes
            return "ok"
        self.msg_tokens = m
        self.byte_tokens = b
        if s >= 1.0:
            self.strike_tokens = s - 1.0
            COUNTERS.limited_messages += 1
            _summary.note(self.source)
            return "limited"
        COUNTERS.flood_closes += 1
        _summary.note(self.source)
        return "close"


# --------------------------------------------------------------------------
# Addresses


def ip_key(host: str, ipv6_prefix: int = 64) -> str:
    """The rate-limit key of an address: IPv4 as is, IPv6 as its ``/ipv6_prefix`` network.

    IPv4-mapped IPv6 addresses (``::ffff:1.2.3.4``) count as their IPv4 address.
    """
    if ":" not in host:
        return host
    try:
        addr = ipaddress.IPv6Address(host.split("%", 1)[0])
    except ValueError:
        return host
    mapped = addr.ipv4_mapped
    if mapped is not None:
        return str(mapped)
    prefix = min(max(ipv6_prefix, 0), 128)
    return ipaddress.IPv6Network((int(addr) >> (128 - prefix) << (128 - prefix), prefix)).with_prefixlen


@functools.lru_cache(maxsize=64)
def parse_networks(entries: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    """Parse trusted-proxy entries (addresses or CIDRs); raise a ValueError saying which is wrong."""
    nets: list[IPNetwork] = []
    for entry in entries:
        try:
            nets.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise ValueError(
                f"trusted proxy {entry!r} is not an IP address or CIDR network; "
                "use e.g. COLLAB_TRUSTED_PROXIES=10.0.0.0/8,127.0.0.1"
            ) from None
    return tuple(nets)


def _parse_hop(hop: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    hop = hop.strip().strip('"')
    if hop.startswith("["):  # [v6]:port
        hop = hop[1:].split("]", 1)[0]
    elif hop.count(":") == 1:  # v4:port
        hop = hop.split(":", 1)[0]
    try:
        return ipaddress.ip_address(hop.split("%", 1)[0])
    except ValueError:
        return None


def _in(addr: ipaddress.IPv4Address | ipaddress.IPv6Address, nets: Sequence[IPNetwork]) -> bool:
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr.version == n.version and addr in n for n in nets)


def _forwarded_for(headers: Any) -> list[str]:
    """Every X-Forwarded-For value, in order, from ASGI pairs, Starlette Headers or a dict."""
    if isinstance(headers, (list, tuple)):
        values = [v.decode("latin-1") if isinstance(v, bytes) else v
                  for k, v in headers
                  if (k.lower() if isinstance(k, str) else k.lower().decode("latin-1")) == "x-forwarded-for"]
    elif hasattr(headers, "getlist"):
        values = headers.getlist("x-forwarded-for")
    else:
        values = [v for k, v in dict(headers).items() if k.lower() == "x-forwarded-for"]
    hops: list[str] = []
    for value in values:
        hops.extend(h for h in value.split(",") if h.strip())
    return hops


def client_ip(scope_client_host: str | None, headers: Any, trusted_proxies: Iterable[str]) -> str:
    """The client's address: the TCP peer, or behind trusted proxies the X-Forwarded-For hop.

    Only when the TCP peer is a trusted proxy is X-Forwarded-For read, right
    to left, skipping trusted hops; the first untrusted hop is the client.
    A malformed hop stops the walk at the last trusted address (so a forged
    garbage value cannot mint fresh rate-limit keys). With no trusted
    proxies the header is ignored.
    """
    peer = scope_client_host or ""
    trusted = tuple(trusted_proxies)
    if not trusted or not peer:
        return peer
    nets = parse_networks(trusted)
    peer_addr = _parse_hop(peer)
    if peer_addr is None or not _in(peer_addr, nets):
        return peer
    last = peer
    for hop in reversed(_forwarded_for(headers)):
        addr = _parse_hop(hop)
        if addr is None:
            return last
        last = str(addr)
        if not _in(addr, nets):
            return last
    return last


# --------------------------------------------------------------------------
# Per-source accounting


class _Source:
    __slots__ = ("tokens", "stamp", "active")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp
        self.active = 0


class ConnectionLimiter:
    """Per-key new-connection token bucket and concurrency cap, plus a global cap.

    Keys are :func:`ip_key` strings. The table forgets a key once it has no
    open connection and a full bucket, and is swept (amortised O(1)) when it
    grows, so a spray of source addresses cannot grow it without bound.
    ``conn_rate <= 0``, ``conn_per_ip <= 0`` or ``max_connections <= 0``
    disable that check.
    """

    def __init__(self, conn_rate: float, conn_burst: float, conn_per_ip: int, max_connections: int,
                 min_sweep: int = 4096) -> None:
        self.rate = float(conn_rate)
        self.burst = float(max(conn_burst, 1))
        self.per_ip = int(conn_per_ip)
        self.max_connections = int(max_connections)
        self.active = 0
        self._sources: dict[str, _Source] = {}
        self._min_sweep = min_sweep
        self._sweep_at = min_sweep

    def __len__(self) -> int:
        return len(self._sources)

    def acquire(self, key: str, now: float | None = None, per_source: bool = True) -> Verdict:
        """Admit one connection from ``key`` (and count it) or say which limit refused it."""
        if 0 < self.max_connections <= self.active:
            return "global"
        if not per_source:
            self.active += 1
            return "ok"
        if now is None:
            now = _monotonic()
        src = self._sources.get(key)
        if src is None:
            if len(self._sources) >= self._sweep_at:
                self._sweep(now)
            src = self._sources[key] = _Source(self.burst, now)
        if 0 < self.per_ip <= src.active:
            return "per_ip"
        if self.rate > 0:
            tokens = src.tokens + (now - src.stamp) * self.rate
            if tokens > self.burst:
                tokens = self.burst
            src.stamp = now
            if tokens < 1.0:
                src.tokens = tokens
                return "rate"
            src.tokens = tokens - 1.0
        src.active += 1
        self.active += 1
        return "ok"

    def release(self, key: str, per_source: bool = True) -> None:
        """Give back the slot taken by a successful :meth:`acquire`."""
        self.active -= 1
        if not per_source:
            return
        src = self._sources.get(key)
        if src is None:
            return
        src.active -= 1
        if src.active <= 0 and (self.rate <= 0 or src.tokens + (_monotonic() - src.stamp) * self.rate >= self.burst):
            del self._sources[key]

    def _sweep(self, now: float) -> None:
        rate, burst = self.rate, self.burst
        idle = [k for k, s in self._sources.items()
                if s.active <= 0 and (rate <= 0 or s.tokens + (now - s.stamp) * rate >= burst)]
        for k in idle:
            del self._sources[k]
        if len(self._sources) >= self._sweep_at:
            # Still big: forget idle sources even with a partly drained bucket.
            for k in [k for k, s in self._sources.items() if s.active <= 0]:
                del self._sources[k]
        self._sweep_at = max(self._min_sweep, 2 * len(self._sources))


# --------------------------------------------------------------------------
# The accept-time guard


@dataclass(frozen=True)
class Limits:
    """The accept-time limits; build with :meth:`from_settings`."""

    conn_rate: float = 20.0
    conn_burst: int = 40
    conn_per_ip: int = 64
    max_connections: int = 10_000
    handshake_timeout: float = 5.0
    ipv6_prefix: int = 64
    trusted_proxies: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, settings: Any) -> "Limits":
        """Limits from a :class:`collab.config.Settings` (or anything with those attributes)."""
        return cls(
            conn_rate=settings.conn_rate,
            conn_burst=settings.conn_burst,
            conn_per_ip=settings.conn_per_ip,
            max_connections=settings.max_connections,
            handshake_timeout=settings.handshake_timeout,
            ipv6_prefix=settings.ipv6_prefix,
            trusted_proxies=tuple(settings.trusted_proxies),
        )


def _has_body(scope: Mapping[str, Any]) -> bool:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            return value.strip() not in (b"0", b"")
        if name == b"transfer-encoding":
            return True
    return False


def _addr_key(host: Any, port: Any, local_port: Any) -> tuple[str, int, int]:
    return (str(host), int(port), int(local_port))


class Guard:
    """Accept-time accounting shared by the :class:`GuardedProtocol` of one server."""

    def __init__(self, limits: Limits, keep_alive: float = 5.0) -> None:
        self.limits = limits
        self.limiter = ConnectionLimiter(limits.conn_rate, limits.conn_burst, limits.conn_per_ip,
                                         limits.max_connections)
        self.trusted = parse_networks(tuple(limits.trusted_proxies))
        self.keep_alive = keep_alive
        #: Accepted connections by (peer host, peer port, local port), for the ASGI hook.
        self.by_addr: dict[tuple[str, int, int], GuardedProtocol] = {}
        #: Accepted connections by transport, for the WebSocket protocol after the upgrade.
        self.by_transport: dict[Any, GuardedProtocol] = {}
        _guards.add(self)

    def refuse(self, verdict: Verdict, source: str) -> None:
        """Count a refusal and maybe log the summary."""
        if verdict == "rate":
            COUNTERS.refused_conn_rate += 1
        elif verdict == "per_ip":
            COUNTERS.refused_conn_per_ip += 1
        else:
            COUNTERS.refused_global += 1
        _summary.note(source)

    def wrap_app(self, app: Callable[..., Any]) -> Callable[..., Any]:
        """ASGI wrapper that stops the handshake timer when a request reaches the app.

        A request with a body keeps a deadline until the body is complete
        (re-armed by each chunk, so a large upload on a slow link is fine but
        a stalled one is not). For plain HTTP the timer is re-armed
        (``handshake_timeout`` + keep-alive) when the response is complete,
        so a slowly trickled next request on a keep-alive connection is cut
        off as well.
        """
        by_addr = self.by_addr

        async def guarded_app(scope: dict, receive: Callable, send: Callable) -> None:
            client, server = scope.get("client"), scope.get("server")
            conn = None
            if client and server:
                conn = by_addr.get((str(client[0]), int(client[1]), int(server[1])))
            if conn is None:
                return await app(scope, receive, send)
            if scope["type"] != "http" or not _has_body(scope):
                conn.request_started()
                if scope["type"] != "http":
                    return await app(scope, receive, send)
            else:
                # A request body must keep arriving: each chunk re-arms the deadline;
                # the complete body (or the response starting) stops it.
                conn.rearm()
                inner_receive = receive

                async def receive() -> dict:  # noqa: F811
                    message = await inner_receive()
                    if message.get("more_body"):
                        conn.rearm()
                    else:
                        conn.request_started()
                    return message

            async def guarded_send(message: dict) -> None:
                if message["type"] == "http.response.start":
                    conn.request_started()
                await send(message)
                if message["type"] == "http.response.body" and not message.get("more_body", False):
                    conn.request_finished()

            return await app(scope, receive, guarded_send)

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

        return type(f"Guarded{cls.__name__}", (cls,),
                    {"connection_made": connection_made, "connection_lost": connection_lost})


class GuardedProtocol(asyncio.Protocol):
    """Wraps uvicorn's HTTP protocol: admits or aborts the connection in ``connection_made``.

    The wrapped protocol is only constructed for admitted connections, so a
    refused one costs a peer-address lookup, a dict probe and an abort.
    Every protocol callback is delegated to the wrapped protocol.
    """

    __slots__ = ("_guard", "_factory", "_kwargs", "_inner", "_transport", "_key", "_per_source",
                 "_addr", "_timer", "_done")

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

    # -- admission -------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # type: ignore[override]
        guard = self._guard
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            host = peer[0]
            key = host if ":" not in host else ip_key(host, guard.limits.ipv6_prefix)
            per_source = not (guard.trusted and _is_trusted(host, guard.trusted))
        else:  # Unix socket: no address to limit by, only the global cap.
            host, key, per_source = "", "", False
        verdict = guard.limiter.acquire(key, per_source=per_source)
        if verdict != "ok":
            guard.refuse(verdict, key)
            transport.abort()
            return
        COUNTERS.accepted_connections += 1
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

    def _expired(self) -> None:
        self._timer = None
        if self._done:
            return
        COUNTERS.handshake_timeouts += 1
        _summary.note(self._key)
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

    # -- delegation ------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        inner = self._inner
        if inner is not None:
            inner.data_received(data)

    def eof_received(self) -> bool | None:
        inner = self._inner
        return inner.eof_received() if inner is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        self.finish()
        inner = self._inner
        if inner is not None:
            self._inner = None
            inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()


def _is_trusted(host: str, nets: Sequence[IPNetwork]) -> bool:
    addr = _parse_hop(host)
    return addr is not None and _in(addr, nets)


def install(server_or_config: Any, limits: Limits | Any) -> Guard:
    """Install the guard on a ``uvicorn.Server`` or ``uvicorn.Config`` before it starts.

    Loads the config if needed, then wraps ``config.http_protocol_class``
    (accept-time checks), ``config.ws_protocol_class`` (accounting after the
    upgrade) and ``config.loaded_app`` (handshake deadline). ``limits`` is a
    :class:`Limits` or a :class:`collab.config.Settings`.
    """
    config = getattr(server_or_config, "config", server_or_config)
    if not isinstance(limits, Limits):
        limits = Limits.from_settings(limits)
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


# --------------------------------------------------------------------------
# Per-client limit behind a trusted proxy (HTTP level)


class ProxyIPLimit:
    """ASGI middleware: the per-IP connection limits, keyed by :func:`client_ip`.

    Behind a trusted proxy the accept-time guard sees only the proxy, so this
    applies ``conn_rate``/``conn_burst``/``conn_per_ip`` to WebSocket
    handshakes per forwarded client address (plain HTTP requests pass). It
    also rewrites ``scope["client"]`` to the resolved address so the app logs
    and limits the real client. Refused handshakes get HTTP 429 (or close
    1013 when the server cannot send a denial response).
    """

    def __init__(self, app: Callable[..., Any], limits: Limits) -> None:
        self.app = app
        self.limits = limits
        self.trusted = tuple(limits.trusted_proxies)
        parse_networks(self.trusted)
        # The global cap is enforced at accept time; here only per-client limits.
        self.limiter = ConnectionLimiter(limits.conn_rate, limits.conn_burst, limits.conn_per_ip, 0)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] not in ("http", "websocket") or not scope.get("client"):
            return await self.app(scope, receive, send)
        host, port = scope["client"][0], scope["client"][1]
        ip = client_ip(host, scope.get("headers", []), self.trusted)
        if ip != host:
            scope = dict(scope)
            scope["client"] = (ip, port)
        if scope["type"] != "websocket":
            return await self.app(scope, receive, send)
        key = ip_key(ip, self.limits.ipv6_prefix)
        verdict = self.limiter.acquire(key)
        if verdict != "ok":
            COUNTERS.refused_proxied += 1
            _summary.note(key)
            await _deny_websocket(scope, send, "too many connections from your address; retry later")
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self.limiter.release(key)


async def _deny_websocket(scope: Mapping[str, Any], send: Callable, message: str) -> None:
    if "websocket.http.response" in scope.get("extensions", {}) or {}:
        body = message.encode()
        await send({"type": "websocket.http.response.start", "status": 429,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"retry-after", b"1"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1013, "reason": message[:120]})
