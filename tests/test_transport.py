"""collab.transport: the direct-write WebSocket protocol under a real uvicorn server."""

from __future__ import annotations

import asyncio
import socket

import pytest
import websockets
from websockets.frames import Frame, Opcode

from collab.config import Settings
from collab.server import serve
from collab.transport import EXTENSION, _Flag, _Inbox, encode_text


@pytest.mark.parametrize("text", ["", "a", "x" * 125, "x" * 126, "😀" * 40, "y" * 65535, "z" * 65536, "é😀" * 70000])
def test_encode_text_is_the_frame_websockets_would_send(text: str) -> None:
    expected = Frame(Opcode.TEXT, text.encode()).serialize(mask=False)
    assert encode_text(text) == expected


async def test_inbox_and_flag_behave_like_queue_and_event() -> None:
    inbox = _Inbox()
    getter = asyncio.ensure_future(inbox.get())
    await asyncio.sleep(0)
    assert not getter.done() and inbox.empty()
    inbox.put_nowait(1)
    inbox.put_nowait(2)
    assert await getter == 1 and inbox.qsize() == 1 and await inbox.get() == 2 and inbox.empty()

    flag = _Flag()
    assert not flag.is_set()
    waiters = [asyncio.ensure_future(flag.wait()) for _ in range(3)]
    await asyncio.sleep(0)
    assert not any(w.done() for w in waiters)
    flag.set()
    assert await asyncio.gather(*waiters) == [True, True, True]
    flag.clear()
    assert not flag.is_set()
    cancelled = asyncio.ensure_future(flag.wait())
    await asyncio.sleep(0)
    cancelled.cancel()
    await asyncio.gather(cancelled, return_exceptions=True)
    assert not flag._waiters  # a cancelled waiter leaves nothing behind


async def _serve(app) -> tuple[str, asyncio.Task]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    settings = Settings(host="127.0.0.1", port=sock.getsockname()[1])
    started = asyncio.Event()
    task = asyncio.create_task(serve(settings, app, sockets=[sock], started=started))
    await asyncio.wait_for(started.wait(), 15)
    return f"ws://127.0.0.1:{settings.port}/ws", task


async def _stop(task: asyncio.Task) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_direct_writes_reach_the_client_in_order_with_asgi_sends_and_stop_after_close() -> None:
    results: dict = {}

    async def app(scope, receive, send):
        if scope["type"] != "websocket":
            return
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        direct = scope["extensions"].get(EXTENSION)
        results["direct"] = direct is not None
        await receive()  # the client's "go"
        # Two frames in one write, an ASGI send between direct writes: one ordered stream.
        assert direct.write_frames(direct.encode_text("one 😀") + direct.encode_text("two"))
        await send({"type": "websocket.send", "text": "three"})
        assert direct.write_frames(direct.encode_text("four" * 20000))
        await send({"type": "websocket.close", "code": 4321, "reason": "bye"})
        results["after_close"] = direct.write_frames(direct.encode_text("never"))

    url, task = await _serve(app)
    try:
        async with websockets.connect(url, max_size=None) as ws:
            await ws.send("go")
            got = [await ws.recv() for _ in range(4)]
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await ws.recv()
        assert got == ["one 😀", "two", "three", "four" * 20000]
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4321
        assert results == {"direct": True, "after_close": False}
    finally:
        await _stop(task)


async def test_direct_write_refuses_once_the_client_is_gone() -> None:
    gone = asyncio.Event()
    results: dict = {}

    async def app(scope, receive, send):
        if scope["type"] != "websocket":
            return
        await receive()
        await send({"type": "websocket.accept"})
        direct = scope["extensions"][EXTENSION]
        message = await receive()  # the client disconnects without a word
        results["message"] = message["type"]
        results["write"] = direct.write_frames(direct.encode_text("late"))
        gone.set()

    url, task = await _serve(app)
    try:
        ws = await websockets.connect(url)
        ws.transport.abort()
        await asyncio.wait_for(gone.wait(), 10)
        assert results == {"message": "websocket.disconnect", "write": False}
    finally:
        await _stop(task)


async def test_receiver_takes_messages_inline_only_while_the_app_waits_with_nothing_queued() -> None:
    """``receiver`` sees a message inside ``data_received`` when the app's task waits in
    ``receive`` with nothing queued; an event it returns is what ``receive`` gives next;
    while the task is busy, messages queue as usual. The order is the order sent."""
    log: list[tuple[str, object]] = []
    busy_done = asyncio.Event()
    idle_again = asyncio.Event()  # set just before the task waits in receive, after "q2"
    protocol: list = []

    async def app(scope, receive, send):
        if scope["type"] != "websocket":
            return
        await receive()
        await send({"type": "websocket.accept"})
        direct = scope["extensions"][EXTENSION]
        protocol.append(direct)

        def receiver(payload):
            if payload in ("slow", "end"):
                return {"type": "test.slow", "payload": payload}  # goes on in the task
            log.append(("inline", payload))
            return None

        direct.receiver = receiver
        while True:
            if ("queued", "q2") in log:
                idle_again.set()  # the test wakes once this task is suspended in receive()
            message = await receive()
            if message["type"] == "test.slow":
                log.append(("task", message["payload"]))
                if message["payload"] == "end":
                    break
                await send({"type": "websocket.send", "text": "busy"})
                await busy_done.wait()  # the client sends more meanwhile: they must queue
            elif message["type"] == "websocket.receive":
                log.append(("queued", message.get("text") or message.get("bytes")))
                if message.get("text") == "q2":
                    await send({"type": "websocket.send", "text": "idle"})
            else:
                break
        direct.receiver = None
        await send({"type": "websocket.send", "text": repr(log)})

    url, task = await _serve(app)
    try:
        async with websockets.connect(url) as ws:
            await ws.send("a😀")
            await ws.send(b"\x00\xffbin")
            await ws.send("slow")
            assert await asyncio.wait_for(ws.recv(), 10) == "busy"
            await ws.send("q1")
            await ws.send("q2")
            while protocol[0].queue.qsize() < 2:  # both arrived while the task is busy: queued
                await asyncio.sleep(0.01)
            busy_done.set()
            assert await asyncio.wait_for(ws.recv(), 10) == "idle"
            await asyncio.wait_for(idle_again.wait(), 10)  # the task is back in receive with nothing queued
            await ws.send("b")
            await ws.send("end")
            result = await asyncio.wait_for(ws.recv(), 10)
        assert result == repr([("inline", "a😀"), ("inline", b"\x00\xffbin"), ("task", "slow"),
                               ("queued", "q1"), ("queued", "q2"), ("inline", "b"), ("task", "end")])
    finally:
        await _stop(task)


async def test_a_large_direct_write_waits_while_the_transport_still_holds_output() -> None:
    """One connection's transport buffer holds at most one large write: the next waits for it to drain."""
    from collab.transport import WRITE_BUFFER_BYTES
    from test_connection import RawWS

    results: dict = {}
    done = asyncio.Event()

    async def app(scope, receive, send):
        if scope["type"] != "websocket":
            return
        await receive()
        await send({"type": "websocket.accept"})
        direct = scope["extensions"][EXTENSION]
        direct.transport.set_write_buffer_limits(high=64 * WRITE_BUFFER_BYTES)  # keep "writable" out of the way
        direct.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        big = direct.encode_text("x" * (2 * WRITE_BUFFER_BYTES))
        results["first"] = direct.write_frames(big)  # nothing buffered: written
        results["held"] = direct.transport.get_write_buffer_size() > 0  # the client reads nothing
        results["second"] = direct.write_frames(big)
        results["small"] = direct.write_frames(direct.encode_text("small"))
        done.set()
        await receive()

    url, task = await _serve(app)
    try:
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        client = await RawWS.open(port, "/ws", rcvbuf=4096)
        await asyncio.wait_for(done.wait(), 10)
        client.close()
        assert results == {"first": True, "held": True, "second": False, "small": True}
    finally:
        await _stop(task)
