"""The Redis bus's own connections (``collab.backplane.resp``), against a real Redis.

Needs ``COLLAB_TEST_REDIS_URL``; skipped with the reason otherwise.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from urllib.parse import urlsplit, urlunsplit

import pytest

from collab.backplane.resp import Address, LinkError, connect
from test_scaleout import _with_param

REDIS_URL = os.environ.get("COLLAB_TEST_REDIS_URL", "")


async def _redis():
    """A redis-py client of the test Redis, or skip saying why not."""
    if not REDIS_URL:
        pytest.skip("COLLAB_TEST_REDIS_URL is not set (.ci/run sets it)")
    import redis.asyncio as aioredis

    r = aioredis.from_url(REDIS_URL, socket_connect_timeout=5)
    try:
        await r.ping()
    except Exception as exc:
        await r.aclose()
        pytest.skip(f"Redis at COLLAB_TEST_REDIS_URL is unreachable: {exc}")
    return r


def _on_db(url: str, db: int) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{db}"))


async def _until(cond, what: str) -> None:
    async def poll() -> None:
        while not cond():
            await asyncio.sleep(0.02)

    try:
        await asyncio.wait_for(poll(), 30)
    except asyncio.TimeoutError:
        raise AssertionError(f"waited 30 s for {what}") from None


def test_addresses_mean_what_they_mean_to_redis_py() -> None:
    assert Address.from_url("redis://h:7000/2") == Address(host="h", port=7000, db=2)
    tls = Address.from_url("rediss://me:s%C3%A9cret@h/1?ssl_cert_reqs=none")
    assert (tls.tls, tls.verify, tls.username, tls.password, tls.db) == (True, False, "me", "sécret", 1)
    assert tls.ssl_context() is not None and Address.from_url("redis://h").ssl_context() is None
    sock = Address.from_url("unix:///run/redis.sock?db=4")
    assert (sock.path, sock.db) == ("/run/redis.sock", 4)


async def test_a_refused_password_says_what_to_check() -> None:
    r = await _redis()
    try:
        if (await r.config_get("requirepass")).get("requirepass"):
            pytest.skip("this Redis has a password: the refusal below needs one without")
    finally:
        await r.aclose()
    wrong = Address.from_url(REDIS_URL)
    wrong = Address(host=wrong.host, port=wrong.port, path=wrong.path, password="not-the-password 🔑")
    with pytest.raises(LinkError, match="check the user, password and database in REDIS_URL"):
        await connect(wrong, "collab-test-refused")


async def test_the_bus_writes_records_to_the_url_s_database_and_names_its_connections() -> None:
    """Presence written through the bus's own connection lands in the database the URL names, as the
    records redis-py reads do; the connections carry the process's name."""
    from collab.backplane.redis import RedisBackplane

    r = await _redis()
    await r.aclose()
    prefix = f"collab-test-{secrets.token_hex(4)}"
    bp = RedisBackplane(_on_db(REDIS_URL, 3) + f"?prefix={prefix}", heartbeat_ttl=3)
    await bp.start(lambda doc, msg: None, lambda: None)
    import redis.asyncio as aioredis

    db3 = aioredis.from_url(_on_db(REDIS_URL, 3))
    try:
        bp.set_peer("dbdoc", "c1", {"user": {"name": "Zoë 🦊"}})
        found: dict = {}

        async def poll() -> None:
            while True:
                found.update(await bp.peers("dbdoc"))
                if found:
                    return
                await asyncio.sleep(0.02)

        await asyncio.wait_for(poll(), 30)
        assert found["c1"]["user"] == {"name": "Zoë 🦊"}
        assert await db3.hexists(f"{prefix}:peers:dbdoc", "c1")
        names = [c.get("name") for c in await db3.client_list()]
        assert names.count(f"{prefix}-{bp.process_id}") >= 3  # redis-py's, the bus's out and its subscription
    finally:
        await bp.close()
        await db3.delete(f"{prefix}:peers:dbdoc")
        await db3.aclose()


async def test_a_command_redis_refuses_is_logged_and_the_bus_carries_on(caplog) -> None:
    """Redis refuses one command of a send (a presence hash that someone made a string): the refusal
    is logged with the command, the other process is asked to resync, and later sends arrive."""
    from collab.backplane.redis import RedisBackplane

    r = await _redis()
    prefix = f"collab-test-{secrets.token_hex(4)}"
    url = _with_param(REDIS_URL, "prefix", prefix)
    got: list[dict] = []
    one, two = RedisBackplane(url, heartbeat_ttl=3), RedisBackplane(url, heartbeat_ttl=3)
    await one.start(lambda doc, msg: None, lambda: None)
    await two.start(lambda doc, msg: got.append(msg), lambda: None)
    await two.subscribe("wrong")
    try:
        await r.set(f"{prefix}:peers:wrong", "not a hash")
        with caplog.at_level(logging.WARNING, logger="collab.backplane"):
            one.set_peer("wrong", "c1", {"user": None})
            one.publish("wrong", {"t": "join", "client": "c1", "user": None, "n": 1})
            await _until(lambda: one.resyncs >= 1, "a resync after the refusal")
        assert any("HSET" in rec.getMessage() and "WRONGTYPE" in rec.getMessage() for rec in caplog.records)
        await r.delete(f"{prefix}:peers:wrong")
        one.publish("wrong", {"t": "presence", "client": "c1", "cursor": None, "text": "après 🌍"})
        await _until(lambda: any(m.get("text") == "après 🌍" for m in got), "the next message")
    finally:
        await one.close()
        await two.close()
        await r.delete(f"{prefix}:peers:wrong")
        await r.aclose()


@pytest.mark.parametrize("missing", ["hiredis", "redis"])
async def test_a_missing_redis_package_says_what_to_install(monkeypatch, missing: str) -> None:
    """``REDIS_URL`` set without the ``redis`` extra's packages: one line saying what to install, no
    traceback (a package missing is a fault no real Redis can cause: it is hidden from the import)."""
    import sys

    from collab.backplane import open_backplane
    from collab.config import Settings

    for name in [m for m in sys.modules if m == missing or m.startswith(missing + ".")] + [
            "collab.backplane.redis", "collab.backplane.resp"]:
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setitem(sys.modules, missing, None)
    settings = Settings.from_env({"REDIS_URL": "redis://127.0.0.1:1/0",
                                  "DATABASE_URL": "postgresql://u@127.0.0.1:1/db"})
    with pytest.raises(SystemExit, match=rf"REDIS_URL is set but {missing} is not installed: "
                                         r"pip install 'collab\[redis\]'"):
        await open_backplane(settings)


async def test_a_heartbeat_sent_on_a_dead_connection_is_sent_again_on_a_new_one(tcp_proxy) -> None:
    """The connection the heartbeat goes out on stops answering (a dropped NAT entry), while new
    connections work: the refresh is sent again at once on a new one, so the key never expires
    and nobody announces this process's clients as left. Waiting for the next beat instead lets a
    key of three beats' life expire."""
    from collab.backplane.redis import RedisBackplane

    r = await _redis()
    port = urlsplit(REDIS_URL).port or 6379
    proxy = await tcp_proxy(port)
    prefix = f"collab-test-{secrets.token_hex(4)}"
    via_proxy = _with_param(REDIS_URL.replace(f":{port}", f":{proxy.port}", 1), "prefix", prefix)
    bp = RedisBackplane(via_proxy, heartbeat_ttl=3)
    await bp.open()
    key = f"{prefix}:proc:{bp.process_id}"
    try:
        assert await bp.redis.set(key, b"1", px=3000)
        proxy.blackhole()  # the connection redis-py holds now swallows what it is sent; new ones flow
        assert await bp._refresh(key, 3000) is True
        assert 0 < await r.pttl(key) <= 3000
    finally:
        await r.delete(key)
        await r.aclose()
        await bp.redis.aclose()


async def test_what_is_for_one_process_goes_to_it_alone_and_in_order_with_the_rest() -> None:
    """A send whose messages are all for one process goes on that process's own channel: another
    process never reads it, and neither does anyone listening on the bus. Messages to a process and a
    document's messages reach it in the order they were sent, however the sends fall into bundles."""
    import random

    from collab.backplane.redis import RedisBackplane

    r = await _redis()
    prefix = f"collab-test-{secrets.token_hex(4)}"
    url = _with_param(REDIS_URL, "prefix", prefix)
    seen: dict[str, list] = {"two": [], "three": []}
    one, two, three = (RedisBackplane(url, heartbeat_ttl=3) for _ in range(3))
    await one.start(lambda doc, msg: None, lambda: None)
    for name, bp in (("two", two), ("three", three)):
        await bp.start(lambda doc, msg, name=name: seen[name].append(("d", msg["i"])), lambda: None,
                       lambda msg, name=name: seen[name].append(("p", msg["i"])))
        await bp.subscribe("doc")
    bus = r.pubsub()
    await bus.subscribe(one.bus)
    try:
        one.send(two.process_id, {"t": "x", "i": "alone 📨"})
        await _until(lambda: seen["two"] == [("p", "alone 📨")], "the message on process two")
        one.publish("doc", {"t": "x", "i": "after"})
        await _until(lambda: ("d", "after") in seen["three"], "the next message, on the bus")
        on_bus = []
        while len(on_bus) < 1 or b'"after"' not in on_bus[-1]:
            msg = await asyncio.wait_for(bus.get_message(timeout=30), 30)
            if msg and msg["type"] == "message":
                on_bus.append(msg["data"])
        assert not any("alone".encode() in data for data in on_bus), "a message for one process went on the bus"
        assert seen["three"] == [("d", "after")]

        rng = random.Random(7)
        sent = []
        for i in range(300):
            if rng.random() < 0.5:
                one.send(two.process_id, {"t": "x", "i": i})
                sent.append(("p", i))
            else:
                one.publish("doc", {"t": "x", "i": i})
                sent.append(("d", i))
            if rng.random() < 0.3:
                await asyncio.sleep(0)  # lets the sender go: what follows falls into another bundle, or not
        await _until(lambda: len(seen["two"]) == 2 + len(sent), "every message on process two")
        assert seen["two"][2:] == sent
        assert seen["three"][1:] == [m for m in sent if m[0] == "d"]
    finally:
        await bus.aclose()
        for bp in (one, two, three):
            await bp.close()
        await r.aclose()


async def test_a_subscription_refused_by_an_acl_says_which_channels_the_user_needs() -> None:
    """A Redis user allowed the bus's channel but not each process's own: starting fails at once with
    Redis's refusal and the channels to allow, not after a wait for a confirmation that never comes."""
    from collab.backplane.redis import RedisBackplane

    r = await _redis()
    prefix = f"collab-test-{secrets.token_hex(4)}"
    user, password = prefix, secrets.token_hex(8)
    try:
        await r.execute_command("ACL", "SETUSER", user, "on", f">{password}", "~*", "resetchannels",
                                f"&{prefix}:bus", "+@all")
    except Exception as exc:  # a Redis before 6, or one whose ACLs this test may not change
        await r.aclose()
        pytest.skip(f"cannot make a Redis user for this test: {exc}")
    base = urlsplit(REDIS_URL)
    netloc = f"{user}:{password}@{base.hostname}:{base.port or 6379}"
    url = _with_param(urlunsplit(base._replace(netloc=netloc)), "prefix", prefix)
    bp = RedisBackplane(url, heartbeat_ttl=3)
    try:
        with pytest.raises(RuntimeError, match=rf"refused the subscription \(NOPERM.*&{prefix}:\*"):
            await bp.start(lambda doc, msg: None, lambda: None)
    finally:
        await bp.close()
        await r.execute_command("ACL", "DELUSER", user)
        await r.delete(f"{prefix}:proc:{bp.process_id}")
        await r.aclose()
