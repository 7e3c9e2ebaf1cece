"""Pure flood limiters: token buckets, per-address connection and message budgets, back-off.

Nothing here does I/O or needs an event loop: every method takes the time
as an optional ``now`` argument, so tests drive them with a fake clock.

* :class:`ConnectionLimiter` decides at accept time, per source key (see
  :func:`collab.addresses.ip_key`): a new-connection token bucket, a
  concurrency cap, a global cap with a reserve kept for addresses that hold
  few connections, and a growing back-off after a flood.
* :class:`SourceLimits` (one per process and settings, built by
  :meth:`SourceLimits.for_settings`) adds per-address message and byte
  budgets and hands out a :class:`MessageLimiter` per connection, charged to
  the connection and to its address, so reconnecting does not refill it.
"""

from __future__ import annotations

import math
import time
import weakref
from dataclasses import dataclass, fields
from typing import Any, Literal

from .metrics import COUNTERS, note

_monotonic = time.monotonic

#: Accept-time verdicts: admitted, or which limit refused the connection.
Verdict = Literal["ok", "rate", "per_ip", "global", "crowded", "backoff"]
#: Per-message verdicts, see :meth:`MessageLimiter.check`.
MessageVerdict = Literal["ok", "limited", "close"]

#: History operations an op may be transformed against for the price of one message.
TRANSFORM_OPS_PER_MESSAGE = 25.0

#: Tracked addresses kept even while backing off; past this a sweep forgets the oldest state.
MAX_TRACKED = 65_536


def transform_cost(n_history_ops: int) -> float:
    """Extra message units an op costs for being transformed against ``n_history_ops`` operations.

    An op based on an old revision is transformed against every operation
    since, and that work, not the message, is what a flooder would buy.
    """
    return n_history_ops / TRANSFORM_OPS_PER_MESSAGE if n_history_ops > 0 else 0.0


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
        tokens = min(self.tokens + (now - self.stamp) * self.rate, self.burst)
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


@dataclass(frozen=True)
class Limits:
    """Every flood limit, from :meth:`from_settings`; a rate, cap or time of 0 disables that check."""

    conn_rate: float = 20.0
    conn_burst: int = 40
    conn_per_ip: int = 64
    max_connections: int = 5_000
    #: Share of ``max_connections`` kept for addresses holding fewer than ``conn_reserve_per_ip``.
    conn_reserve: float = 0.1
    conn_reserve_per_ip: int = 4
    handshake_timeout: float = 5.0
    ipv6_prefix: int = 64
    trusted_proxies: tuple[str, ...] = ()
    msg_rate: float = 100.0
    msg_burst: int = 200
    bytes_rate: float = 2 * 1024 * 1024
    bytes_burst: int = 8 * 1024 * 1024
    #: Budgets shared by all connections of one address.
    addr_msg_rate: float = 200.0
    addr_msg_burst: int = 200
    addr_bytes_rate: float = 4 * 1024 * 1024
    addr_bytes_burst: int = 16 * 1024 * 1024
    #: First back-off after a 1008 flood close; each further one doubles it, up to the max.
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    #: ``rate_limited`` answers a connection gets before it is closed, refilled over the window.
    strikes: int = 50
    strike_window: float = 10.0

    @classmethod
    def from_settings(cls, settings: Any) -> "Limits":
        """Limits from a :class:`collab.config.Settings` (fields it lacks keep their defaults)."""
        values = {f.name: getattr(settings, f.name) for f in fields(cls) if hasattr(settings, f.name)}
        values["trusted_proxies"] = tuple(values.get("trusted_proxies", ()))
        return cls(**values)


class Source:
    """What is known about one source key: connection budget, message budgets, back-off."""

    __slots__ = ("conn_tokens", "conn_stamp", "active", "msg_tokens", "byte_tokens", "stamp",
                 "backoff_level", "backoff_until")

    def __init__(self, conn_tokens: float, msg_tokens: float, byte_tokens: float, now: float) -> None:
        self.conn_tokens = conn_tokens
        self.conn_stamp = now
        self.active = 0
        self.msg_tokens = msg_tokens
        self.byte_tokens = byte_tokens
        self.stamp = now
        self.backoff_level = 0
        self.backoff_until = -math.inf


def _bucket(rate: float, burst: float) -> tuple[float, float]:
    """``(rate, burst)``; a rate of 0 (disabled) as an infinite burst that never needs refilling."""
    return (float(rate), float(max(burst, 1))) if rate > 0 else (0.0, math.inf)


class ConnectionLimiter:
    """Accept-time limits per source key, a global cap with a reserve, and a growing back-off.

    :meth:`acquire` admits a connection or says which limit refused it:
    ``rate`` (new-connection bucket), ``per_ip`` (concurrency cap),
    ``global`` (``max_connections``), ``crowded`` (above the high-water mark
    ``max_connections - reserve`` only addresses holding fewer than
    ``reserve_per_ip`` connections get in, so a flood from a few hundred
    addresses cannot lock everyone else out) or ``backoff`` (the address was
    closed for flooding, see :meth:`punish`). The table forgets a key once
    nothing about it differs from a fresh one, and is swept (amortised O(1))
    when it grows, so a spray of source addresses cannot grow it without bound.
    """

    def __init__(self, conn_rate: float, conn_burst: float, conn_per_ip: int, max_connections: int,
                 min_sweep: int = 4096, *, reserve: int = 0, reserve_per_ip: int = 0,
                 backoff_base: float = 0.0, backoff_max: float = 0.0) -> None:
        self.rate = float(conn_rate)
        self.burst = float(max(conn_burst, 1))
        self.per_ip = int(conn_per_ip)
        self.max_connections = int(max_connections)
        self.high_water = max_connections - reserve if max_connections > 0 and reserve > 0 else math.inf
        self.reserve_per_ip = int(reserve_per_ip)
        self.backoff_base = float(backoff_base)
        self.backoff_max = float(max(backoff_max, backoff_base))
        self.active = 0
        self._sources: dict[str, Source] = {}
        self._min_sweep = min_sweep
        self._sweep_at = min_sweep

    def __len__(self) -> int:
        return len(self._sources)

    def _new_source(self, now: float) -> Source:
        return Source(self.burst, 0.0, 0.0, now)

    def source(self, key: str, now: float) -> Source:
        """The state of ``key``, created fresh if it is not tracked."""
        src = self._sources.get(key)
        if src is None:
            if len(self._sources) >= self._sweep_at:
                self._sweep(now)
            src = self._sources[key] = self._new_source(now)
        return src

    def acquire(self, key: str, now: float | None = None, per_source: bool = True,
                global_slot: bool = True) -> Verdict:
        """Admit one connection from ``key`` (and count it) or say which limit refused it.

        ``per_source=False`` (a trusted proxy, a Unix socket) checks only the
        global cap; ``global_slot=False`` (a client already counted at accept
        time as its proxy's connection) checks and counts only ``key``.
        """
        active = self.active
        if global_slot and 0 < self.max_connections <= active:
            return "global"
        if not per_source:
            self.active = active + 1
            return "ok"
        if now is None:
            now = _monotonic()
        src = self.source(key, now)
        if src.backoff_until > now:
            return "backoff"
        if 0 < self.per_ip <= src.active:
            return "per_ip"
        if active >= self.high_water and src.active >= self.reserve_per_ip:
            return "crowded"
        if self.rate > 0:
            tokens = min(src.conn_tokens + (now - src.conn_stamp) * self.rate, self.burst)
            src.conn_stamp = now
            if tokens < 1.0:
                src.conn_tokens = tokens
                return "rate"
            src.conn_tokens = tokens - 1.0
        src.active += 1
        if global_slot:
            self.active = active + 1
        return "ok"

    def release(self, key: str, per_source: bool = True, global_slot: bool = True) -> None:
        """Give back the slot taken by a successful :meth:`acquire` with the same flags."""
        if global_slot:
            self.active -= 1
        if not per_source:
            return
        src = self._sources.get(key)
        if src is None:
            return
        src.active -= 1
        if src.active <= 0 and self._idle(src, _monotonic()):
            del self._sources[key]

    def punish(self, key: str, now: float | None = None) -> float:
        """Start ``key``'s back-off after a flood close; return its length in seconds.

        The first lasts ``backoff_base``; a flood close after a back-off has
        passed doubles it, up to ``backoff_max``. An address that stays clean
        for ``backoff_max`` after its back-off starts again from the base.
        """
        if self.backoff_base <= 0:
            return 0.0
        if now is None:
            now = _monotonic()
        src = self.source(key, now)
        if src.backoff_until > now:
            return src.backoff_until - now
        level = 0 if now - src.backoff_until > self.backoff_max else src.backoff_level
        src.backoff_level = level + 1
        delay = min(self.backoff_base * 2.0 ** min(level, 30), self.backoff_max)
        src.backoff_until = now + delay
        return delay

    def backing_off(self, key: str, now: float | None = None) -> bool:
        """Whether new connections from ``key`` are refused until its back-off passes."""
        src = self._sources.get(key)
        return src is not None and src.backoff_until > (_monotonic() if now is None else now)

    def _idle(self, src: Source, now: float) -> bool:
        """Nothing about ``src`` differs from a fresh source: it can be forgotten."""
        if src.active > 0 or now < src.backoff_until + self.backoff_max:
            return False
        return self.rate <= 0 or src.conn_tokens + (now - src.conn_stamp) * self.rate >= self.burst

    def _sweep(self, now: float) -> None:
        sources = self._sources
        for k in [k for k, s in sources.items() if self._idle(s, now)]:
            del sources[k]
        if len(sources) >= self._sweep_at:
            # Still big: forget idle sources with partly spent budgets; back-offs too past MAX_TRACKED.
            keep_backoff = len(sources) < MAX_TRACKED
            for k in [k for k, s in sources.items()
                      if s.active <= 0 and not (keep_backoff and s.backoff_until > now)]:
                del sources[k]
        self._sweep_at = max(self._min_sweep, 2 * len(sources))

    def gauges(self) -> dict[str, int]:
        """The :data:`collab.metrics.GAUGES` of this limiter."""
        now = _monotonic()
        return {"open_connections": self.active, "tracked_sources": len(self._sources),
                "backoff_sources": sum(1 for s in list(self._sources.values()) if s.backoff_until > now)}


class SourceLimits(ConnectionLimiter):
    """The accept-time limits plus per-address message budgets, shared process-wide.

    :meth:`for_settings` gives one instance per settings object, so the
    accept-time guard, the proxy middleware and the app's sessions share the
    per-address state: a flood closed on one connection makes the address
    back off at accept time, and a new connection starts with the address's
    spent budget, not a full one.
    """

    def __init__(self, limits: Limits, min_sweep: int = 4096) -> None:
        reserve = math.ceil(limits.max_connections * limits.conn_reserve) if limits.conn_reserve > 0 else 0
        super().__init__(limits.conn_rate, limits.conn_burst, limits.conn_per_ip, limits.max_connections,
                         min_sweep, reserve=reserve, reserve_per_ip=limits.conn_reserve_per_ip,
                         backoff_base=limits.backoff_base, backoff_max=limits.backoff_max)
        self.limits = limits
        self.msg_rate, self.msg_burst = _bucket(limits.addr_msg_rate, limits.addr_msg_burst)
        self.bytes_rate, self.bytes_burst = _bucket(limits.addr_bytes_rate, limits.addr_bytes_burst)

    @classmethod
    def for_settings(cls, settings: Any) -> "SourceLimits":
        """The process-wide instance for ``settings`` (built on first use)."""
        box = _INSTANCES.get(id(settings))
        if box is not None and box[0]() is settings:
            return box[1]
        inst = cls(Limits.from_settings(settings))
        try:
            ref = weakref.ref(settings, lambda _r, k=id(settings): _INSTANCES.pop(k, None))
        except TypeError:  # not weak-referenceable: keep it for the process's life
            ref = (lambda s=settings: s)  # type: ignore[assignment]
        _INSTANCES[id(settings)] = (ref, inst)
        return inst

    def _new_source(self, now: float) -> Source:
        return Source(self.burst, self.msg_burst, self.bytes_burst, now)

    def message_limiter(self, source_key: str, now: float | None = None) -> "MessageLimiter":
        """A limiter for one new connection from ``source_key``, also charged to the address.

        While the address is on probation (closed for flooding, and not yet
        clean for ``backoff_max`` since its back-off ended) the connection
        starts with an empty message bucket: a flooder's reconnect gets the
        refill rate, not a fresh burst. Its other connections keep theirs.
        """
        if now is None:
            now = _monotonic()
        lim = self.limits
        limiter = MessageLimiter(lim.msg_rate, lim.msg_burst, lim.bytes_rate, lim.bytes_burst,
                                 lim.strikes, lim.strike_window, source=source_key, owner=self, now=now)
        src = self._sources.get(source_key)
        if src is not None and src.backoff_level and now < src.backoff_until + self.backoff_max \
                and limiter.msg_rate > 0:
            limiter.msg_tokens = 0.0
        return limiter

    def take(self, key: str, nbytes: int, now: float) -> bool:
        """Charge one message of ``nbytes`` to ``key``'s budgets; False (nothing charged) if spent."""
        src = self._sources.get(key)
        if src is None:
            src = self.source(key, now)
        elapsed = now - src.stamp
        src.stamp = now
        m = src.msg_tokens + elapsed * self.msg_rate
        if m > self.msg_burst:
            m = self.msg_burst
        b = src.byte_tokens + elapsed * self.bytes_rate
        burst = self.bytes_burst
        if b > burst:
            b = burst
        if m >= 1.0 and b >= (nbytes if nbytes < burst else burst):
            src.msg_tokens = m - 1.0
            src.byte_tokens = b - nbytes
            return True
        src.msg_tokens = m
        src.byte_tokens = b
        return False

    def charge(self, key: str, units: float, now: float) -> None:
        """Take ``units`` extra messages from ``key``'s budget (it may go into debt)."""
        src = self._sources.get(key) or self.source(key, now)
        src.msg_tokens = min(src.msg_tokens + (now - src.stamp) * self.msg_rate, self.msg_burst) - units
        src.byte_tokens = min(src.byte_tokens + (now - src.stamp) * self.bytes_rate, self.bytes_burst)
        src.stamp = now

    def oversized(self, key: str, nbytes: int, now: float | None = None) -> float:
        """Charge a refused oversized message or body of ``nbytes`` (as announced) to ``key``.

        It is charged as if it had been read: one past the address's byte
        budget starts the address's back-off (see :meth:`punish`), so an
        address that keeps announcing huge frames or bodies is refused at
        accept instead of costing a handshake and a read each time. Returns
        the back-off started, in seconds (0: none).
        """
        if now is None:
            now = _monotonic()
        src = self._sources.get(key) or self.source(key, now)
        src.msg_tokens = min(src.msg_tokens + (now - src.stamp) * self.msg_rate, self.msg_burst)
        # The debt is capped at one burst: the address's own messages wait at most burst/rate.
        tokens = min(src.byte_tokens + (now - src.stamp) * self.bytes_rate, self.bytes_burst) - nbytes
        src.byte_tokens = max(tokens, -self.bytes_burst)
        src.stamp = now
        if tokens >= 0:
            return 0.0
        COUNTERS.oversized_backoffs += 1
        note(key)
        return self.punish(key, now)

    def _idle(self, src: Source, now: float) -> bool:
        if not super()._idle(src, now):
            return False
        elapsed = now - src.stamp
        return (src.msg_tokens + elapsed * self.msg_rate >= self.msg_burst
                and src.byte_tokens + elapsed * self.bytes_rate >= self.bytes_burst)


_INSTANCES: dict[int, tuple[Any, SourceLimits]] = {}


class MessageLimiter:
    """Per-connection limit on messages and bytes per second, also charged to the address.

    ``check(nbytes)`` is called once per received message and answers:

    * ``"ok"``: process it;
    * ``"limited"``: drop it and send ``error`` ``rate_limited``;
    * ``"close"``: the client kept flooding; close with 1008 (this also
      starts the address's back-off, see :meth:`ConnectionLimiter.punish`).

    A message passes when both the connection's and its address's budgets
    (the ``owner``, if any) have room. A client gets ``strikes`` limited
    messages of slack, refilled over ``strike_window`` seconds, before
    ``"close"``: an occasional burst is forgiven, a sustained flood is not.
    A single message larger than ``bytes_burst`` passes when the byte bucket
    is full and leaves it in debt. The counters ``limited_messages`` /
    ``flood_closes`` are bumped here; the caller must not count them again.
    """

    __slots__ = (
        "msg_rate", "msg_burst", "bytes_rate", "bytes_burst", "strike_rate", "strikes",
        "msg_tokens", "byte_tokens", "strike_tokens", "stamp", "source", "owner",
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
        owner: SourceLimits | None = None,
        now: float | None = None,
    ) -> None:
        self.msg_rate, self.msg_burst = _bucket(msg_rate, msg_burst)
        self.bytes_rate, self.bytes_burst = _bucket(bytes_rate, bytes_burst)
        # A strike window of 0 forgives every limited message at once: never "close".
        self.strikes = float(max(strikes, 1)) if strike_window > 0 else math.inf
        self.strike_rate = self.strikes / strike_window if strike_window > 0 else 0.0
        self.msg_tokens = self.msg_burst
        self.byte_tokens = self.bytes_burst
        self.strike_tokens = self.strikes
        self.stamp = _monotonic() if now is None else now
        self.source = source
        self.owner = owner

    @classmethod
    def from_settings(cls, settings: Any, source: str = "") -> "MessageLimiter":
        """A connection-only limiter with ``msg_*`` / ``bytes_*`` from a :class:`collab.config.Settings`."""
        return cls(settings.msg_rate, settings.msg_burst, settings.bytes_rate, settings.bytes_burst, source=source)

    def check(self, nbytes: int, now: float | None = None) -> MessageVerdict:
        """Account one received message of ``nbytes`` bytes; see the class doc."""
        if now is None:
            now = _monotonic()
        elapsed = now - self.stamp
        self.stamp = now
        m = self.msg_tokens + elapsed * self.msg_rate
        if m > self.msg_burst:
            m = self.msg_burst
        b = self.byte_tokens + elapsed * self.bytes_rate
        burst = self.bytes_burst
        if b > burst:
            b = burst
        s = self.strike_tokens + elapsed * self.strike_rate
        if s > self.strikes:
            s = self.strikes
        self.strike_tokens = s
        owner = self.owner
        if m >= 1.0 and b >= (nbytes if nbytes < burst else burst) and (
                owner is None or owner.take(self.source, nbytes, now)):
            self.msg_tokens = m - 1.0
            self.byte_tokens = b - nbytes
            return "ok"
        self.msg_tokens = m
        self.byte_tokens = b
        if s >= 1.0:
            self.strike_tokens = s - 1.0
            COUNTERS.limited_messages += 1
            note(self.source)
            return "limited"
        COUNTERS.flood_closes += 1
        if owner is not None:
            owner.punish(self.source, now)
        note(self.source)
        return "close"

    def charge(self, units: float, now: float | None = None) -> None:
        """Take ``units`` extra messages (e.g. :func:`transform_cost`) from both budgets.

        The budgets may go into debt; the next :meth:`check` calls wait for it
        to be paid back by the refill.
        """
        if units <= 0:
            return
        if now is None:
            now = _monotonic()
        self.msg_tokens = min(self.msg_tokens + (now - self.stamp) * self.msg_rate, self.msg_burst) - units
        self.byte_tokens = min(self.byte_tokens + (now - self.stamp) * self.bytes_rate, self.bytes_burst)
        self.strike_tokens = min(self.strike_tokens + (now - self.stamp) * self.strike_rate, self.strikes)
        self.stamp = now
        if self.owner is not None:
            self.owner.charge(self.source, units, now)
