"""A failed or hung fsync against a real server: nothing acknowledged that no fsync covered.

The server runs in its own process (so it can be killed) with the SQLite
store's fsync helper; the helper's test-only fault file
(``COLLAB_TEST_FSYNC_FAULT``) makes it answer "failed", a fault no test can
cause on a healthy disk. The clients are real WebSocket clients.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal

import pytest
import websockets

from collab.store.walsync import FAULT_ENV

from conftest import WS, ServerProcess, http_get


async def _until_closed(ws: WS, timeout: float = 15) -> tuple[list[dict], int | None]:
    """Every message ``ws`` receives until the server closes it, and the close code."""
    got: list[dict] = []
    try:
        while True:
            got.append(json.loads(await asyncio.wait_for(ws.conn.recv(), timeout)))
    except websockets.ConnectionClosed as exc:
        return got, exc.rcvd.code if exc.rcvd is not None else None


def _acks(messages: list[dict], op_id: str) -> list[dict]:
    return [m for m in messages if m.get("type") == "ack" and m.get("id") == op_id]


async def test_after_a_failed_fsync_nothing_is_acked_and_a_restart_applies_the_unacked_op_once(tmp_path, ws_open):
    fault = tmp_path / "fsync-fault"
    data = str(tmp_path / "data")
    server = ServerProcess(data, env={FAULT_ENV: str(fault)}).start()
    try:
        a = await ws_open(f"{server.ws_url}/ws/doc")
        await a.join()
        await a.send({"type": "op", "rev": 0, "op": ["😀"], "id": "a1"})
        assert (await a.recv_type("ack"))["rev"] == 1
        other = await ws_open(f"{server.ws_url}/ws/other")
        await other.join()

        fault.touch()  # from now on the disk "fails" every fsync
        await a.send({"type": "op", "rev": 1, "op": [1, "🦄"], "id": "a2"})
        got, code = await _until_closed(a)
        assert not _acks(got, "a2") and code == 1011, (got, code)

        # The store has stopped: another document's edit is not acknowledged either...
        await other.send({"type": "op", "rev": 0, "op": ["x"], "id": "o1"})
        got, code = await _until_closed(other)
        assert not _acks(got, "o1") and code == 1011, (got, code)
        # ...nor the client's resend after reconnecting, even with the disk "fine" again.
        fault.unlink()
        b = await ws_open(f"{server.ws_url}/ws/doc")
        await b.send({"type": "join", "since": 1})
        await b.send({"type": "op", "rev": 1, "op": [1, "🦄"], "id": "a2"})
        got, code = await _until_closed(b)  # its join cannot load the document: the store refuses
        assert not _acks(got, "a2") and not [m for m in got if m.get("type") == "welcome"], got
        assert code == 1011, code
        health = await http_get(f"{server.base_url}/healthz")
        assert health.status_code == 503 and "fsync" in health.text
    finally:
        server.kill()

    restarted = ServerProcess(data).start()
    try:
        c = await ws_open(f"{restarted.ws_url}/ws/doc")
        welcome = await c.join(since=1)
        assert welcome["rev"] in (1, 2)  # the failed commit's rows: made durable at start, or gone
        await c.send({"type": "op", "rev": 1, "op": [1, "🦄"], "id": "a2"})
        ack = await c.recv_type("ack")
        assert ack["id"] == "a2" and ack["rev"] == 2
        await c.send({"type": "op", "rev": 1, "op": [1, "🦄"], "id": "a2"})  # once more: still once
        assert (await c.recv_type("ack"))["rev"] == 2
        doc = (await http_get(f"{restarted.base_url}/api/docs/doc")).json()
        assert (doc["rev"], doc["text"]) == (2, "😀🦄")
        other_doc = (await http_get(f"{restarted.base_url}/api/docs/other")).json()
        assert other_doc["rev"] == 0, "the unacknowledged edit of the other document was refused, never written"
    finally:
        restarted.stop()


def _children(pid: int) -> list[int]:
    """The process ids whose parent is ``pid``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


async def test_a_hung_fsync_makes_healthz_answer_503_until_it_answers(tmp_path, ws_open):
    """A disk that does not answer holds every ack; past the fsync timeout ``/healthz`` says so."""
    server = ServerProcess(str(tmp_path / "data"), env={"COLLAB_FSYNC_TIMEOUT": "0.2"}).start()
    assert server.proc is not None
    helpers = _children(server.proc.pid)
    assert len(helpers) == 1, helpers
    try:
        a = await ws_open(f"{server.ws_url}/ws/doc")
        await a.join()
        os.kill(helpers[0], signal.SIGSTOP)  # the disk stops answering
        try:
            await a.send({"type": "op", "rev": 0, "op": ["🐢"], "id": "t1"})
            deadline = asyncio.get_running_loop().time() + 15
            while True:  # wait for the event: the timeout passing
                health = await http_get(f"{server.base_url}/healthz")
                if health.status_code != 200 or asyncio.get_running_loop().time() > deadline:
                    break
                await asyncio.sleep(0.05)
            assert health.status_code == 503 and "outstanding" in health.text, health.text
            with pytest.raises(asyncio.TimeoutError):
                await a.recv_type("ack", timeout=0.2)  # not acked while the fsync hangs
        finally:
            os.kill(helpers[0], signal.SIGCONT)
        assert (await a.recv_type("ack"))["rev"] == 1
        assert (await http_get(f"{server.base_url}/healthz")).status_code == 200
    finally:
        server.stop()


async def test_the_fsync_helper_exits_quietly_when_the_server_is_killed_while_it_syncs(tmp_path, ws_open):
    """Killed with an fsync asked for: the helper's answer meets a broken pipe; it exits with no traceback."""
    server = ServerProcess(str(tmp_path / "data")).start()
    assert server.proc is not None and server.proc.stderr is not None
    helpers = _children(server.proc.pid)
    assert len(helpers) == 1, helpers
    a = await ws_open(f"{server.ws_url}/ws/doc")
    await a.join()
    os.kill(helpers[0], signal.SIGSTOP)
    try:
        await a.send({"type": "op", "rev": 0, "op": ["x"], "id": "k1"})
        with pytest.raises(asyncio.TimeoutError):
            await a.recv_type("ack", timeout=0.3)  # the commit waits for the stopped helper
        server.kill()
    finally:
        os.kill(helpers[0], signal.SIGCONT)
    # The helper shares the server's stderr: reading it to the end waits for the helper to exit.
    err = await asyncio.get_running_loop().run_in_executor(None, server.proc.stderr.read)
    assert b"Traceback" not in err and b"BrokenPipeError" not in err, err.decode(errors="replace")[-2000:]
