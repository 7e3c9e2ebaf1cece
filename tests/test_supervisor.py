"""``collab serve --workers N``: a worker that dies is replaced, and ``/metrics`` answers for the whole group.

The group tests run the real command with two workers on PostgreSQL and
Redis (``COLLAB_TEST_DATABASE_URL`` and ``COLLAB_TEST_REDIS_URL``; skipped
with the reason otherwise), each on its own schema and Redis prefix. The
back-off test runs the supervisor alone, on workers that keep dying, and
needs neither. Every wait is for an event (a log line, an answer, a
process's end), bounded by a deadline.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import AsyncIterator

import httpx
import pytest

import collab.client as cc
from collab import metrics, workermetrics
from collab.supervisor import backoff
from conftest import ROOT, free_port
from test_scaleout import fresh_state


class Group:
    """A command's process (its log lines collected as they come), for tests that wait on what it says."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(argv, env=env, cwd=str(ROOT), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.lines: list[str] = []
        #: The Redis prefix of the group's keys, and the settings naming its store and Redis (set by the
        #: ``group`` fixture: another process started with them shares the group's documents).
        self.prefix = ""
        self.state_env: dict[str, str] = {}
        self._changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self.lines.append("<end of output>")
            self._changed.notify_all()

    def wait_line(self, pattern: str, timeout: float = 30, start: int = 0) -> re.Match:
        """The first line from index ``start`` on matching ``pattern``, as it arrives."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines[start:]:
                    found = re.search(pattern, line)
                    if found:
                        return found
                left = deadline - time.monotonic()
                if left <= 0 or (self.lines and self.lines[-1] == "<end of output>"):
                    raise AssertionError(f"no line matching {pattern!r}; the output was:\n" + "\n".join(self.lines))
                self._changed.wait(left)

    def workers(self) -> set[int]:
        """The pids of the group's live workers (the parent's children, from /proc)."""
        pid = self.proc.pid
        children: set[int] = set()
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                children.update(int(c) for c in f.read().split())
        return children

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM the parent; its exit code once the whole group is gone."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


@pytest.fixture
async def group() -> AsyncIterator:
    """``await group(workers)``: ``collab serve --workers N`` on a fresh schema and Redis prefix, serving."""
    async with fresh_state("sup") as state:
        started: list[Group] = []

        async def start(workers: int, **extra: str) -> tuple[Group, str]:
            port = free_port()
            env = {k: v for k, v in os.environ.items()
                   if not k.startswith("COLLAB_") and k not in ("PORT", "WEB_CONCURRENCY")}
            env.update(state.env, COLLAB_LOG_LEVEL="info", COLLAB_PRESENCE_TIMEOUT="2",
                       COLLAB_ADDR_MSG_RATE="100000", COLLAB_ADDR_MSG_BURST="100000",
                       # Scrapes come as fast as they are answered, each on a new connection: not a flood either.
                       COLLAB_CONN_RATE="100000", COLLAB_CONN_BURST="100000", **extra)
            g = Group([sys.executable, "-m", "collab", "serve", "--host", "127.0.0.1", "--port", str(port),
                       "--workers", str(workers)], env)
            g.prefix, g.state_env = state.prefix, state.env
            started.append(g)
            await asyncio.to_thread(g.wait_line, rf"serving http://\S+:{port}/")
            return g, f"http://127.0.0.1:{port}"

        try:
            yield start
        finally:
            for g in started:
                g.stop()


async def typist(d: cc.Document, me: int, edits: int, typed: list[str], pause: asyncio.Event | None = None) -> None:
    """Insert ``edits`` unique tokens (with an emoji) at token boundaries."""
    rng = random.Random(me)
    for n in range(edits):
        if pause is not None:
            await pause.wait()
        bounds = [0] + [m.end() for m in re.finditer("»", d.text)]
        token = f"«{me}.{n}🙂»"
        typed.append(token)
        await d.insert(rng.choice(bounds), token)
        await asyncio.sleep(rng.random() * 0.01)  # pacing, not synchronization


async def kill_and_wait_for_replacement(g: Group, victim: int) -> int:
    """SIGKILL worker ``victim``; the pid of the worker the supervisor says serves in its place."""
    mark = len(g.lines)
    os.kill(victim, signal.SIGKILL)
    found = await asyncio.to_thread(g.wait_line, rf"worker pid (\d+) is serving, in place of pid {victim}\b",
                                    30, mark)
    return int(found.group(1))


async def test_a_killed_worker_is_replaced_and_clients_converge(group):
    g, base = await group(2)
    first = g.workers()
    assert len(first) == 2, first
    doc = "restart-check"
    clients = [await cc.connect(base, doc, user={"name": f"w{i}", "color": "#123456"}) for i in range(4)]
    typed: list[list[str]] = [[] for _ in clients]
    try:
        writers = [asyncio.create_task(typist(d, i, 40, typed[i])) for i, d in enumerate(clients)]
        # Each original worker is killed in turn; each time a new one serves in its place.
        replacements = []
        for victim in sorted(first):
            replacements.append(await kill_and_wait_for_replacement(g, victim))
            assert victim not in g.workers()
        assert set(replacements) == g.workers() and not (set(replacements) & first)
        await asyncio.gather(*writers)
        for d in clients:
            await d.synced(timeout=60)
        # Only new workers are left: a client that connects now is served by one of them.
        late = await cc.connect(base, doc)
        try:
            await late.insert(0, "🚀")
            await late.synced(timeout=30)
            text = late.text
            for d in clients:
                await d.wait_for(lambda t: t == text, timeout=30)
        finally:
            await late.close()
        tokens = re.findall("«[^»]*»", text)
        assert sorted(tokens) == sorted(t for x in typed for t in x), "an acknowledged edit was lost or doubled"
        assert text == "🚀" + "".join(tokens)
    finally:
        for d in clients:
            await d.close()
    assert await asyncio.to_thread(g.stop) == 0
    assert "Traceback" not in "\n".join(g.lines)


def parse_metrics(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


async def test_metrics_of_two_workers_never_go_backwards_even_when_one_dies(group):
    g, base = await group(2)
    doc = "metrics-check"
    clients = [await cc.connect(base, doc) for _ in range(4)]
    typed: list[list[str]] = [[] for _ in clients]
    counters = [n for n, f in [(f.name, f) for f in metrics.APP_FAMILIES + metrics.guard_families()]
                if f.kind == "counter"]
    histogram = metrics.ACK_LATENCY_FAMILY.name
    scrapes: list[dict[str, float]] = []
    try:
        writers = [asyncio.create_task(typist(d, i, 60, typed[i])) for i, d in enumerate(clients)]
        killed = False
        async with httpx.AsyncClient(timeout=10) as http:
            while not all(w.done() for w in writers) or len(scrapes) < 20:
                # A new connection each time, so the kernel hands scrapes to either worker.
                resp = await http.get(base + "/metrics", headers={"Connection": "close"})
                scrapes.append(parse_metrics(resp.text))
                if not killed and sum(map(len, typed)) >= 80:
                    await kill_and_wait_for_replacement(g, min(g.workers()))
                    killed = True
        assert killed
        for d in clients:
            await d.synced(timeout=60)
        scrapes.append(parse_metrics((await asyncio.to_thread(httpx.get, base + "/metrics")).text))
    finally:
        for d in clients:
            await d.close()
    for name in counters + [f"{histogram}_count", f"{histogram}_sum"] + [k for k in scrapes[0] if "_bucket{" in k]:
        series = [s[name] for s in scrapes]
        drops = [(i, a, b) for i, (a, b) in enumerate(zip(series, series[1:])) if b < a]
        assert not drops, f"{name} went backwards across scrapes (index, before, after): {drops[:5]}"
    counts = [s[f"{histogram}_count"] for s in scrapes]
    assert counts[-1] > counts[0], "the ack-latency histogram did not grow while clients edited"
    assert scrapes[-1][f"{histogram}_bucket{{le=\"+Inf\"}}"] == counts[-1]
    assert scrapes[-1]["collab_ops_applied_total"] > 0


# -- the supervisor alone: workers that keep dying --------------------------------------------

FLAKY_GROUP = textwrap.dedent("""
    import logging, os, socket, sys, time
    from collab import supervisor

    logging.basicConfig(level="INFO", format="%(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    marker = sys.argv[1]

    def target(ready):
        if os.path.exists(marker):  # the first generation is up: every later worker dies at once
            os._exit(3)
        ready()
        while True:
            time.sleep(3600)

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    supervisor.supervise(2, sock, target, lambda: (open(marker, "w").close(), print("all serving", flush=True)))
    print("supervisor done", flush=True)
""")


async def test_workers_that_keep_dying_are_replaced_ever_more_slowly_and_sigterm_still_stops(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    script = tmp_path / "flaky.py"
    script.write_text(FLAKY_GROUP)
    g = Group([sys.executable, str(script), str(tmp_path / "first-generation-up")], env)
    try:
        await asyncio.to_thread(g.wait_line, "all serving")
        victim = min(g.workers())
        os.kill(victim, signal.SIGKILL)
        await asyncio.to_thread(g.wait_line, rf"worker pid {victim} stopped \(signal SIGKILL\).*starting another$")
        # Its replacements die at once (exit code 3): each is replaced after twice the delay of the one before.
        await asyncio.to_thread(g.wait_line, r"stopped \(exit code 3\).*starting another in 0.5 s \(2 early exits")
        await asyncio.to_thread(g.wait_line, r"stopped \(exit code 3\).*starting another in 1 s \(3 early exits")
        # SIGTERM during a back-off: the parent stops the live worker and exits without starting another.
        assert await asyncio.to_thread(g.stop, 10) == 0
        assert "supervisor done" in g.lines
    finally:
        g.stop()


# -- the pieces ------------------------------------------------------------------------------


def test_backoff_doubles_after_the_first_early_death_and_is_bounded():
    assert [backoff(n) for n in range(1, 6)] == [0.0, 0.5, 1.0, 2.0, 4.0]
    assert backoff(100) == 30.0


def test_render_histogram_is_cumulative_and_merge_keeps_dead_counters_but_not_their_gauges():
    fams = [metrics.Family("x_total", "counter", "X."), metrics.Family("g", "gauge", "G."),
            metrics.ACK_LATENCY_FAMILY]
    h1, h2 = metrics.Histogram(), metrics.Histogram()
    for v in (0.0005, 0.003, 0.003, 20.0):
        h1.observe(v)
    h2.observe(0.2)
    live = {"x_total": 5, "g": 2, fams[2].name: h1.value()}
    dead = {"x_total": 7, "g": 9, fams[2].name: h2.value()}
    merged = metrics.merge(fams, [(live, True), (dead, False)])
    assert merged["x_total"] == 12 and merged["g"] == 2
    text = metrics.render(fams, merged)
    assert 'collab_ack_latency_seconds_bucket{le="0.001"} 1\n' in text
    assert 'collab_ack_latency_seconds_bucket{le="0.005"} 3\n' in text
    assert 'collab_ack_latency_seconds_bucket{le="0.25"} 4\n' in text
    assert 'collab_ack_latency_seconds_bucket{le="10.0"} 4\n' in text
    assert 'collab_ack_latency_seconds_bucket{le="+Inf"} 5\n' in text
    assert "collab_ack_latency_seconds_count 5\n" in text
    assert "# TYPE collab_ack_latency_seconds histogram\n" in text


def test_a_retired_worker_file_keeps_counting_and_a_read_never_misses_it(tmp_path):
    path = str(tmp_path)
    workermetrics.write(path, {"x_total": 3, "g": 1})
    (tmp_path / "4242.json").write_text('{"x_total": 4, "g": 5}')
    (tmp_path / "junk.txt").write_text("not metrics")
    fams = [metrics.Family("x_total", "counter", "X."), metrics.Family("g", "gauge", "G.")]
    assert metrics.merge(fams, workermetrics.read(path)) == {"x_total": 7, "g": 6}
    workermetrics.retire(path, 4242)
    workermetrics.retire(path, 4243)  # never wrote a file: nothing to keep
    assert not (tmp_path / "4242.json").exists()
    assert metrics.merge(fams, workermetrics.read(path)) == {"x_total": 7, "g": 1}
    (tmp_path / "4242.json").write_text('{"x_total": 1, "g": 1}')  # a later worker with the same pid
    workermetrics.retire(path, 4242)
    assert metrics.merge(fams, workermetrics.read(path))["x_total"] == 8
    assert len(list(Path(path).glob("dead-4242-*.json"))) == 2
