"""A lean Redis connection for the bus: RESP over an asyncio protocol, parsed by hiredis.

redis-py costs a process far more per command than the command itself: a
pipeline of one ``PUBLISH`` goes through its command, pipeline and retry
layers, and each pub/sub message wakes a reading task through its stream,
parser and message-handling layers. The bus is the one path where that is
paid per edit, so it has its own connections: :class:`Link` writes the
commands of one send in a single write and counts their replies, and a
subscriber link hands every message to a callback straight from
``data_received``. Everything else (reads of records, the heartbeat) stays
on redis-py. The URL means what it means to redis-py (its ``parse_url``):
``redis://``, ``rediss://`` (TLS; ``?ssl_cert_reqs=none`` skips the
certificate check) and ``unix://``, with a user, password and database.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import ssl
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import hiredis
from redis.connection import SSLConnection, parse_url

log = logging.getLogger("collab.backplane")

#: A command: its name and arguments (``bytes``, ``str`` or ``int``).
Command = Sequence[Any]
#: ``on_push(reply)``: a reply no command waits for (a subscriber's messages and confirmations).
PushHandler = Callable[[Any], None]


class LinkError(ConnectionError):
    """The connection to Redis was lost, or Redis refused a command (``str(exc)`` says which)."""


@dataclass(frozen=True)
class Address:
    """Where and how to connect, from a ``redis://`` URL."""

    host: str = "localhost"
    port: int = 6379
    path: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False
    verify: bool = True

    @classmethod
    def from_url(cls, url: str) -> "Address":
        kw = parse_url(url)
        return cls(host=kw.get("host") or "localhost", port=int(kw.get("port") or 6379), path=kw.get("path"),
                   db=int(kw.get("db") or 0), username=kw.get("username"), password=kw.get("password"),
                   tls=kw.get("connection_class") is SSLConnection,
                   verify=str(kw.get("ssl_cert_reqs", "required")).lower() not in ("none", "optional"))

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        ctx = ssl.create_default_context()
        if not self.verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx


def pack(commands: Sequence[Command]) -> bytes:
    """``commands`` in RESP, to be written at once."""
    return b"".join(hiredis.pack_command(tuple(c)) for c in commands)


class Link(asyncio.Protocol):
    """One connection to Redis. :meth:`call` sends commands and waits for all their replies; replies
    no call waits for (after ``SUBSCRIBE``) go to ``on_push``, in order, as they are read."""

    def __init__(self, on_push: PushHandler | None = None) -> None:
        self._reader = hiredis.Reader()
        self._on_push = on_push
        #: Calls waiting for replies, oldest first: how many replies each wants, those read, its future.
        self._waiting: collections.deque[tuple[int, list, asyncio.Future[list]]] = collections.deque()
        self.transport: asyncio.Transport | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # -- asyncio.Protocol --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        try:
            while (reply := reader.gets()) is not False:
                if self._waiting:
                    want, got, fut = self._waiting[0]
                    got.append(reply)
                    if len(got) == want:
                        self._waiting.popleft()
                        if not fut.done():
                            fut.set_result(got)
                elif self._on_push is not None:
                    try:
                        self._on_push(reply)
                    except Exception:  # one bad message must not end the subscription
                        log.exception("handling a message from Redis failed")
        except hiredis.ProtocolError as exc:
            self.abort(f"Redis sent something that is not RESP ({exc})")

    def connection_lost(self, exc: Exception | None) -> None:
        why = LinkError(f"the connection to Redis was lost ({exc or 'closed'})")
        while self._waiting:
            fut = self._waiting.popleft()[2]
            if not fut.done():
                fut.set_exception(why)
        if not self.lost.done():
            self.lost.set_result(None)

    # -- use ----------------------------------------------------------------------

    @property
    def open(self) -> bool:
        return self.transport is not None and not self.lost.done()

    def send(self, commands: Sequence[Command]) -> None:
        """Write ``commands`` whose replies nobody waits for (they go to ``on_push``)."""
        if not self.open:
            raise LinkError("the connection to Redis is closed")
        assert self.transport is not None
        self.transport.write(pack(commands))

    def call(self, commands: Sequence[Command]) -> "asyncio.Future[list]":
        """Write ``commands`` at once; the future is their replies (a refusal is a ``hiredis.ReplyError``
        in the list), or :class:`LinkError` if the connection is lost first."""
        fut: asyncio.Future[list] = asyncio.get_running_loop().create_future()
        if not commands:
            fut.set_result([])
            return fut
        self.send(commands)
        self._waiting.append((len(commands), [], fut))
        return fut

    def abort(self, why: str | None = None) -> None:
        """Drop the connection at once (what is unanswered fails with :class:`LinkError`); ``why``, if
        given, is logged."""
        if why is not None:
            log.warning("dropping a connection to Redis: %s", why)
        if self.transport is not None:
            self.transport.abort()


def refusals(commands: Sequence[Command], replies: list) -> str | None:
    """What Redis refused among ``commands`` (``None`` if nothing), to say in a log line."""
    bad = [f"{c[0]}: {r}" for c, r in zip(commands, replies) if isinstance(r, hiredis.ReplyError)]
    return "; ".join(bad) or None


async def connect(address: Address, name: str, on_push: PushHandler | None = None, timeout: float = 5.0) -> Link:
    """A :class:`Link` to ``address``, authenticated, named ``name`` (``CLIENT LIST``) and on its
    database; raises :class:`LinkError` (or ``OSError``) saying what failed."""
    loop = asyncio.get_running_loop()

    async def opened() -> Link:
        if address.path is not None:
            _, link = await loop.create_unix_connection(lambda: Link(on_push), address.path)
        else:
            _, link = await loop.create_connection(lambda: Link(on_push), address.host, address.port,
                                                   ssl=address.ssl_context())
        return link

    link = await asyncio.wait_for(opened(), timeout)
    hello: list[Command] = []
    if address.password is not None:
        hello.append(("AUTH", address.username, address.password) if address.username else ("AUTH", address.password))
    hello.append(("CLIENT", "SETNAME", name))
    if address.db:
        hello.append(("SELECT", address.db))
    try:
        replies = await asyncio.wait_for(link.call(hello), timeout)
    except BaseException:
        link.abort()
        raise
    refused = refusals(hello, replies)
    if refused is not None:
        link.abort()
        raise LinkError(f"Redis refused the connection ({refused}): check the user, password and database in REDIS_URL")
    return link
