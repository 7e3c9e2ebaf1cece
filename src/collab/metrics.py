"""Flood-protection counters, their Prometheus text, and rate-limited log summaries.

Every limiter bumps a field of :data:`COUNTERS` when it refuses something
and calls :func:`note`, which logs one summary line on the ``collab.guard``
logger at most every :data:`LOG_INTERVAL` seconds, so a flood cannot flood
the log as well. :func:`metrics_text` renders the counters, plus the gauges
of every limiter registered with :func:`track`, for ``GET /metrics``.

A process's metrics are also plain values (:class:`Family` says what each
is): :func:`merge` sums the values of several worker processes (counters and
histograms over every worker that ever ran, gauges over live ones only) and
:func:`render` writes them out, so that ``/metrics`` answers for the whole
group whichever worker takes the scrape (see :mod:`collab.workermetrics`).
:data:`ACK_LATENCY` times each op from its arrival to its ack.
"""

from __future__ import annotations

import logging
import math
import time
import weakref
from bisect import bisect_left
from dataclasses import dataclass, fields
from typing import Any, Mapping, Protocol

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
    #: WebSocket connections passed to the process here that owns their document (:mod:`collab.handoff`).
    handed_over_connections: int = 0
    #: WebSocket connections another process here passed to this one.
    handed_in_connections: int = 0
    #: WebSocket connections relayed to the process elsewhere that owns their document.
    relayed_connections: int = 0
    #: WebSocket connections another process relayed to this one.
    relayed_in_connections: int = 0
    #: Links other processes opened to relay their clients here (:mod:`collab.link`).
    relay_links: int = 0
    #: Links for another process here (sharing this one's port and relay address), passed to it.
    handed_over_links: int = 0
    #: Connections to a document whose owner said it was full, served here (their edits forwarded).
    spilled_connections: int = 0


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
    "handed_over_connections": "WebSocket connections passed to the process on this machine that owns their document.",
    "handed_in_connections": "WebSocket connections another process on this machine passed to this one.",
    "relayed_connections": "WebSocket connections relayed to the process on another machine that owns their document.",
    "relayed_in_connections": "WebSocket connections another process relayed to this one.",
    "relay_links": "Links other processes opened to relay their clients to this one (each carries many connections).",
    "handed_over_links": "Links for another process on this machine (sharing this one's port) passed to it.",
    "spilled_connections": "Connections served here because their document's owner said it was nearly full.",
}

#: Gauge name (after ``collab_guard_``) -> help text; each tracked limiter reports these.
GAUGES = {
    "open_connections": "Connections currently held (accepted, not yet closed).",
    "tracked_sources": "Source addresses with live rate-limit state.",
    "backoff_sources": "Source addresses refused until their back-off after a flood passes.",
    "crowded": "1 while this process nears its connection cap: the others serve its documents' new clients.",
    "full_owner_links": "Links to processes that said they are nearly full (their new clients are served here).",
}


class GaugeSource(Protocol):
    """Anything that reports the :data:`GAUGES` (the accept-time limiter does)."""

    def gauges(self) -> Mapping[str, int]: ...


_tracked: "weakref.WeakSet[GaugeSource]" = weakref.WeakSet()


def track(source: GaugeSource) -> None:
    """Include ``source``'s gauges in :func:`metrics_text` while it is alive."""
    _tracked.add(source)


@dataclass(frozen=True)
class Family:
    """One metric: its exposition name (a counter's ends in ``_total``), kind and help text."""

    name: str
    #: ``counter``, ``gauge`` or ``histogram``.
    kind: str
    help: str


#: A process's metrics by family name: a number, or for a histogram ``{"counts": [...], "sum": s}``.
Values = dict[str, Any]

#: Upper bounds, in seconds, of the ack-latency histogram's buckets.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Histogram:
    """Observations counted per bucket (not cumulated: that is done when rendering), and their sum.

    One ``bisect`` and two additions: cheap enough for every acknowledged op.
    """

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        #: One count per bound, and a last one for values above every bound.
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def since(self, start: float) -> None:
        """Observe the seconds from ``start`` (a ``time.monotonic()`` reading) to now."""
        self.observe(_monotonic() - start)

    def since_each(self, starts: list[float]) -> None:
        """:meth:`since` for each of ``starts``, with one clock reading (a batch acknowledged at once)."""
        now, counts, bounds, total = _monotonic(), self.counts, self.bounds, 0.0
        for start in starts:
            counts[bisect_left(bounds, now - start)] += 1
            total += now - start
        self.sum += total

    def value(self) -> dict:
        return {"counts": list(self.counts), "sum": self.sum}


#: Seconds from an op's arrival (from a client or the HTTP API) to its acknowledgement, in this process.
ACK_LATENCY = Histogram()

ACK_LATENCY_FAMILY = Family("collab_ack_latency_seconds", "histogram",
                            "Seconds from an operation's arrival to its acknowledgement.")

STORE_SYNC_FAMILY = Family("collab_store_sync_seconds", "histogram",
                           "Seconds each commit's fsync took (SQLite: the WAL's fdatasync); acks wait for it.")


#: The app's own metrics (before the guard's); :meth:`collab.app.CollabApp.metric_values` gives their values.
APP_FAMILIES = [
    Family("collab_documents_open", "gauge", "Documents loaded in memory."),
    Family("collab_clients", "gauge", "Connected clients (joined)."),
    Family("collab_ops_applied_total", "counter", "Operations applied and committed."),
    Family("collab_conflicts_total", "counter", "Batches whose revisions another process took first (retried)."),
    Family("collab_remote_ops_total", "counter", "Operations committed by other processes and relayed here."),
    Family("collab_remote_ops_sealed_total", "counter",
           "Of those, operations applied from a sealed announcement, without reading the store."),
    Family("collab_backplane_rejected_total", "counter",
           "Bundles on the bus dropped: not sealed with the deployment's key, stale, or replayed."),
    Family("collab_backplane_published_total", "counter",
           "Messages put on the bus: joins, leaves, forwarded edits, and commits and presence of documents "
           "another process has open."),
    Family("collab_backplane_received_total", "counter",
           "Messages taken from the bus for this process or a document open here."),
    Family("collab_backplane_bundles_total", "counter", "Redis messages published on the bus (each carries many)."),
    Family("collab_store_commits_total", "counter", "Transactions the store committed (with SQLite, one fsync each)."),
    Family("collab_store_ops_written_total", "counter",
           "Operations the store wrote (per commit: how much group commit groups)."),
    Family("collab_store_exclusive_turns_total", "counter",
           "Commits that held the document's row lock because another process was writing it too (PostgreSQL)."),
    Family("collab_frames_sent_total", "counter", "WebSocket frames sent to clients."),
    Family("collab_messages_coalesced_total", "counter",
           "Messages sent inside a batch frame instead of their own frame."),
    ACK_LATENCY_FAMILY,
    STORE_SYNC_FAMILY,
]


def guard_families() -> list[Family]:
    """The guard's counters and gauges."""
    out = [Family(f"collab_guard_{f.name}_total", "counter", _COUNTER_HELP[f.name]) for f in fields(Counters)]
    return out + [Family(f"collab_guard_{gauge}", "gauge", text) for gauge, text in GAUGES.items()]


def guard_values() -> Values:
    """This process's values of :func:`guard_families`."""
    out: Values = {f"collab_guard_{f.name}_total": getattr(COUNTERS, f.name) for f in fields(Counters)}
    reports = [s.gauges() for s in list(_tracked)]
    for gauge in GAUGES:
        out[f"collab_guard_{gauge}"] = sum(r.get(gauge, 0) for r in reports)
    return out


def merge(families: list[Family], reports: list[tuple[Values, bool]]) -> Values:
    """The sum of several processes' values; ``reports`` pairs each with whether its process is alive.

    Counters and histograms add up over every process (a dead worker's
    counts stay in the totals, so they never go back); gauges over live
    processes only. A name a report lacks counts as zero there.
    """
    out: Values = {}
    for fam in families:
        if fam.kind == "histogram":
            counts: list[int] = []
            sums: list[float] = []
            for values, _ in reports:
                h = values.get(fam.name)
                if isinstance(h, dict):
                    counts = [a + b for a, b in zip(counts, h["counts"])] if counts else list(h["counts"])
                    sums.append(h["sum"])
            # fsum: the same total in whatever order the files are read (a plain sum could dip by a rounding).
            out[fam.name] = {"counts": counts or [0] * (len(LATENCY_BUCKETS) + 1), "sum": math.fsum(sums)}
        else:
            out[fam.name] = sum(values.get(fam.name, 0) for values, alive in reports
                                if alive or fam.kind == "counter")
    return out


def render(families: list[Family], values: Values) -> str:
    """``values`` in the Prometheus text exposition format (version 0.0.4)."""
    lines: list[str] = []
    for fam in families:
        lines.append(f"# HELP {fam.name} {fam.help}")
        lines.append(f"# TYPE {fam.name} {fam.kind}")
        value = values.get(fam.name, 0)
        if fam.kind != "histogram":
            lines.append(f"{fam.name} {value}")
            continue
        seen = 0
        for bound, count in zip(LATENCY_BUCKETS + (float("inf"),), value["counts"]):
            seen += count
            le = "+Inf" if bound == float("inf") else repr(float(bound))
            lines.append(f'{fam.name}_bucket{{le="{le}"}} {seen}')
        lines.append(f"{fam.name}_sum {value['sum']}")
        lines.append(f"{fam.name}_count {seen}")
    return "\n".join(lines) + "\n"


def metrics_text() -> str:
    """All guard counters and gauges in the Prometheus text exposition format."""
    return render(guard_families(), guard_values())


#: Counters that count no refusal: left out of the flood-protection log line.
_NOT_REFUSALS = frozenset({"accepted_connections", "handed_over_connections", "handed_in_connections",
                           "relayed_connections", "relayed_in_connections", "relay_links",
                           "handed_over_links", "spilled_connections"})


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
            if f.name in _NOT_REFUSALS:
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
