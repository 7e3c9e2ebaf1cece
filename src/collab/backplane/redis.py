"""The Redis backplane (redis-py asyncio): one pub/sub bus, presence hashes, heartbeats.

Keys and channels, under a prefix (``collab`` unless the URL says
``?prefix=NAME``, so several deployments can share one Redis):

* channel ``{prefix}:bus``: every process's messages, in bundles (below);
* channel ``{prefix}:to:{id}``: the bundles for process ``id`` alone;
* hash ``{prefix}:peers:{doc}``: client id -> JSON presence of every process's clients;
* key ``{prefix}:proc:{id}``: this process's heartbeat, refreshed every
  ``heartbeat_ttl / 3`` seconds and expiring after ``heartbeat_ttl``; its
  value is the process's relay address (``1``: it has none);
* key ``{prefix}:owner:{doc}``: the id of the process that owns the document.

Outgoing commands go through one queue and are sent in order, pipelined, by
one task, so publishing never blocks a document. The bus (those commands,
and the subscription) runs on lean connections of its own
(:mod:`collab.backplane.resp`); reads of records and the heartbeat use
redis-py. What a process publishes
and sends while that task waits goes out as one message on the bus, a
bundle ``{"m": [["d", DOC, MSG] | ["p", PROC, MSG], ...], "at": TIME, "n": N,
"proc": SENDER}`` (``d``: a document's message; ``p``: a message to one
process; ``N`` counts the sender's bundles), in order: a Redis message costs
each end far more than the JSON in it, and a busy process has many
documents' commits and forwarded edits to tell in each turn. With the
deployment's key (:mod:`collab.seal`) each bundle goes out with its MAC in
front, and a reader drops one whose MAC does not hold, sent more than
:data:`collab.seal.MAX_AGE` seconds away from now, or numbered no higher than
the last one read from its sender (replayed). A bundle whose entries are all
for one process goes on that process's own channel, which only it reads
(forwarded submits, mostly); any other bundle goes on the bus, and every
process reads it and keeps what is for its open documents and for itself,
which suits the handful of processes one deployment runs. Both channels
share one subscription and one sending connection, so a process reads what
another sends it in the order it was sent. Pub/sub may lose messages (a
reconnect, a subscriber Redis dropped as too slow): the reader notices a
reconnect by the re-subscription confirmation and asks the hub to resync.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Any, Callable, NamedTuple
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ..aio import cancel_and_wait
from ..seal import MAX_AGE
from . import Backplane, DirectHandler, Handler
from .resp import Address, Command, Link, LinkError, connect, refusals

try:
    import orjson

    _dumps: Callable[[Any], bytes] = orjson.dumps
    _loads: Callable[[bytes], Any] = orjson.loads
except ImportError:  # pragma: no cover
    import json

    def _dumps(obj: Any) -> bytes:
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()

    _loads = json.loads

log = logging.getLogger("collab.backplane")

_PREFIX = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")

#: Most entries in one bundle (a long queue, after Redis was away, goes out in several).
MAX_BUNDLE = 1000
#: Senders whose last bundle number is kept (processes come and go over a deployment's life).
MAX_SENDERS = 10_000
#: Seconds between two warnings about bundles dropped for their seal (one per burst, with the count).
REJECTED_WARN_EVERY = 60.0

# Delete KEYS[1] only if it still holds ARGV[1] (an owner drops its own record, never a successor's).
_DROP_IF_MINE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


class _Direct(NamedTuple):
    """A queued entry for process ``proc`` alone (``entry``: the ``["p", PROC, MSG]`` entry, encoded)."""

    proc: str
    entry: bytes


def split_prefix(url: str) -> tuple[str, str]:
    """``url`` without its ``prefix=NAME`` query parameter, and that prefix (default ``collab``)."""
    parts = urlsplit(url)
    prefix = "collab"
    kept = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key == "prefix":
            prefix = value
        else:
            kept.append((key, value))
    if not _PREFIX.match(prefix):
        raise SystemExit(f"prefix {prefix!r} in REDIS_URL is not a plain name: use letters, digits, . _ -")
    return urlunsplit(parts._replace(query=urlencode(kept))), prefix


class RedisBackplane(Backplane):
    """Processes meeting in one Redis at ``url`` (``redis://[:password@]host:port/db[?prefix=NAME]``)."""

    def __init__(self, url: str, heartbeat_ttl: float = 10.0, max_queue: int = 100_000) -> None:
        super().__init__()
        self.url, self.prefix = split_prefix(url)
        #: The channel every process publishes its bundles on (its name, and as sent and received).
        self._bus_name = f"{self.prefix}:bus"
        self.bus = self._bus_name.encode()
        self.heartbeat_ttl = heartbeat_ttl
        self.check_interval = heartbeat_ttl / 3
        self.max_queue = max_queue
        self.redis: Any = None
        self._address = Address.from_url(self.url)
        #: The bus's connections: commands out, and the subscription (:mod:`collab.backplane.resp`).
        self._out: Link | None = None
        self._sub: Link | None = None
        self._handler: Handler | None = None
        self._direct: DirectHandler | None = None
        self._on_resync: Callable[[], None] | None = None
        #: What the sender sends next, in order: bundle entries (``bytes``; :class:`_Direct` for one
        #: process), beats (``None``: an empty bundle on the bus), and Redis commands (tuples).
        self._queue: list[bytes | _Direct | Command | None] = []
        #: The documents whose messages are delivered (:meth:`subscribe`).
        self._docs: set[str] = set()
        self._bus_ready: asyncio.Future[None] | None = None
        #: The number of the last bundle this process published, and of the last read from each sender.
        self._sent_n = 0
        self._last_n: dict[str, int] = {}
        #: This process's heartbeat record (sealed once the hub set the seal, in :meth:`start`).
        self._beat = b"1"
        self._rejected_warned_at = -REJECTED_WARN_EVERY
        self._rejected_since_warning = 0
        #: This process's own channel, its name and as received (set in :meth:`start`).
        self._inbox_str = ""
        self._inbox = b""
        #: When this process last read one of its own bundles back (loop time; see ``_heartbeat``).
        self._echo_at = 0.0
        self._wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        #: Whether the bus's subscription was confirmed before (a second confirmation is a reconnect).
        self._confirmed = False
        self._own_tail = b""
        self._closing = False
        self._resync_pending = False
        #: Resyncs asked of the hub (reconnects, lost heartbeat), for tests and metrics.
        self.resyncs = 0
        #: Times every connection was dropped because Redis stopped answering (see ``_heartbeat``).
        self.reconnects = 0

    # -- names --------------------------------------------------------------

    def _peers_key(self, doc: str) -> str:
        return f"{self.prefix}:peers:{doc}"

    def _proc_key(self, proc: str) -> str:
        return f"{self.prefix}:proc:{proc}"

    def _owner_key(self, doc: str) -> str:
        return f"{self.prefix}:owner:{doc}"

    def _inbox_name(self, proc: str) -> str:
        """The channel of the bundles for process ``proc`` alone."""
        return f"{self.prefix}:to:{proc}"

    def _where(self) -> str:
        a = self._address
        return a.path or f"{a.host}:{a.port}"

    # -- lifecycle ------------------------------------------------------------

    async def open(self) -> None:
        """Connect and check that Redis answers; exit with what to do if not."""
        try:
            import redis.asyncio as aioredis
        except ImportError:
            raise SystemExit("REDIS_URL is set but redis-py is not installed: pip install 'collab[redis]'") from None
        self.redis = aioredis.from_url(self.url, socket_connect_timeout=5, health_check_interval=30,
                                       client_name=self._name)
        try:
            await self.redis.ping()
        except Exception as exc:
            raise SystemExit(f"cannot reach Redis at {self._where()} ({exc}); check REDIS_URL and that Redis is running") from None

    async def start(self, handler: Handler, on_resync: Callable[[], None], direct: DirectHandler | None = None) -> None:
        if self.redis is None:
            await self.open()
        self._handler, self._on_resync, self._direct = handler, on_resync, direct
        beat = self.relay_address.encode() or b"1"  # sealed: a forged one is no heartbeat, and names no address
        self._beat = self._record(self._proc_key(self.process_id), beat)
        await self.redis.set(self._proc_key(self.process_id), self._beat, px=int(self.heartbeat_ttl * 1000))
        self._own_tail = _dumps({"proc": self.process_id})[1:]  # how this process's bundles end
        self._inbox_str = self._inbox_name(self.process_id)
        self._inbox = self._inbox_str.encode()
        self._bus_ready = asyncio.get_running_loop().create_future()
        self._tasks = [
            asyncio.create_task(self._listen(), name="collab-backplane-listen"),
            asyncio.create_task(self._send(), name="collab-backplane-send"),
            asyncio.create_task(self._heartbeat(), name="collab-backplane-heartbeat"),
        ]
        await self._subscribed()  # from here on, what others send this process reaches it

    async def _subscribed(self) -> None:
        """Wait until Redis confirmed the subscription to the bus (up to 10 s)."""
        if self._bus_ready is not None and not self._bus_ready.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._bus_ready), 10)
            except asyncio.TimeoutError:
                raise RuntimeError(f"Redis at {self._where()} did not confirm the subscription within 10 s; "
                                   "check that it is up and accepts SUBSCRIBE") from None

    async def close(self) -> None:
        self._closing = True
        self._wakeup.set()
        sender = self._tasks[1] if len(self._tasks) > 1 else None
        if sender is not None and not sender.done():  # let it send what is queued (leaves, last ops)
            try:
                await asyncio.wait_for(asyncio.shield(sender), 5)
            except (asyncio.TimeoutError, Exception):
                pass
        await cancel_and_wait(*self._tasks)
        if self.redis is not None:
            try:
                await self.redis.delete(self._proc_key(self.process_id))
            except Exception:
                pass
            await self.redis.aclose()
            self.redis = None
        self._drop_links()

    # -- subscriptions -------------------------------------------------------

    async def subscribe(self, doc: str) -> None:
        await self._subscribed()
        self._docs.add(doc)

    async def unsubscribe(self, doc: str) -> None:
        self._docs.discard(doc)

    @property
    def _name(self) -> str:
        """This process's connections' name in ``CLIENT LIST``."""
        return f"{self.prefix}-{self.process_id}"

    def _drop_links(self) -> None:
        """Drop the bus's connections (they connect again: the next send, and :meth:`_listen`)."""
        for link in (self._out, self._sub):
            if link is not None:
                link.abort()

    async def _listen(self) -> None:
        """Keep the subscription to the bus: connect, subscribe, and after a lost connection do it
        again (the second confirmation asks for a resync, see :meth:`_pushed`)."""
        loop = asyncio.get_running_loop()
        delay = 0.1
        while True:
            try:
                link = self._sub = await connect(self._address, self._name, self._pushed)
                link.send([("SUBSCRIBE", self.bus, self._inbox)])
                since = loop.time()
                await link.lost
                if self._closing:
                    return
                if loop.time() - since > 10 * delay:  # it had been working: try again at once
                    log.warning("the Redis subscription at %s was lost; subscribing again", self._where())
                    delay = 0.1
                    continue
                why = "the connection was lost"
            except asyncio.CancelledError:
                if self._sub is not None:
                    self._sub.abort()
                raise
            except Exception as exc:
                why = str(exc) or type(exc).__name__
            log.warning("subscribing to Redis at %s failed (%s); trying again in %.1f s", self._where(), why, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _pushed(self, reply: Any) -> None:
        """A reply on the subscription: a confirmation, or a bundle (delivered here, as it is read)."""
        if type(reply) is not list or len(reply) != 3:
            if isinstance(reply, Exception):  # a refused SUBSCRIBE: say why, rather than wait for a confirmation
                self._subscription_refused(str(reply))
            return
        kind, channel, data = reply
        if kind == b"subscribe":
            if channel != self._inbox:
                return  # the bus's: the process's own channel is confirmed last, and counts for both
            if self._bus_ready is not None and not self._bus_ready.done():
                self._bus_ready.set_result(None)
            if self._confirmed:
                self._resync("the Redis connection was re-established")
            self._confirmed = True
            return
        if kind != b"message" or type(data) is not bytes:
            return
        if channel == self.bus:
            if data.endswith(self._own_tail):  # this process's own bundle, back: not worth parsing
                self._echo_at = asyncio.get_running_loop().time()
                return
            name = self._bus_name
        elif channel == self._inbox:
            name = self._inbox_str
        else:
            return
        if self.seal is not None:
            data = self.seal.open(name, data)
            if data is None:
                self._reject("not sealed with this deployment's key")
                return
        try:
            body = _loads(data)
        except ValueError:
            log.warning("ignoring a message on %r that is not JSON", channel)
            return
        if type(body) is dict and type(body.get("m")) is list and type(body.get("proc")) is str:
            if self.seal is None or self._fresh(body):
                self._deliver(body["proc"], body["m"])

    def _subscription_refused(self, why: str) -> None:
        """Redis refused to subscribe: starting fails saying what to change; later, a warning says it."""
        msg = (f"Redis at {self._where()} refused the subscription ({why}); a Redis user limited by ACL needs "
               f"the channels under the prefix: &{self.prefix}:*")
        if self._bus_ready is not None and not self._bus_ready.done():
            self._bus_ready.set_exception(RuntimeError(msg))
        else:
            log.warning("%s", msg)

    def _reject(self, why: str) -> None:
        """Count a bundle dropped for ``why``; a warning now and then, with how many since the last."""
        self.rejected += 1
        self._rejected_since_warning += 1
        now = time.monotonic()
        if now - self._rejected_warned_at >= REJECTED_WARN_EVERY:
            log.warning("dropped %d bundle(s) on the bus (the last: %s): another deployment publishes on the same "
                        "Redis prefix (give each its own ?prefix= in REDIS_URL), a process of an older version is "
                        "running, or someone else can publish on this Redis (protect it with a password)",
                        self._rejected_since_warning, why)
            self._rejected_warned_at, self._rejected_since_warning = now, 0

    def _fresh(self, body: dict) -> bool:
        """Whether a sealed bundle is recent and the next of its sender's (not one replayed); the
        sender's bundles arrive in the order it sent them, numbered upwards."""
        at, n, proc = body.get("at"), body.get("n"), body["proc"]
        if type(at) is not float or not abs(time.time() - at) <= MAX_AGE:
            self._reject("stale")
            return False
        last = self._last_n.get(proc)
        if type(n) is not int or (last is not None and n <= last):
            self._reject("replayed")
            return False
        if last is None and len(self._last_n) >= MAX_SENDERS:
            del self._last_n[next(iter(self._last_n))]  # the longest known: most likely a process long gone
        self._last_n[proc] = n
        return True

    def _deliver(self, proc: str, entries: list) -> None:
        """Hand a bundle's entries for this process and its documents to the hub, in order."""
        if proc == self.process_id:
            return
        docs, me = self._docs, self.process_id
        for entry in entries:
            if type(entry) is not list or len(entry) != 3 or type(entry[2]) is not dict:
                continue
            kind, target, body = entry
            body["proc"] = proc
            try:
                if kind == "d" and target in docs:
                    if self._handler is not None:
                        self.received += 1
                        self._handler(target, body)
                elif kind == "p" and target == me and self._direct is not None:
                    self.received += 1
                    self._direct(body)
            except Exception:
                log.exception("handling a backplane message failed")

    def _resync(self, why: str) -> None:
        """Ask the hub to resync, once for a burst of causes (a reconnect confirms every channel again)."""
        if self._resync_pending:
            return
        self._resync_pending = True
        log.info("backplane: %s; re-reading the store and re-announcing clients", why)

        def fire() -> None:
            self._resync_pending = False
            self.resyncs += 1
            if self._on_resync is not None:
                self._on_resync()

        asyncio.get_running_loop().call_later(0.05, fire)

    # -- outgoing ---------------------------------------------------------------

    def _enqueue(self, command: bytes | Command | None) -> None:
        if len(self._queue) >= self.max_queue:
            # Redis is away for long: drop the oldest; receivers fill gaps from the store.
            del self._queue[: self.max_queue // 10]
        self._queue.append(command)
        self._wakeup.set()

    def publish(self, doc: str, msg: dict) -> None:
        self._enqueue(_dumps(("d", doc, msg)))

    def send(self, proc: str, msg: dict) -> None:
        self._enqueue(_Direct(proc, _dumps(("p", proc, msg))))

    def _record(self, name: str, value: bytes) -> bytes:
        """``value`` as stored under ``name``: sealed, with a seal."""
        return self.seal.seal(name, value) if self.seal is not None else value

    def _read_record(self, name: str, data: bytes | None) -> bytes | None:
        """A record as read under ``name``: its value, or ``None`` if absent or not sealed by the deployment."""
        if data is None or self.seal is None:
            return data
        return self.seal.open(name, data)

    def set_owner(self, doc: str) -> None:
        key = self._owner_key(doc)
        self._enqueue(("SET", key, self._record(key, self.process_id.encode())))

    def drop_owner(self, doc: str) -> None:
        key = self._owner_key(doc)  # a sealed record is the same bytes each time: compared as they are
        self._enqueue(("EVAL", _DROP_IF_MINE, 1, key, self._record(key, self.process_id.encode())))

    async def _get_record(self, key: str) -> bytes | None:
        """The record stored under ``key`` (:meth:`_read_record`): ``None`` if absent or not sealed by the deployment."""
        return self._read_record(key, await self.redis.get(key))

    async def owner(self, doc: str) -> str | None:
        value = await self._get_record(self._owner_key(doc))
        return value.decode() if value is not None else None

    async def address_of(self, proc: str) -> str | None:
        beat = await self._get_record(self._proc_key(proc))
        if beat is None:
            return None
        return beat.decode(errors="replace") if beat != b"1" else ""

    def set_peer(self, doc: str, client: str, info: dict) -> None:
        key = self._peers_key(doc)
        value = self._record(f"{key} {client}", _dumps(dict(info, proc=self.process_id)))
        self._enqueue(("HSET", key, client, value))

    def forget_peer(self, doc: str, client: str) -> None:
        self._enqueue(("HDEL", self._peers_key(doc), client))

    async def _send(self) -> None:
        """Send queued commands in order, as pipelines; after a failure, drop them and resync."""
        failed = False
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch, self._queue = self._queue, []
            try:
                commands: list[Command] = []
                entries: list[bytes] = []
                to: str | None = None  # the one process every entry is for, if there is one
                shared = False  # an entry (or the beat) is for every process
                beat = False
                for item in batch:
                    if type(item) is bytes:
                        entries.append(item)
                        shared = True
                    elif type(item) is _Direct:
                        entries.append(item.entry)
                        if to is None:
                            to = item.proc
                        elif item.proc != to:
                            shared = True
                    elif item is None:
                        shared = beat = True
                    else:
                        commands.append(item)
                # Entries keep their order in one bundle on one channel: the bus, unless all are for one process.
                if shared or to is None:
                    name, channel = self._bus_name, self.bus
                else:
                    name = self._inbox_name(to)
                    channel = name.encode()
                # Last: the presence and owner records are written before the messages that mention them arrive.
                tail = b"," + self._own_tail
                seal = self.seal
                for i in range(0, max(len(entries), beat), MAX_BUNDLE):
                    self._sent_n += 1
                    body = (b'{"m":[' + b",".join(entries[i:i + MAX_BUNDLE]) + b'],"at":' + _dumps(time.time())
                            + b',"n":' + str(self._sent_n).encode() + tail)
                    sealed = seal.seal(name, body) if seal is not None else body
                    commands.append(("PUBLISH", channel, sealed))
                    self.bundles += 1
                self.published += len(entries)
                out = self._out
                if out is None or not out.open:
                    out = self._out = await connect(self._address, self._name)
                refused = refusals(commands, await out.call(commands))
                if refused is not None:
                    raise LinkError(f"Redis refused {refused}")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._closing:
                    return
                log.warning("publishing to Redis at %s failed (%s); others will catch up from the store", self._where(), exc)
                failed = True
                await asyncio.sleep(1.0)
                continue
            if failed:
                failed = False
                self._resync("publishing to Redis works again")

    # -- presence and liveness -------------------------------------------------------

    async def _heartbeat(self) -> None:
        """Refresh this process's key (if it had expired, others announced our clients as left: resync),
        and check that Redis still answers both ways.

        Each beat also publishes an empty bundle, which comes back to this
        process like every bundle it publishes. A connection that died
        without a word (a dropped NAT entry, a cable: no reset) blocks a
        read or a write for ever; when no bundle of this process's has come
        back for ``heartbeat_ttl`` seconds, every connection to Redis is
        dropped, and the next command and the subscription connect anew.
        """
        key = self._proc_key(self.process_id)
        ttl = int(self.heartbeat_ttl * 1000)
        loop = asyncio.get_running_loop()
        self._echo_at = loop.time()
        while True:
            await asyncio.sleep(self.heartbeat_ttl / 3)
            self._enqueue(None)
            if loop.time() - self._echo_at > self.heartbeat_ttl:
                log.warning("no word from Redis at %s for %.0f s; connecting again", self._where(),
                            loop.time() - self._echo_at)
                self._echo_at = loop.time()  # the new connections get as long
                self.reconnects += 1
                self._drop_links()
                try:
                    await asyncio.wait_for(self.redis.connection_pool.disconnect(), 5)
                except (asyncio.TimeoutError, Exception) as exc:
                    log.warning("dropping the connections to Redis failed (%s)", exc)
            try:
                refreshed = await self._refresh(key, ttl)
                if not refreshed:
                    await asyncio.wait_for(self.redis.set(key, self._beat, px=ttl), self.heartbeat_ttl / 3)
                    self._resync("this process's heartbeat had expired")
            except asyncio.CancelledError:
                raise
            except (asyncio.TimeoutError, Exception) as exc:
                log.warning("heartbeat to Redis at %s failed (%r)", self._where(), exc)

    async def _refresh(self, key: str, ttl: int) -> bool:
        """Refresh the heartbeat if it is still there; a refresh that times out is tried once more at
        once, on a fresh connection: waiting a whole beat would let the key expire (others would
        announce this process's clients as left) when only the connection it was sent on had died."""
        for attempt in (1, 2):
            try:
                return bool(await asyncio.wait_for(self.redis.set(key, self._beat, px=ttl, xx=True),
                                                   self.heartbeat_ttl / 3))
            except asyncio.TimeoutError:
                if attempt == 2:
                    raise
                log.warning("heartbeat to Redis at %s timed out; trying again on a new connection", self._where())
                try:  # the idle ones may be dead too (the one that timed out is dropped by redis-py)
                    await asyncio.wait_for(self.redis.connection_pool.disconnect(inuse_connections=False), 5)
                except (asyncio.TimeoutError, Exception):
                    pass
        return False

    async def peers(self, doc: str) -> dict[str, dict]:
        key = self._peers_key(doc)
        raw = await self.redis.hgetall(key)
        out = {}
        for field, data in raw.items():
            client = field.decode(errors="replace")
            info = self._read_record(f"{key} {client}", data)
            if info is None:
                continue  # not recorded by a process of this deployment
            try:
                value = _loads(info)
            except ValueError:
                continue
            if type(value) is dict:
                out[client] = value
        return out

    async def dead(self, procs: set[str]) -> set[str]:
        others = sorted(p for p in procs if p != self.process_id)
        if not others:
            return set()
        pipe = self.redis.pipeline(transaction=False)
        for proc in others:
            pipe.get(self._proc_key(proc))
        found = await pipe.execute()
        return {p for p, beat in zip(others, found) if self._read_record(self._proc_key(p), beat) is None}
