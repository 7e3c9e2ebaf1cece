"""Convergence under concurrency, and durability across ``kill -9``."""

from __future__ import annotations

import asyncio
import random
import re

import pytest

import collab.client as cc
from conftest import ServerProcess, WS, http_get

ALPHABET = ["a", "b", " ", "é", "😀", "👍🏽", "𝄞", "中", "\n"]


async def random_editor(d: cc.Document, rng: random.Random, edits: int) -> None:
    for _ in range(edits):
        await asyncio.sleep(rng.random() * 0.01)
        n = len(d.text)
        if n and rng.random() < 0.35:
            pos = rng.randrange(n)
            await d.delete(pos, min(n - pos, rng.randint(1, 3)))
        else:
            pos = rng.randint(0, n)
            await d.insert(pos, "".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 4))))
        if rng.random() < 0.2:
            m = len(d.text)
            await d.set_cursor(rng.randint(0, m), rng.randint(0, m))


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_eight_clients_converge(server, seed):
    rng = random.Random(seed)
    doc = f"conv{seed}"
    clients = [await cc.connect(server.base_url, doc, user={"name": f"u{i}", "color": "#123456"}) for i in range(8)]
    try:
        await asyncio.gather(*(random_editor(d, random.Random(rng.random()), 40) for d in clients))
        for d in clients:
            await d.synced(timeout=20)
        r = await http_get(f"{server.base_url}/api/docs/{doc}")
        final = r.json()
        for d in clients:
            await d.wait_for(lambda t: t == final["text"], timeout=20)
            assert d.rev == final["rev"]
        assert final["rev"] > 0  # edits happened (empty op lists would be trivially equal)
    finally:
        for d in clients:
            await d.close()


@pytest.mark.parametrize("sync", ["full", "normal"])
async def test_sigkill_loses_no_acked_op_and_applies_none_twice(tmp_path, sync):
    """Both SQLite settings keep every acknowledged op through ``kill -9`` (``normal``
    gives up only a machine crash: the OS still holds what was committed)."""
    proc = ServerProcess(str(tmp_path / "data"), env={"COLLAB_SQLITE_SYNC": sync}).start()
    try:
        acked: set[str] = set()
        sent: set[str] = set()

        async def writer(i: int) -> None:
            ws = await WS.open(f"{proc.ws_url}/ws/crash")
            welcome = await ws.join()
            rev = welcome["rev"]
            n = 0
            try:
                while True:
                    token = f"<{i}-{n}>"
                    sent.add(token)
                    # Append at the end of the text as the client knows it.
                    await ws.send({"type": "op", "rev": rev, "op": [token] if rev == 0 and not length[0] else [length[0], token], "id": token})
                    while True:
                        msg = await ws.recv(timeout=5)
                        if msg["type"] == "ack":
                            acked.add(msg["id"])
                            rev = msg["rev"]
                            length[0] += len(token)
                            break
                        if msg["type"] == "op":
                            rev = msg["rev"]
                            length[0] = apply_len(length[0], msg["op"])
                        if msg["type"] == "error":
                            raise AssertionError(msg)
                    n += 1
            except Exception:
                return

        def apply_len(n: int, op: list) -> int:
            return n + sum(len(c) for c in op if isinstance(c, str)) + sum(c for c in op if isinstance(c, int) and c < 0)

        length = [0]
        # One writer keeps the arithmetic simple: a single client appending, acked op by op.
        task = asyncio.create_task(writer(0))
        while len(acked) < 60:
            await asyncio.sleep(0.01)
        proc.kill()
        await asyncio.wait_for(task, 10)
        assert acked, "nothing was acknowledged before the kill"

        proc.start()
        text = (await http_get(f"{proc.base_url}/api/docs/crash/text")).text
        found = re.findall(r"<\d+-\d+>", text)
        assert len(found) == len(set(found)), "an op was applied twice"
        assert acked <= set(found), f"acknowledged ops lost: {sorted(acked - set(found))[:5]}"
        assert set(found) <= sent

        # Clients reconnect after a crash and converge, resending what was not acknowledged.
        a = await cc.connect(proc.base_url, "crash")
        b = await cc.connect(proc.base_url, "crash")
        await a.insert(0, "A😀")
        proc.kill()
        await b.insert(len(b.text), "B👍🏽")
        proc.start()
        await a.synced(timeout=30)
        await b.synced(timeout=30)
        final = (await http_get(f"{proc.base_url}/api/docs/crash/text")).text
        await a.wait_for(lambda t: t == final, timeout=20)
        await b.wait_for(lambda t: t == final, timeout=20)
        assert final.count("A😀") == 1 and final.count("B👍🏽") == 1
        assert acked <= set(re.findall(r"<\d+-\d+>", final))
        await a.close()
        await b.close()
    finally:
        proc.stop()
