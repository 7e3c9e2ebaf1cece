"""Flood-protection counters, their Prometheus text, and rate-limited log summaries.

Every limiter bumps a field of :data:`COUNTERS` when it refuses something
and calls :func:`note`, which logs one summary line on the ``collab.guard``
logger at most every :data:`LOG_INTERVAL` seconds, so a flood cannot flood
the log as well. :func:`metrics_text` renders the counters, plus the gauges
of every limiter registered with :func:`track`, for ``GET /metrics``.
"""

from __future__ import annotations

import logging
import time
import weakref
from dataclasses import dataclass, fields
from typing import Mapping, Protocol

log = logging.getLogger("collab.guard")

#: Seconds between two refusal summary log lines.
LOG_INTERVAL = 10.0

_monotonic = time.monotonic


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
    #: Refused at accept: the server is near its cap and the source IP already holds several connections.
    refused_crowded: int = 0
    #: Refused at accept (or at the handshake behind a proxy): the source IP is backing off after a flood.
    refused_backoff: int = 0
    #: Aborted because the request did not arrive within ``handshake_timeout``.
    handshake_timeouts: int = 0
    #: WebSocket handshakes refused by the proxy-aware (HTTP-level) per-IP limit.
    refused_proxied: int = 0
    #: Messages answered with ``rate_limited`` (counted by ``MessageLimiter.check``).
    limited_messages: int = 0
    #: Connections closed with 1008 for flooding (counted by ``MessageLimiter.check``).
    flood_closes: int = 0
    #: Oversized messages or request bodies that put their address past its byte budget (it backs off).
    oversized_backoffs: int = 0
    #: Clients dropped because they did not read what was sent to them.
    slow_client_drops: int = 0
    #: First requests of new connections held for a later loop turn (a burst of handshakes).
    deferred_handshakes: int = 0
    #: Reads of large unfinished messages held for a later loop turn (uploads in bulk).
    deferred_reads: int = 0


COUNTERS = Counters()

_COUNTER_HELP = {
    "accepted_connections": "Connections accepted by the accept-time guard.",
    "refused_conn_rate": "Connections refused: per-IP new-connection rate exceeded.",
    "refused_conn_per_ip": "Connections refused: per-IP concurrent-connection cap reached.",
    "refused_global": "Connections refused: global connection cap reached.",
    "refused_crowded": "Connections refused: near the global cap, from an address that already holds several.",
    "refused_backoff": "Connections refused: the address is backing off after being closed for flooding.",
    "handshake_timeouts": "Connections aborted: request not received within the handshake timeout.",
    "refused_proxied": "WebSocket handshakes refused by the per-client limit behind a trusted proxy.",
    "limited_messages": "WebSocket messages refused with rate_limited.",
    "flood_closes": "WebSocket connections closed with 1008 for flooding.",
    "oversized_backoffs": "Oversized messages or bodies that started their address's back-off.",
    "slow_client_drops": "Clients dropped because they did not read what was sent to them.",
    "deferred_handshakes": "First requests of new connections held for a later event-loop turn.",
    "deferred_reads": "Connections reading a large unfinished message held for a later event-loop turn.",
}

#: Gauge name (after ``collab_guard_``) -> help text; each tracked limiter reports these.
GAUGES = {
    "open_connections": "Connections currently held (accepted, not yet closed).",
    "tracked_sources": "Source addresses with live rate-limit state.",
    "backoff_sources": "Source addresses refused until their back-off after a flood passes.",
}


class GaugeSource(Protocol):
    """Anything that reports the :data:`GAUGES` (the accept-time limiter does)."""

    def gauges(self) -> Mapping[str, int]: ...


_tracked: "weakref.WeakSet[GaugeSource]" = weakref.WeakSet()


def track(source: GaugeSource) -> None:
    """Include ``source``'s gauges in :func:`metrics_text` while it is alive."""
    _tracked.add(source)


def metrics_text() -> str:
    """All guard counters and gauges in the Prometheus text exposition format."""
    lines: list[str] = []
    for f in fields(Counters):
        name = f"collab_guard_{f.name}_total"
        lines.append(f"# HELP {name} {_COUNTER_HELP[f.name]}")
        lines.append(f"# TYPE {name} counter")
        lines.append(f"{name} {getattr(COUNTERS, f.name)}")
    reports = [s.gauges() for s in list(_tracked)]
    for gauge, text in GAUGES.items():
        name = f"collab_guard_{gauge}"
        lines.append(f"# HELP {name} {text}")
        lines.append(f"# TYPE {name} gauge")
        lines.append(f"{name} {sum(r.get(gauge, 0) for r in reports)}")
    return "\n".join(lines) + "\n"


class Summary:
    """Logs what was refused since the last line, at most one line per :data:`LOG_INTERVAL` seconds."""

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


_summary = Summary()


def note(source: str = "") -> None:
    """Maybe log the refusal summary (call after bumping a counter of :data:`COUNTERS`)."""
    _summary.note(source)


def note_slow_client_drop(source: str = "") -> None:
    """Count (and log at a bounded rate) a client dropped for not reading its queue."""
    COUNTERS.slow_client_drops += 1
    _summary.note(source)
