"""uvicorn's WebSocket protocol with a direct path for the hub's fan-out and for incoming edits.

Under plain ASGI every frame sent to every client is an ``await send(...)``
through uvicorn, websockets' sans-I/O state machine and the transport: a
coroutine, a state check and a frame object per frame per recipient, and a
task switch to the per-client task that awaits it. With many recipients that
is most of a collaborative server's time (``docs/benchmarks.md``).

:class:`DirectWebSocketProtocol` is uvicorn's ``websockets-sansio`` protocol
plus one ASGI extension, ``scope["extensions"]["collab.direct"]``, whose value
is the protocol itself with two methods and an attribute:

* :meth:`DirectWebSocketProtocol.encode_text` (static): the bytes of one
  complete, unmasked server text frame; encode a broadcast once, write the
  same bytes to every recipient (as ``websockets.broadcast`` does);
* :meth:`DirectWebSocketProtocol.write_frames`: write already encoded frames
  now, synchronously, and return ``True``; or return ``False`` without
  writing when that is not safe (the transport is paused because the client
  reads slowly, a close was sent or received, the connection is gone), in
  which case the app falls back to ``await send(...)``, which waits for the
  transport or raises as ASGI says;
* :attr:`DirectWebSocketProtocol.receiver`: set by the app, it is called with
  each message that arrives while the app's task waits in ``receive`` with
  nothing queued, inside ``data_received``, instead of the message being
  queued for that task: no event dict, future, task wake-up, nor the pause
  and resume of reading uvicorn wraps around each message. What it cannot
  finish there it returns as an event, which ``receive`` returns next.

Frames are written whole and only while the connection is open and nothing
else is half-written (websockets' own output, pings and close frames, is
flushed to the transport by uvicorn as soon as it is produced), so the byte
stream is the one ``send`` would have produced. An app that does not find the
extension (another ASGI server) works unchanged through ``send``.

The protocol also keeps less per idle connection than uvicorn's: an
:class:`asyncio.Queue` (three deques) becomes :class:`_Inbox`, an
:class:`asyncio.Event` (a deque of waiters) becomes :class:`_Flag`, and the
handshake's request and response objects are dropped once it is done.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any, Callable

try:  # uvicorn >= 0.35
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
except ImportError:  # pragma: no cover - older uvicorn: served through plain ASGI send
    WebSocketsSansIOProtocol = None  # type: ignore[assignment,misc]

EXTENSION = "collab.direct"

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


class _Inbox:
    """The subset of :class:`asyncio.Queue` uvicorn's protocol uses, in two slots.

    Unbounded like uvicorn's queue (uvicorn pauses reading while it holds a
    message), with at most one getter: the connection's ASGI task.
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


if WebSocketsSansIOProtocol is not None:

    class DirectWebSocketProtocol(WebSocketsSansIOProtocol):  # type: ignore[misc,valid-type]
        """uvicorn's sans-I/O WebSocket protocol, leaner, with the ``collab.direct`` extension."""

        encode_text = staticmethod(encode_text)

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.queue = _Inbox()  # type: ignore[assignment]
            self.writable = _Flag()  # type: ignore[assignment]
            self.writable.set()

        def handle_connect(self, event: Any) -> None:
            super().handle_connect(event)
            scope = getattr(self, "scope", None)
            if scope is not None and self.handshake_initiated and not self.close_sent:
                scope["extensions"][EXTENSION] = self

        async def send(self, message: Any) -> None:
            await super().send(message)
            if self.handshake_complete and getattr(self, "request", None) is not None:
                # Only the handshake needs them; after it they are ~1 KiB of headers per connection.
                self.request = None  # type: ignore[assignment]
                self.response = None  # type: ignore[assignment]

        #: Set by the app while a session has joined (``None`` otherwise): called with each
        #: complete data message (``str`` or ``bytes``) that arrives while the app's task
        #: waits for one and none is queued, inside ``data_received``. It returns ``None``
        #: when it has handled the message, or an event for the app's ``receive`` to
        #: return next (the task goes on from there); it must not raise.
        receiver: Callable[[str | bytes], dict | None] | None = None

        def send_receive_event_to_app(self) -> None:
            """Hand a message to :attr:`receiver` when the app is idle; else queue it as uvicorn does.

            Queued, a message costs an event dict, a future, a task wake-up
            and, around it, a pause and a resume of reading (two ``epoll_ctl``
            calls); taken here, none of them. Only while the app's task waits
            in ``receive`` with nothing queued, so messages are still handled
            in the order they came.
            """
            receiver, inbox = self.receiver, self.queue
            if receiver is None or self.close_sent or inbox._items or inbox._waiter is None:
                super().send_receive_event_to_app()
                return
            data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
            payload: str | bytes = data
            if self.curr_msg_data_type == "text":
                try:
                    payload = data.decode()
                except UnicodeDecodeError:
                    super().send_receive_event_to_app()  # uvicorn logs it and closes with 1007
                    return
            self.frames = []
            event = receiver(payload)
            if event is not None:
                inbox.put_nowait(event)

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
            self.transport.write(data)
            return True

else:  # pragma: no cover
    DirectWebSocketProtocol = None  # type: ignore[assignment,misc]
