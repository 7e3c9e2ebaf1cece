"""Settings, read from the environment (``COLLAB_*``, plus the PaaS names
``PORT``, ``DATABASE_URL``, ``REDIS_URL`` and ``WEB_CONCURRENCY``).

The CLI builds a :class:`Settings` from the environment and then overrides
fields from its flags, so every option has both spellings.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Callable, Mapping, TypeVar

T = TypeVar("T")


def _parsed(env: Mapping[str, str], name: str, default: T, parse: Callable[[str], T], expected: str) -> T:
    """``env[name]`` through ``parse``; ``default`` when unset or empty; a bad value stops with what was ``expected``."""
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return parse(raw)
    except ValueError:
        raise SystemExit(f"{name}={raw!r} is not {expected}; unset it or give e.g. {name}={default}") from None


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    return _parsed(env, name, default, int, "a whole number")


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    return _parsed(env, name, default, float, "a number")


def port_number(text: str) -> int:
    """``text`` as a TCP port, 0-65535 (0: any free port); ``ValueError`` otherwise."""
    n = int(text)
    if not 0 <= n <= 65535:
        raise ValueError(f"{n} is outside 0-65535")
    return n


def retain_days(text: str) -> float | None:
    """``COLLAB_HISTORY_RETAIN``: ``all`` (``None``) or a positive number of days; ``ValueError`` otherwise."""
    if text.strip().lower() == "all":
        return None
    days = float(text)
    if not days > 0:
        raise ValueError(f"{text} is not a positive number of days")
    return days


def _retain(env: Mapping[str, str], name: str) -> float | None:
    raw = env.get(name) or "all"
    try:
        return retain_days(raw)
    except ValueError:
        raise SystemExit(f"{name}={raw!r} is not 'all' or a positive number of days; give e.g. {name}=90") from None


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    return _parsed(env, name, default, port_number, "a port number (0-65535)")


#: Variables that PaaS platforms set in every process, and the platform each reveals.
PLATFORM_MARKERS: tuple[tuple[str, str], ...] = (
    ("DYNO", "Heroku or Dokku"),
    ("RENDER", "Render"),
    ("FLY_APP_NAME", "Fly.io"),
    ("RAILWAY_ENVIRONMENT", "Railway"),
    ("K_SERVICE", "Google Cloud Run"),
)


def detect_platform(env: Mapping[str, str]) -> str:
    """The hosting platform ``env`` reveals, e.g. ``"Render (RENDER is set)"``; ``""`` for none.

    ``WEB_CONCURRENCY`` alone counts too: platforms and their buildpacks set it,
    people running collab on their own machine rarely do.
    """
    for var, name in PLATFORM_MARKERS:
        if env.get(var):
            return f"{name} ({var} is set)"
    if env.get("WEB_CONCURRENCY"):
        return "a hosting platform (WEB_CONCURRENCY is set)"
    return ""


DEFAULT_DATA_DIR = "./data"


def redis_url(env: Mapping[str, str]) -> str:
    """``REDIS_URL`` (or ``COLLAB_REDIS_URL``); with ``COLLAB_REDIS_INSECURE_TLS=1`` a ``rediss://`` URL
    accepts a self-signed certificate (Heroku Redis has one, and add-on variables cannot be edited)."""
    url = env.get("REDIS_URL", env.get("COLLAB_REDIS_URL", ""))
    if env.get("COLLAB_REDIS_INSECURE_TLS", "").strip().lower() in ("1", "true", "yes", "on") \
            and url.startswith("rediss://") and "ssl_cert_reqs=" not in url:
        url += ("&" if "?" in url else "?") + "ssl_cert_reqs=none&ssl_check_hostname=false"
    return url


#: ``COLLAB_SQLITE_SYNC`` values: SQLite's ``synchronous`` setting, in lower case.
SQLITE_SYNC = ("full", "normal")


def sqlite_sync(text: str) -> str:
    """``text`` as a :data:`SQLITE_SYNC` value (any case); ``ValueError`` if it is none of them."""
    value = text.strip().lower()
    if value not in SQLITE_SYNC:
        raise ValueError(f"{text!r} is not one of {', '.join(SQLITE_SYNC)}")
    return value


def _sqlite_sync(env: Mapping[str, str], name: str, default: str) -> str:
    return _parsed(env, name, default, sqlite_sync, f"one of {', '.join(SQLITE_SYNC)}")


def _list(env: Mapping[str, str], name: str) -> list[str]:
    raw = env.get(name, "")
    return [part.strip() for part in raw.split(",") if part.strip()]


@dataclass
class Settings:
    """Every tunable of a collab server, with its safe default."""

    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: str = DEFAULT_DATA_DIR
    #: When a SQLite commit counts as done: ``full`` (the default) after an fsync, so
    #: an acknowledged edit survives a power cut; ``normal`` once the operating system
    #: has it, which survives a crash of collab (``kill -9``) but not of the machine.
    sqlite_sync: str = "full"
    #: Seconds an fsync of the SQLite store may stay unanswered before ``/healthz``
    #: reports the store unhealthy (a disk that hangs); acks wait for it meanwhile.
    fsync_timeout: float = 10.0
    #: ``postgres://...`` selects the PostgreSQL store; empty means SQLite in ``data_dir``.
    database_url: str = ""
    #: ``redis://...`` enables the cross-process backplane.
    redis_url: str = ""
    workers: int = 1
    #: A directory shared by the processes on this machine (``collab serve --workers N`` makes one
    #: for its workers): each takes the WebSocket connections to the documents it owns from the others.
    handoff_dir: str = ""
    #: ``host:port`` at which the other collab processes (on other machines) reach this one: each
    #: relays the WebSocket connections to the documents this process owns here (``COLLAB_RELAY_ADDRESS``).
    #: ``auto`` (or ``auto:PORT``): this machine's address on the network it reaches Redis by.
    relay_address: str = ""
    #: Seconds after which a silent process's clients are announced as left (with REDIS_URL).
    presence_timeout: float = 10.0

    # Documents and history.
    #: Operations kept (in memory and in the store) for resume and transform.
    history_depth: int = 1000
    #: A snapshot of the text is stored every this many operations.
    snapshot_every: int = 1000
    #: Largest document, in code points.
    max_doc_chars: int = 10_000_000
    #: Seconds a document with no connected client stays in memory.
    idle_unload_seconds: float = 30.0
    #: Days of full history kept; older sessions are thinned to one checkpoint each (``None``: keep all).
    history_retain: float | None = None
    #: A pause longer than this many seconds between edits starts a new editing session.
    session_gap: float = 300.0
    #: Days a deleted document stays in the trash, restorable, before it is purged.
    trash_days: float = 30.0

    # Connections.
    #: Largest WebSocket frame accepted, in bytes (close 1009 above it).
    max_message_bytes: int = 4 * 1024 * 1024
    #: Outgoing messages queued for one client before it is dropped as too slow.
    client_queue_size: int = 1000
    #: Bytes of outgoing messages queued for one client before it is dropped as too slow.
    client_queue_bytes: int = 8 * 1024 * 1024
    #: Operations waiting in one document's inbox before its connections stop being read.
    doc_inbox_size: int = 1024
    #: Bytes all unfinished incoming WebSocket messages together may hold (close 1013 beyond).
    incoming_bytes: int = 64 * 1024 * 1024
    #: Seconds a client may take to send one WebSocket message once it began (close 1008 after).
    message_timeout: float = 60.0
    ping_interval: float = 20.0
    ping_timeout: float = 20.0

    # Flood protection (see collab.guard).
    conn_rate: float = 20.0
    conn_burst: int = 40
    conn_per_ip: int = 64
    max_connections: int = 5_000
    handshake_timeout: float = 5.0
    msg_rate: float = 100.0
    msg_burst: int = 200
    bytes_rate: float = 2 * 1024 * 1024
    bytes_burst: int = 8 * 1024 * 1024
    trusted_proxies: list[str] = field(default_factory=list)
    ipv6_prefix: int = 64
    #: Share of ``max_connections`` kept for addresses holding fewer than ``conn_reserve_per_ip``.
    conn_reserve: float = 0.1
    conn_reserve_per_ip: int = 4
    #: Message and byte budgets shared by all connections of one address (see collab.limits).
    addr_msg_rate: float = 200.0
    addr_msg_burst: int = 200
    addr_bytes_rate: float = 4 * 1024 * 1024
    addr_bytes_burst: int = 16 * 1024 * 1024
    #: Seconds an address closed for flooding (1008) waits before it may connect again; doubling up to the max.
    backoff_base: float = 1.0
    backoff_max: float = 60.0

    # Access control.
    secret: str = ""
    allowed_origins: list[str] = field(default_factory=list)

    log_level: str = "info"
    #: The hosting platform the environment reveals (see :func:`detect_platform`); ``""`` for none.
    platform: str = ""

    @property
    def storage_warning(self) -> str | None:
        """What the operator must hear when documents may vanish with the disk; ``None`` when they need not.

        Said when documents go to a SQLite file in the default ``./data`` on a
        host that looks like a PaaS platform, whose local disk is usually
        wiped on each restart and deploy. Setting ``DATABASE_URL`` or an
        explicit data directory (a mounted volume) silences it.
        """
        if self.database_url or not self.platform or self.data_dir != DEFAULT_DATA_DIR:
            return None
        return (f"documents are stored in a SQLite file in {os.path.abspath(self.data_dir)} on this machine's disk, "
                f"and this looks like {self.platform}, whose disk is usually wiped on every restart and deploy: "
                "set DATABASE_URL to a PostgreSQL database, or point COLLAB_DATA_DIR at a persistent volume")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        """Read settings from ``env`` (default: ``os.environ``)."""
        env = os.environ if env is None else env
        d = cls()
        return cls(
            host=env.get("COLLAB_HOST", d.host),
            port=_port(env, "PORT", _port(env, "COLLAB_PORT", d.port)),
            data_dir=env.get("COLLAB_DATA_DIR", d.data_dir),
            sqlite_sync=_sqlite_sync(env, "COLLAB_SQLITE_SYNC", d.sqlite_sync),
            fsync_timeout=_float(env, "COLLAB_FSYNC_TIMEOUT", d.fsync_timeout),
            database_url=env.get("DATABASE_URL", env.get("COLLAB_DATABASE_URL", "")),
            redis_url=redis_url(env),
            workers=_int(env, "WEB_CONCURRENCY", d.workers),
            handoff_dir=env.get("COLLAB_HANDOFF_DIR", d.handoff_dir),
            relay_address=env.get("COLLAB_RELAY_ADDRESS", d.relay_address),
            presence_timeout=_float(env, "COLLAB_PRESENCE_TIMEOUT", d.presence_timeout),
            history_depth=_int(env, "COLLAB_HISTORY_DEPTH", d.history_depth),
            snapshot_every=_int(env, "COLLAB_SNAPSHOT_EVERY", d.snapshot_every),
            max_doc_chars=_int(env, "COLLAB_MAX_DOC_CHARS", d.max_doc_chars),
            idle_unload_seconds=_float(env, "COLLAB_IDLE_UNLOAD_SECONDS", d.idle_unload_seconds),
            history_retain=_retain(env, "COLLAB_HISTORY_RETAIN"),
            session_gap=_float(env, "COLLAB_SESSION_GAP", d.session_gap),
            trash_days=_float(env, "COLLAB_TRASH_DAYS", d.trash_days),
            max_message_bytes=_int(env, "COLLAB_MAX_MESSAGE_BYTES", d.max_message_bytes),
            client_queue_size=_int(env, "COLLAB_CLIENT_QUEUE_SIZE", d.client_queue_size),
            client_queue_bytes=_int(env, "COLLAB_CLIENT_QUEUE_BYTES", d.client_queue_bytes),
            doc_inbox_size=_int(env, "COLLAB_DOC_INBOX_SIZE", d.doc_inbox_size),
            incoming_bytes=_int(env, "COLLAB_INCOMING_BYTES", d.incoming_bytes),
            message_timeout=_float(env, "COLLAB_MESSAGE_TIMEOUT", d.message_timeout),
            ping_interval=_float(env, "COLLAB_PING_INTERVAL", d.ping_interval),
            ping_timeout=_float(env, "COLLAB_PING_TIMEOUT", d.ping_timeout),
            conn_rate=_float(env, "COLLAB_CONN_RATE", d.conn_rate),
            conn_burst=_int(env, "COLLAB_CONN_BURST", d.conn_burst),
            conn_per_ip=_int(env, "COLLAB_CONN_PER_IP", d.conn_per_ip),
            max_connections=_int(env, "COLLAB_MAX_CONNECTIONS", d.max_connections),
            handshake_timeout=_float(env, "COLLAB_HANDSHAKE_TIMEOUT", d.handshake_timeout),
            msg_rate=_float(env, "COLLAB_MSG_RATE", d.msg_rate),
            msg_burst=_int(env, "COLLAB_MSG_BURST", d.msg_burst),
            bytes_rate=_float(env, "COLLAB_BYTES_RATE", d.bytes_rate),
            bytes_burst=_int(env, "COLLAB_BYTES_BURST", d.bytes_burst),
            conn_reserve=_float(env, "COLLAB_CONN_RESERVE", d.conn_reserve),
            conn_reserve_per_ip=_int(env, "COLLAB_CONN_RESERVE_PER_IP", d.conn_reserve_per_ip),
            addr_msg_rate=_float(env, "COLLAB_ADDR_MSG_RATE", d.addr_msg_rate),
            addr_msg_burst=_int(env, "COLLAB_ADDR_MSG_BURST", d.addr_msg_burst),
            addr_bytes_rate=_float(env, "COLLAB_ADDR_BYTES_RATE", d.addr_bytes_rate),
            addr_bytes_burst=_int(env, "COLLAB_ADDR_BYTES_BURST", d.addr_bytes_burst),
            backoff_base=_float(env, "COLLAB_BACKOFF_BASE", d.backoff_base),
            backoff_max=_float(env, "COLLAB_BACKOFF_MAX", d.backoff_max),
            trusted_proxies=_list(env, "COLLAB_TRUSTED_PROXIES"),
            ipv6_prefix=_int(env, "COLLAB_IPV6_PREFIX", d.ipv6_prefix),
            secret=env.get("COLLAB_SECRET", ""),
            allowed_origins=_list(env, "COLLAB_ALLOWED_ORIGINS"),
            log_level=env.get("COLLAB_LOG_LEVEL", d.log_level),
            platform=detect_platform(env),
        )

    def replace(self, **changes) -> "Settings":
        """A copy with ``changes`` applied (fields given as ``None`` are ignored)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})
