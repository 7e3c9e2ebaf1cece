"""The pure parts of flood protection, on a fake clock: collab.limits, collab.addresses, collab.metrics.

No server, no event loop: every limiter takes the time as ``now``.
"""

from __future__ import annotations

import dataclasses

import pytest

from collab import limits, metrics
from collab.addresses import client_ip, ip_key
from collab.config import Settings
from collab.limits import ConnectionLimiter, Limits, MessageLimiter, SourceLimits, TokenBucket, transform_cost


def source_limits(**changes: object) -> SourceLimits:
    """A SourceLimits with small, readable budgets, changed by ``changes``."""
    base = dict(conn_rate=1000.0, conn_burst=1000, conn_per_ip=100, max_connections=0,
                msg_rate=10.0, msg_burst=10, bytes_rate=1e9, bytes_burst=10**9,
                addr_msg_rate=10.0, addr_msg_burst=20, addr_bytes_rate=1e9, addr_bytes_burst=10**9,
                strikes=3, strike_window=10.0, backoff_base=1.0, backoff_max=8.0)
    base.update(changes)
    return SourceLimits(Limits(**base))  # type: ignore[arg-type]


def verdicts(lim: MessageLimiter, n: int, now: float, nbytes: int = 10) -> list[str]:
    return [lim.check(nbytes, now=now) for _ in range(n)]


# --------------------------------------------------------------------------
# Token bucket and the per-connection message limiter


def test_token_bucket_refills_at_rate_and_caps_at_burst() -> None:
    b = TokenBucket(rate=2.0, burst=3, now=0.0)
    assert [b.take(now=0.0) for _ in range(4)] == [True, True, True, False]
    assert not b.take(now=0.4)  # 0.8 token
    assert b.take(now=0.5)  # 1.0 token
    assert b.take(now=100.0) and b.take(now=100.0) and b.take(now=100.0)
    assert not b.take(now=100.0)  # refilled only up to the burst
    assert TokenBucket(rate=0, burst=1).take(10**9)  # rate 0 = unlimited


def test_message_limiter_limits_then_closes_and_counts() -> None:
    before = metrics.COUNTERS.limited_messages, metrics.COUNTERS.flood_closes
    lim = MessageLimiter(msg_rate=1e-6, msg_burst=5, bytes_rate=1e9, bytes_burst=1e9, strikes=3)
    assert verdicts(lim, 10, now=lim.stamp) == ["ok"] * 5 + ["limited"] * 3 + ["close", "close"]
    assert metrics.COUNTERS.limited_messages - before[0] == 3
    assert metrics.COUNTERS.flood_closes - before[1] == 2

    by_bytes = MessageLimiter(msg_rate=1e9, msg_burst=1e9, bytes_rate=1e-6, bytes_burst=100, strikes=10)
    assert [by_bytes.check(40, now=by_bytes.stamp) for _ in range(3)] == ["ok", "ok", "limited"]
    # A message bigger than the whole byte burst passes once the bucket is full.
    fresh = MessageLimiter(msg_rate=1e9, msg_burst=1e9, bytes_rate=1e-6, bytes_burst=100)
    assert fresh.check(1000, now=fresh.stamp) == "ok" and fresh.check(1, now=fresh.stamp) == "limited"


def test_message_limiter_forgives_strikes_over_the_window() -> None:
    lim = MessageLimiter(msg_rate=1.0, msg_burst=1, bytes_rate=0, bytes_burst=1, strikes=2, strike_window=2.0)
    t = lim.stamp
    assert verdicts(lim, 3, now=t) == ["ok", "limited", "limited"]
    # One second later: one message and one strike refilled.
    assert verdicts(lim, 3, now=t + 1.0) == ["ok", "limited", "close"]


# --------------------------------------------------------------------------
# Per-address budgets: reconnecting does not refill them


def test_a_new_connection_from_a_spent_address_does_not_start_with_a_full_budget() -> None:
    src = source_limits()
    t = 1000.0
    first = src.message_limiter("10.0.0.1", now=t)
    assert verdicts(first, 12, now=t) == ["ok"] * 10 + ["limited"] * 2  # connection burst 10
    second = src.message_limiter("10.0.0.1", now=t)  # reconnect: a fresh connection bucket of 10 ...
    assert verdicts(second, 12, now=t) == ["ok"] * 10 + ["limited"] * 2  # ... the address had 10 left of 20
    third = src.message_limiter("10.0.0.1", now=t)
    assert verdicts(third, 2, now=t) == ["limited", "limited"]  # address spent
    other = src.message_limiter("10.0.0.2", now=t)
    assert verdicts(other, 2, now=t) == ["ok", "ok"]  # another address is untouched
    # The address budget refills at addr_msg_rate (10/s) for all its connections together.
    assert verdicts(third, 11, now=t + 1.0) == ["ok"] * 10 + ["limited"]


def test_per_address_budget_counts_bytes() -> None:
    src = source_limits(addr_bytes_rate=1.0, addr_bytes_burst=1000, bytes_burst=10**6, msg_burst=100)
    t = 1000.0
    a, b = src.message_limiter("10.0.0.1", now=t), src.message_limiter("10.0.0.1", now=t)
    assert a.check(600, now=t) == "ok"
    assert b.check(600, now=t) == "limited"  # 400 bytes left for the address
    assert b.check(400, now=t) == "ok"


def test_flood_close_starts_a_growing_back_off_for_the_address() -> None:
    src = source_limits(msg_rate=1e-9, addr_msg_rate=1e-9, strikes=1)
    t = 1000.0
    assert src.acquire("10.0.0.1", now=t) == "ok"
    lim = src.message_limiter("10.0.0.1", now=t)
    assert verdicts(lim, 12, now=t)[-2:] == ["limited", "close"]
    assert src.acquire("10.0.0.1", now=t + 0.5) == "backoff"  # 1 s back-off
    assert src.acquire("10.0.0.2", now=t + 0.5) == "ok"  # only that address
    assert src.backing_off("10.0.0.1", now=t + 0.5) and not src.backing_off("10.0.0.1", now=t + 1.0)
    assert src.acquire("10.0.0.1", now=t + 1.0) == "ok"
    # Each flood close after the previous back-off passed doubles it: 2, 4, 8 (the max), 8.
    for expected, at in ((2.0, t + 2), (4.0, t + 10), (8.0, t + 20), (8.0, t + 30)):
        assert src.punish("10.0.0.1", now=at) == expected
        assert src.acquire("10.0.0.1", now=at + expected - 0.01) == "backoff"
    # Closes during a back-off do not stack.
    assert src.punish("10.0.0.1", now=t + 31) == pytest.approx(7.0)
    # Clean for backoff_max after the last back-off ended: it starts from the base again.
    assert src.punish("10.0.0.1", now=t + 38 + 8.5) == 1.0


def test_oversized_messages_are_charged_as_read_and_past_the_budget_start_a_back_off() -> None:
    src = source_limits(addr_bytes_rate=1000.0, addr_bytes_burst=10_000)
    t = 1000.0
    # One message a bit too large fits in the address's budget: no back-off.
    assert src.oversized("10.0.0.1", 6_000, now=t) == 0.0
    assert src.acquire("10.0.0.1", now=t) == "ok"
    # The next one, before the budget refilled, takes it below zero: the address backs off.
    assert src.oversized("10.0.0.1", 6_000, now=t + 1) == 1.0
    assert src.acquire("10.0.0.1", now=t + 1.5) == "backoff"
    assert src.acquire("10.0.0.2", now=t + 1.5) == "ok"
    # Its messages wait for the debt to be paid back, like any spent byte budget.
    assert not src.take("10.0.0.1", 10, now=t + 1.5)
    # A 64 MiB announcement from a fresh address backs it off at once; its debt is capped at
    # one burst, so its messages pass again once a burst has been refilled (10 s here).
    assert src.oversized("10.0.0.3", 64 << 20, now=t) == 1.0
    assert not src.take("10.0.0.3", 10, now=t + 9.9)
    assert src.take("10.0.0.3", 10, now=t + 10.1)


def test_after_a_flood_close_a_new_connection_gets_no_fresh_burst() -> None:
    src = source_limits(msg_rate=10.0, msg_burst=100, addr_msg_burst=1000, backoff_base=2.0, backoff_max=8.0)
    t = 1000.0
    older = src.message_limiter("10.0.0.1", now=t)
    src.punish("10.0.0.1", now=t)
    assert src.acquire("10.0.0.1", now=t + 1.99) == "backoff"
    assert src.acquire("10.0.0.1", now=t + 2.0) == "ok"
    lim = src.message_limiter("10.0.0.1", now=t + 2.0)
    assert lim.check(1, now=t + 2.0) == "limited"  # its bucket starts empty ...
    assert verdicts(lim, 6, now=t + 2.5) == ["ok"] * 5 + ["limited"]  # ... and refills at msg_rate
    assert verdicts(older, 3, now=t + 2.5) == ["ok"] * 3  # a connection opened before keeps its budget
    # Clean for backoff_max after the back-off ended: new connections get their burst again.
    assert verdicts(src.message_limiter("10.0.0.1", now=t + 10.0), 3, now=t + 10.0) == ["ok"] * 3


def test_transform_cost_is_charged_to_the_connection_and_the_address() -> None:
    assert transform_cost(0) == 0.0 and transform_cost(-3) == 0.0
    assert transform_cost(700) == 700 / limits.TRANSFORM_OPS_PER_MESSAGE
    src = source_limits(msg_burst=100, addr_msg_burst=100)
    t = 1000.0
    lim = src.message_limiter("10.0.0.1", now=t)
    lim.charge(transform_cost(int(95 * limits.TRANSFORM_OPS_PER_MESSAGE)), now=t)
    assert verdicts(lim, 6, now=t) == ["ok"] * 5 + ["limited"]
    # The address paid too: a new connection from it has nothing left either.
    assert src.message_limiter("10.0.0.1", now=t).check(1, now=t) == "limited"
    lim.charge(0, now=t)  # nothing to pay: no change
    assert lim.msg_tokens == pytest.approx(0.0)


def test_for_settings_is_one_instance_per_settings_object() -> None:
    s1, s2 = Settings(), Settings()
    assert SourceLimits.for_settings(s1) is SourceLimits.for_settings(s1)
    assert SourceLimits.for_settings(s1) is not SourceLimits.for_settings(s2)
    changed = Settings(addr_msg_burst=7, backoff_max=3.0, max_connections=100, conn_reserve=0.25)
    lim = SourceLimits.for_settings(changed)
    assert lim.msg_burst == 7 and lim.backoff_max == 3.0 and lim.high_water == 75


# --------------------------------------------------------------------------
# Accept time: per-address caps, the global cap and its reserve


def test_connection_limiter_caps_and_forgets_idle_sources() -> None:
    lim = ConnectionLimiter(conn_rate=1.0, conn_burst=2, conn_per_ip=2, max_connections=5, min_sweep=16)
    assert [lim.acquire("a", now=0.0) for _ in range(3)] == ["ok", "ok", "per_ip"]
    lim.release("a")
    assert lim.acquire("a", now=0.0) == "rate"  # burst of 2 spent
    assert lim.acquire("a", now=1.0) == "ok"
    assert [lim.acquire(k, now=1.0) for k in "bcd"] == ["ok", "ok", "ok"]
    assert lim.active == 5 and lim.acquire("e", now=1.0) == "global"
    # A spray of one-shot sources does not grow the table without bound.
    spray = ConnectionLimiter(conn_rate=1e-9, conn_burst=1, conn_per_ip=1, max_connections=0, min_sweep=16)
    for i in range(10_000):
        assert spray.acquire(f"10.0.{i // 256}.{i % 256}", now=float(i)) == "ok"
        spray.release(f"10.0.{i // 256}.{i % 256}")
    assert len(spray) <= 32


def test_near_the_global_cap_only_addresses_holding_few_connections_get_in() -> None:
    src = source_limits(max_connections=100, conn_reserve=0.2, conn_reserve_per_ip=2)
    assert src.high_water == 80
    flood = [f"10.1.0.{i}" for i in range(10)]
    admitted = sum(src.acquire(k, now=0.0) == "ok" for _ in range(20) for k in flood)
    assert admitted == 80  # the flood, 8 connections per address, stops at the high-water mark ...
    assert src.acquire(flood[0], now=0.0) == "crowded"
    # ... and quiet addresses still get in, each up to reserve_per_ip connections.
    assert [src.acquire("192.0.2.1", now=0.0) for _ in range(3)] == ["ok", "ok", "crowded"]
    assert src.acquire("192.0.2.2", now=0.0) == "ok"
    assert src.active == 83
    # A trusted proxy (no per-address state) is held only to the global cap.
    assert src.acquire("proxy", now=0.0, per_source=False) == "ok"


def test_proxy_clients_are_counted_per_address_without_a_second_global_slot() -> None:
    src = source_limits(conn_per_ip=2, max_connections=10)
    assert src.acquire("proxy", per_source=False) == "ok"
    assert [src.acquire("1.1.1.1", global_slot=False) for _ in range(3)] == ["ok", "ok", "per_ip"]
    assert src.active == 1
    src.release("1.1.1.1", global_slot=False)
    assert src.active == 1 and src.acquire("1.1.1.1", global_slot=False) == "ok"


def test_sweeps_keep_addresses_that_are_backing_off() -> None:
    src = source_limits(conn_rate=1e-9, conn_burst=1)
    src._min_sweep = src._sweep_at = 16
    src.punish("10.9.9.9", now=0.0)
    for i in range(200):
        key = f"10.0.0.{i}"
        assert src.acquire(key, now=0.1) == "ok"
        src.release(key)
    assert len(src) <= 33
    assert src.acquire("10.9.9.9", now=0.2) == "backoff"
    assert src.gauges()["backoff_sources"] >= 0


# --------------------------------------------------------------------------
# Addresses


def test_client_ip_walks_forwarded_for_right_to_left_through_trusted_hops() -> None:
    trusted = ["10.0.0.0/8", "127.0.0.1"]
    h = [(b"x-forwarded-for", b"6.6.6.6, 1.2.3.4"), (b"x-forwarded-for", b"10.1.1.1")]
    assert client_ip("127.0.0.1", h, trusted) == "1.2.3.4"  # 6.6.6.6 is client-supplied
    assert client_ip("8.8.8.8", h, trusted) == "8.8.8.8"  # untrusted peer: header ignored
    assert client_ip("127.0.0.1", h, []) == "127.0.0.1"  # feature off
    assert client_ip("10.0.0.2", {"X-Forwarded-For": "garbage, 10.0.0.9"}, trusted) == "10.0.0.9"
    assert client_ip("10.0.0.2", {"x-forwarded-for": "10.0.0.7"}, trusted) == "10.0.0.7"
    assert client_ip("10.0.0.2", [], trusted) == "10.0.0.2"
    assert client_ip("10.0.0.2", [(b"x-forwarded-for", b"[2001:db8::1]:443")], trusted) == "2001:db8::1"
    assert client_ip("::ffff:10.0.0.2", [(b"x-forwarded-for", b"5.5.5.5:80")], trusted) == "5.5.5.5"
    with pytest.raises(ValueError, match="COLLAB_TRUSTED_PROXIES"):
        client_ip("10.0.0.2", [], ["not-an-ip"])


def test_ip_key_groups_ipv6_by_prefix() -> None:
    assert ip_key("192.0.2.7") == "192.0.2.7"
    assert ip_key("2001:db8:1:2:aaaa::1") == ip_key("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::/64"
    assert ip_key("2001:db8:1:3::1") != ip_key("2001:db8:1:2::1")
    assert ip_key("2001:db8:1:2:aaaa::1", 128) == "2001:db8:1:2:aaaa::1/128"
    assert ip_key("2001:db8:1:2:aaaa::1", 48) == "2001:db8:1::/48"
    assert ip_key("::ffff:192.0.2.7") == "192.0.2.7"


# --------------------------------------------------------------------------
# Metrics


def test_metrics_text_is_prometheus_exposition() -> None:
    tracked = source_limits()
    metrics.track(tracked)
    tracked.punish("10.0.0.1")
    text = metrics.metrics_text()
    names = set()
    values = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            assert kind in ("counter", "gauge")
            names.add(name)
        elif line and not line.startswith("#"):
            name, value = line.split(" ")
            assert name in names, f"{name} has no TYPE line"
            values[name] = float(value)
    assert "collab_guard_refused_conn_rate_total" in names
    assert "collab_guard_limited_messages_total" in names
    assert "collab_guard_refused_backoff_total" in names
    assert values["collab_guard_backoff_sources"] >= 1
    assert text.endswith("\n")


def test_refusal_summary_is_logged_at_most_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    summary = metrics.Summary()
    summary.seen = dataclasses.replace(metrics.COUNTERS)  # what earlier tests in this process refused is not ours
    with caplog.at_level("WARNING", logger="collab.guard"):
        for _ in range(100):
            metrics.COUNTERS.refused_backoff += 1
            summary.note("10.0.0.1")
    lines = [r.getMessage() for r in caplog.records if r.name == "collab.guard"]
    assert len(lines) == 1 and "refused_backoff=1" in lines[0] and "10.0.0.1" in lines[0]
