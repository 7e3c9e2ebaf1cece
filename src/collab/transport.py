"""uvicorn's WebSocket protocol with collab's direct path and incoming-memory limits.

This is the one module that touches uvicorn's (and its websockets state
machine's) internals. Supported: **uvicorn >= 0.53, < 0.56** with its
``websockets-sansio`` protocol and **websockets >= 16.0**; Starlette is used
through its public API only (any release from 0.37). :func:`support_problem`
checks at start-up that every internal used here and by :mod:`collab.guard`'s
uvicorn glue is present; when one is not, :func:`ws_protocol` answers
uvicorn's own protocol and the server runs on plain ASGI. :func:`configure`
gives the protocol of one server its limits. :func:`protocol_factory` makes
what a started server makes for each connection it accepts, for connections
another process hands over (:mod:`collab.handoff`).

:class:`DirectWebSocketProtocol` adds one ASGI extension,
``scope["extensions"]["collab.direct"]``, whose value is the protocol:

* :meth:`~DirectWebSocketProtocol.encode_text` (static): the bytes of one
  complete, unmasked server text frame; a broadcast is encoded once and the
  same bytes written to every recipient (as ``websockets.broadcast`` does);
* :meth:`~DirectWebSocketProtocol.write_frames`: write encoded frames now and
  return ``True``, or return ``False`` without writing when that is not safe
  (the client reads slowly, a close was sent or received, the connection is
  gone); the app then falls back to ``await send(...)``;
* :meth:`~DirectWebSocketProtocol.drop`: close at once for a client that
  fell behind: the close frame goes out if the client takes it within
  :data:`DROP_GRACE` seconds, else the connection is aborted;
* :attr:`~DirectWebSocketProtocol.receiver`: set by the app; called with each
  message that arrives while the app's task waits in ``receive`` with nothing
  queued, inside ``data_received`` (no event dict, future or task switch).
  What it returns instead of ``None`` is what ``receive`` returns next.

Incoming memory is bounded: a message larger than the server's
``max_message_bytes`` is refused from its frame header (close 1009, fragments
counted), all unfinished messages of one server together hold at most
``incoming_bytes`` (close 1013 for the connection that would exceed it), and
one message must be complete within ``message_timeout`` seconds of its first
byte (close 1008). Large messages are read a few hundred kilobytes per
event-loop turn across all connections (:class:`ReadGate`), so that uploads
cannot fill a turn that other clients' messages wait behind. Frames are written whole and only while nothing else is
half-written, so the byte stream is the one ``send`` would have produced.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import struct
from collections import deque
from typing import Any, Callable

from websockets.exceptions import PayloadTooBig

try:
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
except ImportError:  # pragma: no cover - uvicorn < 0.35: support_problem() says so
    WebSocketsSansIOProtocol = None  # type: ignore[assignment,misc]

from .metrics import COUNTERS
from .protocol import CLOSE_INVALID_DATA, CLOSE_OVERLOADED, CLOSE_POLICY

log = logging.getLogger("collab.transport")

EXTENSION = "collab.direct"
#: The versions this module is written against (said when :func:`support_problem` finds a gap).
SUPPORTED = "uvicorn >= 0.53, < 0.56 (websockets-sansio protocol), websockets >= 16.0 (ServerProtocol.max_message_size)"
#: Seconds a dropped client gets to take its close frame before the connection is aborted.
DROP_GRACE = 2.0
#: Seconds a refused connection keeps reading (and discarding) so the client can read its
#: close frame: closing with unread input makes the kernel reset the connection (1006).
LINGER = 2.0
#: Bytes a refused connection discards, unparsed, before it is aborted instead.
LINGER_BYTES = 1024 * 1024
#: A direct write of more than this is refused while the transport still holds output.
WRITE_BUFFER_BYTES = 1024 * 1024
#: What a continuation frame costs beyond its payload, in the incoming budget.
_FRAGMENT_OVERHEAD = 64
#: Bytes of unfinished messages that all connections of one server read in one event-loop turn.
PARTIAL_BYTES_PER_TURN = 512 * 1024
#: What asyncio reads from a socket at most at once (its selector transports' ``max_size``).
_READ_SIZE = 256 * 1024

_pack_short = struct.Struct("!BBH").pack
_pack_long = struct.Struct("!BBQ").pack


def encode_text(text: str) -> bytes:
    """One complete server-to-client text frame (FIN, opcode 1, no mask) carrying ``text``."""
    payload = text.encode("utf-8")
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return _pack_short(0x81, 126, n) + payload
    return _pack_long(0x81, 127, n) + payload


def _close_frame(code: int, reason: str) -> bytes:
    """One complete server close frame (``reason`` cut to fit a control frame)."""
    payload = code.to_bytes(2, "big") + reason.encode("utf-8")[:123].decode("utf-8", "ignore").encode("utf-8")
    return bytes((0x88, len(payload))) + payload


class ReceiverFailed:
    """What ``receive`` returns after the app's receiver raised ``exc`` inline (the app raises it again)."""

    __slots__ = ("exc",)

    def __init__(self, exc: Exception) -> None:
        self.exc = exc


class IncomingBudget:
    """Bytes that unfinished incoming messages hold, across all connections of one server."""

    __slots__ = ("limit", "held")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0


class ReadGate:
    """Spreads the reading of large unfinished messages over event-loop turns.

    One loop turn runs the callbacks of every readable socket: when dozens of
    connections upload large messages together, each turn would copy and
    unmask several megabytes, and every other client's message would wait
    behind them. A connection whose read leaves a message unfinished charges
    what it read; past ``per_turn`` bytes in a turn it stops reading and
    waits, oldest first, for a later turn with room. A message that arrives
    whole in one read is never charged, so small messages never wait here.
    """

    __slots__ = ("per_turn", "used", "waiting", "_scheduled")

    def __init__(self, per_turn: int = PARTIAL_BYTES_PER_TURN) -> None:
        self.per_turn = per_turn
        self.used = 0
        self.waiting: deque[Any] = deque()
        self._scheduled = False

    def charge(self, nbytes: int) -> bool:
        """Count ``nbytes`` read into an unfinished message; ``False``: the reader must wait in :attr:`waiting`."""
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._turn)
        self.used += nbytes
        if self.used <= self.per_turn and not self.waiting:
            return True
        COUNTERS.deferred_reads += 1
        return False

    def _turn(self) -> None:
        """Once per loop turn while anything reads: resume the oldest waiters that a turn's room holds."""
        self._scheduled = False
        self.used = 0
        waiting = self.waiting
        room = max(1, self.per_turn // _READ_SIZE)
        while waiting and room > 0:
            if waiting.popleft().gate_resume():
                room -= 1
        if waiting:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._turn)


class _Inbox:
    """The subset of :class:`asyncio.Queue` uvicorn's protocol uses, in two slots.

    At most one getter (the connection's ASGI task); the protocol pauses
    reading while it holds a message.
    """

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> Any:
        while not self._items:
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        return self._items.pop(0)

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items)


class _Flag:
    """The subset of :class:`asyncio.Event` uvicorn's protocol uses, without a deque per instance."""

    __slots__ = ("_value", "_waiters")

    def __init__(self) -> None:
        self._value = False
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._value

    def set(self) -> None:
        if self._value:
            return
        self._value = True
        waiters, self._waiters = self._waiters, None
        for w in waiters or ():
            if not w.done():
                w.set_result(None)

    def clear(self) -> None:
        self._value = False

    async def wait(self) -> bool:
        if self._value:
            return True
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if self._waiters is not None and waiter in self._waiters:
                self._waiters.remove(waiter)
        return True


# -- the start-up check ---------------------------------------------------------

#: Methods of uvicorn's protocol this module overrides or calls.
_METHODS = ("handle_connect", "handle_cont", "handle_parser_exception", "send", "receive", "data_received",
            "connection_lost", "keepalive_timeout", "send_receive_event_to_app", "connection_made")
#: Attributes a fresh uvicorn protocol must have.
_ATTRIBUTES = ("queue", "writable", "frames", "curr_msg_data_type", "close_sent", "disconnected",
               "handshake_complete", "handshake_initiated", "initial_response", "read_paused", "transport",
               "close_timer", "loop", "conn")
#: Attributes of its websockets ``ServerProtocol``.
_CONN_ATTRIBUTES = ("reader", "max_message_size", "fail", "send_close", "data_to_send", "close_sent", "parser_exc")
#: What :mod:`collab.guard` reads and replaces on a loaded ``uvicorn.Config``.
_CONFIG_ATTRIBUTES = ("http_protocol_class", "ws_protocol_class", "loaded_app", "timeout_keep_alive")


async def _probe_app(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover - never called
    """The app of the probe config (:func:`support_problem` never serves it)."""


@functools.lru_cache(maxsize=1)
def support_problem() -> str | None:
    """``None`` when every uvicorn internal used here and by the guard's glue is present; else why not (one line)."""
    import uvicorn

    version = getattr(uvicorn, "__version__", "?")
    if WebSocketsSansIOProtocol is None:
        return f"uvicorn {version} has no websockets-sansio protocol (supported: {SUPPORTED})"
    missing = [f"WebSocketsSansIOProtocol.{m}" for m in _METHODS if not callable(getattr(WebSocketsSansIOProtocol, m, None))]
    try:
        from uvicorn.server import ServerState

        config = uvicorn.Config(_probe_app, ws="websockets-sansio", lifespan="off", log_config=None)
        config.load()
        missing += [f"Config.{a}" for a in _CONFIG_ATTRIBUTES if not hasattr(config, a)]
        loop = asyncio.new_event_loop()
        try:
            probe = WebSocketsSansIOProtocol(config, ServerState(), {}, _loop=loop)
        finally:
            loop.close()
        missing += [f"WebSocketsSansIOProtocol().{a}" for a in _ATTRIBUTES if not hasattr(probe, a)]
        conn = getattr(probe, "conn", None)
        missing += [f"ServerProtocol.{a}" for a in _CONN_ATTRIBUTES if not hasattr(conn, a)]
        if not hasattr(getattr(conn, "reader", None), "buffer"):
            missing.append("StreamReader.buffer")
    except Exception as exc:  # a changed constructor or loader: the same verdict, with the reason
        missing.append(f"a probe protocol ({type(exc).__name__}: {exc})")
    if missing:
        return f"uvicorn {version} lacks {', '.join(missing)} (supported: {SUPPORTED})"
    return None


def protocol_factory(server: Any) -> Callable[[], asyncio.Protocol]:
    """What a started ``uvicorn.Server`` calls for each connection it accepts (the guard's wrapper
    around its HTTP protocol), to serve a connection it did not accept (:mod:`collab.handoff`).

    Built as uvicorn's ``Server.startup`` builds its own ``create_protocol``, from the server's
    ``config``, ``server_state`` and ``lifespan.state``; :func:`handoff_problem` checks they exist."""
    config, state, app_state = server.config, server.server_state, server.lifespan.state
    return functools.partial(config.http_protocol_class, config=config, server_state=state, app_state=app_state)


def handoff_problem(server: Any) -> str | None:
    """``None`` when :func:`protocol_factory` can serve connections for this started server; else why not."""
    missing = [a for a in ("server_state", "lifespan", "config") if not hasattr(server, a)]
    if not missing and not hasattr(server.lifespan, "state"):
        missing.append("lifespan.state")
    if missing:
        import uvicorn

        return f"uvicorn {getattr(uvicorn, '__version__', '?')} lacks Server.{', Server.'.join(missing)} (supported: {SUPPORTED})"
    return None


def ws_protocol() -> str | type:
    """uvicorn's ``ws`` option: collab's protocol, or, when :func:`support_problem` finds a gap,
    uvicorn's own (plain ASGI), saying so in one warning line."""
    problem = support_problem()
    if problem is not None:
        log.warning("%s: WebSockets are served through plain ASGI, without collab's direct path "
                    "or the accept-time flood guard", problem)
        return "websockets-sansio" if WebSocketsSansIOProtocol is not None else "auto"
    return DirectWebSocketProtocol


def configure(config: Any, settings: Any) -> None:
    """Give collab's protocol in ``config`` (a ``uvicorn.Config`` not yet loaded) the limits of ``settings``.

    Each server gets its own subclass: its own budget of unfinished incoming bytes.
    """
    cls = config.ws
    if isinstance(cls, type) and DirectWebSocketProtocol is not None and issubclass(cls, DirectWebSocketProtocol):
        config.ws = type(cls.__name__, (cls,), {
            "budget": IncomingBudget(settings.incoming_bytes),
            "read_gate": ReadGate(),
            "max_message_bytes": settings.max_message_bytes,
            "message_timeout": settings.message_timeout,
        })


if WebSocketsSansIOProtocol is not None:

    class DirectWebSocketProtocol(WebSocketsSansIOProtocol):  # type: ignore[misc,valid-type]
        """uvicorn's sans-I/O WebSocket protocol, leaner, with the ``collab.direct`` extension and limits."""

        encode_text = staticmethod(encode_text)
        #: Set per server by :func:`configure` (these defaults: no budget, uvicorn's frame limit).
        budget = IncomingBudget(1 << 62)
        read_gate: ReadGate | None = None
        max_message_bytes = 0
        message_timeout = 0.0

        #: Set by the app while a session has joined (``None`` otherwise): called with each
        #: complete data message (``str`` or ``bytes``) that arrives while the app's task
        #: waits for one and none is queued, inside ``data_received``. It returns ``None``
        #: when it has handled the message, or an event for the app's ``receive`` to
        #: return next (the task goes on from there); what it raises comes back from
        #: ``receive`` as a :class:`ReceiverFailed`.
        receiver: Callable[[str | bytes], Any] | None = None

        # Unfinished incoming message: bytes held (counted in the budget), continuation
        # bytes so far, when it started, its deadline timer; set once refused.
        _held = 0
        _cont_bytes = 0
        _partial_since = 0.0
        _partial_timer: asyncio.TimerHandle | None = None
        _abort_timer: asyncio.TimerHandle | None = None
        _refused = False
        _discarded = 0
        _gate_waiting = False

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.queue = _Inbox()  # type: ignore[assignment]
            self.writable = _Flag()  # type: ignore[assignment]
            self.writable.set()
            if self.max_message_bytes > 0:
                self.conn.max_message_size = self.max_message_bytes

        def handle_connect(self, event: Any) -> None:
            super().handle_connect(event)
            scope = getattr(self, "scope", None)
            if scope is not None and self.handshake_initiated and not self.close_sent:
                scope["extensions"][EXTENSION] = self

        async def send(self, message: Any) -> None:
            await super().send(message)
            if self.handshake_complete and getattr(self, "request", None) is not None:
                # Only the handshake needs them; kept, they would hold its headers for the connection's life.
                self.request = None  # type: ignore[assignment]
                self.response = None  # type: ignore[assignment]
            if self.close_sent:
                self._abort_later(self.close_timeout + DROP_GRACE)

        def connection_lost(self, exc: Exception | None) -> None:
            self._hold(0)
            for timer in (self._partial_timer, self._abort_timer):
                if timer is not None:
                    timer.cancel()
            self._partial_timer = self._abort_timer = None
            self.receiver = None
            super().connection_lost(exc)

        # -- receiving ----------------------------------------------------------

        def refused_oversized(self, nbytes: int) -> None:
            """A message of ``nbytes`` (as announced) was refused with 1009; the guard charges it."""

        def data_received(self, data: bytes) -> None:
            if self._refused:
                # Past a refusal websockets would only discard it, after copying it into
                # its buffer: drop it here, and stop reading a client that keeps sending.
                self._discarded += len(data)
                if self._discarded > LINGER_BYTES:
                    self.transport.abort()
                return
            super().data_received(data)
            if self.frames or self.conn.reader.buffer or self._held:  # part of a message is held
                self._account()
                gate = self.read_gate
                if gate is not None and not self._refused and not gate.charge(len(data)):
                    self._gate_waiting = True
                    self.transport.pause_reading()
                    gate.waiting.append(self)

        def gate_resume(self) -> bool:
            """The :class:`ReadGate` has room: read again (unless closing, or uvicorn paused reading itself)."""
            self._gate_waiting = False
            if self.disconnected or self._refused or self.transport.is_closing():
                return False
            if not self.read_paused:
                self.transport.resume_reading()
            return True

        def _account(self) -> None:
            if self._refused:
                return
            held = len(self.conn.reader.buffer)
            if self.frames:
                held += len(self.frames[0]) + self._cont_bytes
            if held != self._held:
                self._hold(held)

        def handle_cont(self, event: Any) -> None:
            self._cont_bytes += len(event.data) + _FRAGMENT_OVERHEAD
            super().handle_cont(event)

        def _hold(self, held: int) -> None:
            """Account ``held`` bytes of unfinished input; refuse the connection past the budget."""
            budget = self.budget
            budget.held += held - self._held
            started = not self._held
            self._held = held
            if not held:
                return
            if budget.held > budget.limit:
                self._refuse(CLOSE_OVERLOADED, "the server holds too much unfinished input: send this message again later")
                return
            if started:
                self._partial_since = self.loop.time()
                if self._partial_timer is None and self.message_timeout > 0:
                    self._partial_timer = self.loop.call_later(self.message_timeout, self._partial_check)

        def _partial_check(self) -> None:
            """The deadline of an unfinished message: refuse it if it is the same message, still unfinished."""
            self._partial_timer = None
            if not self._held or self._refused:
                return
            if self.read_paused or self._gate_waiting:  # the server is not reading: not the client's delay
                self._partial_since = self.loop.time()
            left = self._partial_since + self.message_timeout - self.loop.time()
            if left > 0:
                self._partial_timer = self.loop.call_later(left, self._partial_check)
                return
            self._refuse(CLOSE_POLICY, f"a message took over {self.message_timeout:g} s to arrive")

        def _refuse(self, code: int, reason: str) -> None:
            """Close with ``code``, discarding later input (websockets' failure path)."""
            self.conn.fail(code, reason)
            self.handle_parser_exception()

        def handle_parser_exception(self) -> None:
            """websockets refused the input (too big from a frame header, bad framing, or :meth:`_refuse`).

            Its close frame goes out at once; reading goes on, discarding (at
            most :data:`LINGER_BYTES`), for :data:`LINGER` seconds, so a client
            still uploading reads the close frame instead of a connection reset.
            A message refused as too big is reported to :meth:`refused_oversized`.
            """
            if self._refused:
                return
            self._refused = True
            self.frames = []
            self._hold(0)
            sent = self.conn.close_sent
            code, reason = (sent.code, sent.reason) if sent is not None else (1006, "")
            output = b"".join(self.conn.data_to_send())
            exc = self.conn.parser_exc
            if isinstance(exc, PayloadTooBig):
                size = getattr(exc, "size", None) or self.max_message_bytes + 1
                self.refused_oversized(size + (getattr(exc, "current_size", None) or 0))
                if sent is not None and self.max_message_bytes:
                    # Said as the app says it, with what to do, rather than websockets' wording.
                    reason = f"message larger than {self.max_message_bytes} bytes: split the edit"
                    output = _close_frame(code, reason)
            self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
            self.transport.write(output)
            self.close_sent = True
            if self.read_paused or self._gate_waiting:
                self.read_paused = self._gate_waiting = False
                self.transport.resume_reading()
            if self.close_timer is None:
                self.close_timer = self.loop.call_later(LINGER, self.transport.close)
            self._abort_later(LINGER + DROP_GRACE)

        def send_receive_event_to_app(self) -> None:
            """Hand a complete message to :attr:`receiver` when the app is idle, else queue it.

            Queued, a message costs an event dict, a future, a task wake-up and,
            around it, a pause and a resume of reading; taken here, none of them.
            Only while the app's task waits in ``receive`` with nothing queued,
            so messages are still handled in the order they came.
            """
            frames = self.frames
            data = frames[0] if len(frames) == 1 else b"".join(frames)
            self.frames = []
            if self._cont_bytes:
                self._cont_bytes = 0
            if self.close_sent:
                return  # past the close: discard it, keep reading until the client's close reply
            payload: str | bytes = data
            if self.curr_msg_data_type == "text":
                try:
                    payload = data.decode()
                except UnicodeDecodeError as exc:
                    log.info("%s: closing with 1007: a text message is not UTF-8 (%s)", self._peer_name(), exc.reason)
                    self._refuse(CLOSE_INVALID_DATA, "a text message must be UTF-8")
                    return
            inbox = self.queue
            receiver = self.receiver
            if receiver is not None and not inbox._items and inbox._waiter is not None:
                try:
                    event = receiver(payload)
                except Exception as exc:  # raised in the app's task instead, as if it had happened there
                    event = ReceiverFailed(exc)
                if event is not None:
                    inbox.put_nowait(event)
                return
            if type(payload) is str:
                inbox.put_nowait({"type": "websocket.receive", "text": payload})
            else:
                inbox.put_nowait({"type": "websocket.receive", "bytes": payload})
            if not self.read_paused:  # the task is busy: read no more until it takes this one
                self.read_paused = True
                self.transport.pause_reading()

        def _peer_name(self) -> str:
            client = self.client
            return f"{client[0]}:{client[1]}" if client else "a client"

        # -- writing and dropping -------------------------------------------------

        def write_frames(self, data: bytes) -> bool:
            """Write encoded frames now; ``False`` (nothing written) if the app must ``await send`` instead."""
            if (
                self.close_sent
                or self.disconnected
                or not self.handshake_complete
                or self.initial_response is not None
                or not self.writable._value
                or self.transport.is_closing()
            ):
                return False
            if len(data) > WRITE_BUFFER_BYTES and self.transport.get_write_buffer_size():
                return False  # one large write waits for the buffer to drain: the transport holds at most one
            self.transport.write(data)
            return True

        def drop(self, code: int, reason: str) -> None:
            """Close now for a client that fell behind, without waiting on it to read.

            The close frame is queued behind what the transport holds and the
            connection closed after it; if the client has not taken it all
            within :data:`DROP_GRACE` seconds, the connection is aborted, which
            releases it (and its slots) at once.
            """
            if self.disconnected:
                return
            if not self.close_sent:
                self.close_sent = True
                self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
                try:
                    self.conn.send_close(code, reason)
                    self.transport.write(b"".join(self.conn.data_to_send()))
                except Exception:  # the state machine is past sending a close: just go
                    pass
            self.writable.set()  # a send() waiting for room ends (it finds close_sent)
            if not self.transport.is_closing():
                self.transport.close()
            self._abort_later(DROP_GRACE)

        def abort(self) -> None:
            """Close the connection now, whatever is unsent."""
            if not self.disconnected:
                self.transport.abort()

        def _abort_later(self, delay: float) -> None:
            if self._abort_timer is None and not self.disconnected:
                self._abort_timer = self.loop.call_later(delay, self._abort_now)

        def _abort_now(self) -> None:
            self._abort_timer = None
            self.abort()

        def keepalive_timeout(self) -> None:
            """uvicorn closes after a missed pong; abort if the close cannot be written (the client does not read)."""
            super().keepalive_timeout()
            self._abort_later(DROP_GRACE)

else:  # pragma: no cover
    DirectWebSocketProtocol = None  # type: ignore[assignment,misc]
