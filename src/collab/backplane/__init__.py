"""Fan-out between processes that serve the same documents (like ShareDB's pub/sub adapters).

The store (PostgreSQL) decides the order of operations; the backplane only
tells the other processes, quickly, what was committed and who is present,
so that they can show it to their own clients. Nothing depends on the
backplane for correctness: a process that misses a message notices the gap
by revision and reads the missing operations from the store.

A :class:`Backplane` carries small dict messages per document:

* ``{"t": "ops", "ops": [[rev, op, client, id, cursor], ...]}`` after a commit;
* ``{"t": "join" | "leave" | "presence", "client": ..., ...}`` for presence;

each stamped with ``"proc"``, the sending process's id. It also carries
messages to one process (:meth:`Backplane.send`: for forwarding a
document's work to its owner, see ``docs/cluster.md``), and keeps, per
document, the presence of every process's clients (so that a process
opening a document learns who is already there), the process that owns it
(a hint: the lease in the store decides), and a heartbeat per process (so
that the clients of a crashed process can be announced as left). Implementations: :class:`LocalBackplane` (several hubs in one
process: tests, benchmarks) and :class:`collab.backplane.redis.RedisBackplane`.
"""

from __future__ import annotations

import abc
import asyncio
import secrets
from typing import TYPE_CHECKING, Any, Callable

from ..addresses import own_relay_address

if TYPE_CHECKING:
    from ..seal import Seal

#: ``handler(doc, message)``: called for every message from another process, in arrival order.
Handler = Callable[[str, dict], None]
#: ``direct(message)``: called for every message another process sent to this one (:meth:`Backplane.send`).
DirectHandler = Callable[[dict], None]


class Backplane(abc.ABC):
    """Publish/subscribe per document between the processes of one deployment."""

    #: Seconds between the hub's checks for dead processes and missed commits.
    check_interval: float = 3.0

    def __init__(self) -> None:
        #: This process's id, stamped on everything it publishes.
        self.process_id = secrets.token_hex(8)
        #: ``host:port`` where the other processes relay connections to this one ("": they do not;
        #: :mod:`collab.handoff`). Set before :meth:`start`, which records it beside the heartbeat.
        self.relay_address = ""
        #: Seals the bundles this process publishes and opens those it reads (the hub sets it from the
        #: deployment's key before :meth:`start`; see :mod:`collab.seal`). With a seal, a bundle that
        #: does not open, or is stale or replayed, is dropped: it did not come from this deployment.
        self.seal: Seal | None = None
        #: Bundles dropped for that (``/metrics``).
        self.rejected = 0
        #: Messages this process put on the bus and messages it took from it for its documents or
        #: itself, and the bundles (Redis messages) it published (``/metrics``).
        self.published = 0
        self.received = 0
        self.bundles = 0

    @abc.abstractmethod
    async def start(self, handler: Handler, on_resync: Callable[[], None], direct: DirectHandler | None = None) -> None:
        """Start delivering messages to ``handler`` (and ``direct``) and beating this process's heart.

        ``on_resync`` is called after messages may have been lost (a reconnect,
        or this process being presumed dead): the hub then re-reads the store
        and re-announces its clients.
        """

    @abc.abstractmethod
    async def close(self) -> None:
        """Send what is queued, stop, and withdraw this process's heartbeat."""

    @abc.abstractmethod
    async def subscribe(self, doc: str) -> None:
        """Receive ``doc``'s messages; returns once delivery of new ones is guaranteed."""

    @abc.abstractmethod
    async def unsubscribe(self, doc: str) -> None:
        """Stop receiving ``doc``'s messages."""

    @abc.abstractmethod
    def publish(self, doc: str, msg: dict) -> None:
        """Send ``msg`` to the other processes serving ``doc`` (queued: never blocks; in order)."""

    @abc.abstractmethod
    def send(self, proc: str, msg: dict) -> None:
        """Send ``msg`` to process ``proc`` only (queued, in order with :meth:`publish`; may be lost)."""

    @abc.abstractmethod
    def set_owner(self, doc: str) -> None:
        """Record (queued) that this process owns ``doc``."""

    @abc.abstractmethod
    def drop_owner(self, doc: str) -> None:
        """Remove the record that this process owns ``doc`` (queued; another process's record stays)."""

    @abc.abstractmethod
    async def owner(self, doc: str) -> str | None:
        """The process recorded as owning ``doc``, if any (a hint: the record may be stale)."""

    async def address_of(self, proc: str) -> str | None:
        """Where process ``proc`` takes relayed connections: its :attr:`relay_address` ("": it takes
        none), or ``None`` if it is gone or unknown. Only a backplane between machines knows."""
        return None

    @abc.abstractmethod
    def set_peer(self, doc: str, client: str, info: dict) -> None:
        """Record (queued, in order with :meth:`publish`) that ``client`` of this process is on ``doc``."""

    @abc.abstractmethod
    def forget_peer(self, doc: str, client: str) -> None:
        """Remove ``client`` from ``doc``'s presence record (queued)."""

    @abc.abstractmethod
    async def peers(self, doc: str) -> dict[str, dict]:
        """Every recorded client of ``doc`` by id: ``{"proc", "user", "cursor", "rev"}``."""

    @abc.abstractmethod
    async def dead(self, procs: set[str]) -> set[str]:
        """Those of ``procs`` whose heartbeat has expired (never this process)."""


class LocalBus:
    """What several :class:`LocalBackplane` objects of one process share."""

    def __init__(self) -> None:
        self.members: dict[str, "LocalBackplane"] = {}
        self.subscribers: dict[str, set[str]] = {}
        self.peers: dict[str, dict[str, dict]] = {}
        self.owners: dict[str, str] = {}
        self.alive: set[str] = set()


class LocalBackplane(Backplane):
    """An in-process backplane: hubs in one event loop on one :class:`LocalBus`.

    Delivery is asynchronous (``call_soon``) and ordered, like a network's.
    :meth:`crash` makes a member vanish without a word, as ``kill -9`` would.
    """

    def __init__(self, bus: LocalBus, check_interval: float = 3.0) -> None:
        super().__init__()
        self.bus = bus
        self.check_interval = check_interval
        self.handler: Handler | None = None
        self.direct: DirectHandler | None = None
        self.on_resync: Callable[[], None] | None = None
        self.paused = False

    async def start(self, handler: Handler, on_resync: Callable[[], None], direct: DirectHandler | None = None) -> None:
        self.handler, self.on_resync, self.direct = handler, on_resync, direct
        self.bus.members[self.process_id] = self
        self.bus.alive.add(self.process_id)

    async def close(self) -> None:
        self.bus.members.pop(self.process_id, None)
        self.bus.alive.discard(self.process_id)
        for subs in self.bus.subscribers.values():
            subs.discard(self.process_id)

    def crash(self) -> None:
        """Vanish: no more messages either way, heartbeat gone, presence records left behind."""
        self.bus.members.pop(self.process_id, None)
        self.bus.alive.discard(self.process_id)

    async def subscribe(self, doc: str) -> None:
        self.bus.subscribers.setdefault(doc, set()).add(self.process_id)

    async def unsubscribe(self, doc: str) -> None:
        self.bus.subscribers.get(doc, set()).discard(self.process_id)

    def publish(self, doc: str, msg: dict) -> None:
        if self.process_id not in self.bus.members:
            return
        msg = dict(msg, proc=self.process_id)
        self.published += 1
        loop = asyncio.get_running_loop()
        for proc in list(self.bus.subscribers.get(doc, ())):
            member = self.bus.members.get(proc)
            if member is not None and member is not self:
                loop.call_soon(member._deliver, doc, msg)

    def _deliver(self, doc: str, msg: dict) -> None:
        if self.handler is not None and not self.paused and self.process_id in self.bus.subscribers.get(doc, ()):
            self.received += 1
            self.handler(doc, msg)

    def send(self, proc: str, msg: dict) -> None:
        member = self.bus.members.get(proc)
        if self.process_id in self.bus.members and member is not None and member is not self:
            self.published += 1
            asyncio.get_running_loop().call_soon(member._deliver_direct, dict(msg, proc=self.process_id))

    def _deliver_direct(self, msg: dict) -> None:
        if self.direct is not None and not self.paused and self.process_id in self.bus.members:
            self.received += 1
            self.direct(msg)

    def set_owner(self, doc: str) -> None:
        if self.process_id in self.bus.members:
            self.bus.owners[doc] = self.process_id

    def drop_owner(self, doc: str) -> None:
        if self.bus.owners.get(doc) == self.process_id:
            del self.bus.owners[doc]

    async def owner(self, doc: str) -> str | None:
        return self.bus.owners.get(doc)

    def set_peer(self, doc: str, client: str, info: dict) -> None:
        if self.process_id in self.bus.members:
            self.bus.peers.setdefault(doc, {})[client] = dict(info, proc=self.process_id)

    def forget_peer(self, doc: str, client: str) -> None:
        self.bus.peers.get(doc, {}).pop(client, None)

    async def peers(self, doc: str) -> dict[str, dict]:
        return dict(self.bus.peers.get(doc, {}))

    async def dead(self, procs: set[str]) -> set[str]:
        return {p for p in procs if p != self.process_id and p not in self.bus.alive}


def check_settings(settings: Any) -> None:
    """Refuse configurations that would silently split a document's order; exit with what to do."""
    postgres = settings.database_url.startswith(("postgres://", "postgresql://"))
    if settings.workers > 1 and not (settings.redis_url and postgres):
        raise SystemExit(
            f"WEB_CONCURRENCY/--workers is {settings.workers}, but several processes must share one PostgreSQL "
            "database and one Redis: set DATABASE_URL=postgres://... and REDIS_URL=redis://..., or run 1 worker"
        )
    if settings.redis_url and not postgres:
        raise SystemExit(
            "REDIS_URL is set but DATABASE_URL is not a PostgreSQL URL: processes can only share documents "
            "through PostgreSQL. Set DATABASE_URL=postgres://..., or unset REDIS_URL for a single process"
        )


async def open_backplane(settings: Any) -> Backplane | None:
    """The backplane the settings select, connected: Redis for ``REDIS_URL``, else none (one process)."""
    check_settings(settings)
    if not settings.redis_url:
        return None
    try:
        from .redis import RedisBackplane
    except ImportError as exc:
        raise SystemExit(f"REDIS_URL is set but {(exc.name or 'redis').split('.')[0]} is not installed: "
                         "pip install 'collab[redis]'") from None

    timeout = settings.presence_timeout  # seconds after which a silent process's clients are announced as left
    backplane = RedisBackplane(settings.redis_url, heartbeat_ttl=max(1.0, timeout))
    if settings.relay_address:
        try:
            backplane.relay_address = await own_relay_address(settings.relay_address, settings.port, settings.redis_url)
        except OSError as exc:
            raise SystemExit(f"COLLAB_RELAY_ADDRESS={settings.relay_address}: cannot tell this machine's address on the "
                             f"network of Redis ({exc}); give it: COLLAB_RELAY_ADDRESS=10.0.0.5:8000") from None
    await backplane.open()
    return backplane


__all__ = ["Backplane", "DirectHandler", "Handler", "LocalBackplane", "LocalBus", "check_settings", "open_backplane"]
