"""Start-up checks for ``collab serve``: every problem a person can cause
(a bad or unreachable ``DATABASE_URL``/``REDIS_URL``, a missing extra, a
port in use, an unwritable data directory, several workers without a shared
store) becomes one :class:`StartupError` line that says what to do, raised
before anything says "serving".

The checks open the real store and backplane once and close them again, so
what they report is what the server would meet; :mod:`collab.server` runs
them before it starts its workers.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sqlite3
import tempfile
from dataclasses import dataclass
from typing import Mapping
from urllib.parse import urlsplit

from collab.config import Settings


class StartupError(SystemExit):
    """A start-up failure: its one-line message says what to do (exit status 1, no traceback)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class Sources:
    """Which spelling set the port and the worker count, so that a message names the one to change."""

    port: str = "--port (or PORT)"
    workers: str = "--workers (or WEB_CONCURRENCY)"

    @classmethod
    def of(cls, flags: Mapping[str, object], env: Mapping[str, str]) -> "Sources":
        """From the ``serve`` flags that were given (``None``: not given) and the environment."""
        if flags.get("port") is not None:
            port = "--port"
        elif env.get("PORT"):
            port = "PORT"  # wins over COLLAB_PORT (see Settings.from_env)
        elif env.get("COLLAB_PORT"):
            port = "COLLAB_PORT"
        else:
            port = cls.port
        if flags.get("workers") is not None:
            workers = "--workers"
        elif env.get("WEB_CONCURRENCY"):
            workers = "WEB_CONCURRENCY"
        else:
            workers = cls.workers
        return cls(port=port, workers=workers)


POSTGRES_SCHEMES = ("postgres", "postgresql")
REDIS_SCHEMES = ("redis", "rediss", "unix")


def where(url: str, default_port: int) -> str:
    """``host:port/path`` of ``url`` without credentials (the host after the last ``@``, as URLs mean it)."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2] or "localhost"
    if ":" not in host.rpartition("]")[2]:
        host = f"{host}:{default_port}"
    return host + (parts.path if parts.path not in ("", "/") else "")


def _check_url(name: str, url: str, schemes: tuple[str, ...], example: str, default_port: int) -> None:
    parts = urlsplit(url)
    if parts.scheme not in schemes:
        raise StartupError(f"{name} must start with {' or '.join(s + '://' for s in schemes)} "
                           f"(e.g. {example}); unset it to run without")
    if parts.netloc.count("@") > 1:
        raise StartupError(f"the user name or password in {name} contains '@': write it as %40, or everything "
                           f"before the last '@' is taken for credentials and {where(url, default_port)} for the host")
    try:
        parts.port
    except ValueError:
        raise StartupError(f"{name} has an invalid port ({parts.netloc.rpartition('@')[2]}): "
                           f"use a number, e.g. {example}") from None


def check_configuration(settings: Settings, sources: Sources, env: Mapping[str, str] | None = None) -> None:
    """The checks that need no connection: URL shapes, installed extras, workers with a shared store."""
    env = os.environ if env is None else env
    postgres = bool(settings.database_url) and not settings.database_url.startswith("memory:")
    if postgres:
        _check_url("DATABASE_URL", settings.database_url, POSTGRES_SCHEMES, "postgres://user:password@host:5432/db", 5432)
        try:
            import asyncpg  # noqa: F401
        except ImportError:
            raise StartupError("DATABASE_URL is set, but the PostgreSQL driver is missing: "
                               "pip install 'collab[postgres]'") from None
    if settings.redis_url:
        _check_url("REDIS_URL", settings.redis_url, REDIS_SCHEMES, "redis://:password@host:6379/0", 6379)
        try:
            import redis  # noqa: F401
        except ImportError:
            raise StartupError("REDIS_URL is set, but the Redis client is missing: pip install 'collab[redis]'") from None
    if settings.workers > 1 and not (postgres and settings.redis_url):
        platform = ""
        if sources.workers == "WEB_CONCURRENCY":
            platform = " (Heroku's Python buildpack and other platforms set it themselves)"
        raise StartupError(
            f"{sources.workers}={settings.workers} asks for {settings.workers} worker processes{platform}, but processes share "
            "documents only through PostgreSQL and Redis: set DATABASE_URL=postgres://... and REDIS_URL=redis://..., "
            f"or set {'WEB_CONCURRENCY' if sources.workers == 'WEB_CONCURRENCY' else '--workers'}=1")
    if not settings.database_url:
        check_data_dir(settings.data_dir)
    if settings.handoff_dir and settings.redis_url:
        check_handoff_dir(settings.handoff_dir)
    if settings.relay_address:
        check_relay_address(settings)


def check_relay_address(settings: Settings) -> None:
    """``COLLAB_RELAY_ADDRESS`` is ``host:port`` or ``auto[:port]``, and relayed connections can be served: processes that
    share documents (Redis), and the relaying processes trusted (``COLLAB_TRUSTED_PROXIES``)."""
    from .addresses import auto_port
    from .handoff import split_address

    try:
        if auto_port(settings.relay_address, settings.port) is None:
            split_address(settings.relay_address)
    except ValueError as exc:
        raise StartupError(f"COLLAB_RELAY_ADDRESS: {exc}") from None
    if not settings.redis_url:
        raise StartupError("COLLAB_RELAY_ADDRESS is set, but connections are relayed only between processes that "
                           "share documents: set REDIS_URL (and DATABASE_URL), or unset COLLAB_RELAY_ADDRESS")
    if not settings.trusted_proxies:
        raise StartupError("COLLAB_RELAY_ADDRESS is set, but relayed connections reach this process from the other "
                           "collab processes, which must be trusted like your proxy: list their network in "
                           "COLLAB_TRUSTED_PROXIES (for example 10.0.0.0/8), or unset COLLAB_RELAY_ADDRESS")


def check_handoff_dir(handoff_dir: str) -> None:
    """Create ``handoff_dir`` if needed (for this user only) and check that a file can be made in it."""
    _check_writable(handoff_dir, 0o700, "cannot use the hand-over directory", "make it a directory that the "
                    "collab processes of this machine can write, or unset COLLAB_HANDOFF_DIR")


def check_data_dir(data_dir: str) -> None:
    """Create ``data_dir`` if needed and check that a file can be written in it."""
    _check_writable(data_dir, 0o777, "cannot write the data directory",
                    "make it writable for this user, or choose another with --data-dir / COLLAB_DATA_DIR")


def _check_writable(directory: str, mode: int, what: str, hint: str) -> None:
    """Create ``directory`` if needed (with ``mode``) and make a file in it; else stop with ``what``, why and ``hint``."""
    path = os.path.abspath(directory)
    try:
        os.makedirs(path, mode=mode, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise StartupError(f"{what} {path} ({exc.strerror or exc}): {hint}") from None


def bind(settings: Settings, sources: Sources) -> socket.socket:
    """The listening socket, shared by every worker; a one-line :class:`StartupError` if it cannot be had."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((settings.host, settings.port))
    except OSError as exc:
        sock.close()
        address = f"{settings.host}:{settings.port}"
        if isinstance(exc, socket.gaierror) or exc.errno == 99:  # EADDRNOTAVAIL: not an address of this machine
            raise StartupError(f"cannot listen on {address} ({exc.strerror}): set --host / COLLAB_HOST to an address "
                               "of this machine (127.0.0.1, or 0.0.0.0 for every interface)") from None
        if exc.errno == 13:  # EACCES
            raise StartupError(f"cannot listen on {address} (permission denied: ports below 1024 need root): "
                               f"set {sources.port} to a port above 1023, e.g. 8000") from None
        raise StartupError(f"cannot listen on {address} ({exc.strerror}): another program is using port "
                           f"{settings.port}; stop it, or set {sources.port} to a free port") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


async def _open_and_close(settings: Settings) -> None:
    from collab.backplane import open_backplane
    from collab.store import open_store

    store = await open_store(settings)
    try:
        backplane = await open_backplane(settings)
        if backplane is not None:
            await backplane.close()
    finally:
        await store.close()


def check_connections(settings: Settings) -> None:
    """Open the store (and the backplane) the settings select and close them; one line on any failure."""
    try:
        asyncio.run(_open_and_close(settings))
    except SystemExit:
        raise  # the store's and backplane's own one-line messages
    except sqlite3.Error as exc:
        path = os.path.abspath(settings.data_dir)
        raise StartupError(f"cannot open the SQLite database in {path} ({exc}): make the directory and its "
                           "files writable for this user, or choose another with --data-dir / COLLAB_DATA_DIR") from None
    except ImportError as exc:
        raise StartupError(f"{exc}: reinstall collab with its extras, e.g. pip install 'collab[postgres,redis]'") from None
    except (OSError, asyncio.TimeoutError, ValueError) as exc:
        target = ("PostgreSQL at " + where(settings.database_url, 5432)) if settings.database_url else "the store"
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise StartupError(f"cannot open {target} ({detail}): check DATABASE_URL and that the database is "
                           "running and reachable") from None


def preflight(settings: Settings, sources: Sources) -> socket.socket:
    """Every start-up check in order, ending with the bound listening socket."""
    check_configuration(settings, sources)
    sock = bind(settings, sources)
    try:
        check_connections(settings)
    except BaseException:
        sock.close()
        raise
    return sock
