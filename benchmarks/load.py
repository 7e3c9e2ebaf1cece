"""Load generator over real WebSockets: the collab server against a bare relay.

Each scenario runs twice in one command, against two servers started as
subprocesses, pinned to CPU 0 with ``taskset`` (this generator pins itself
to CPU 1 when there are two):

* **relay**: the baseline, a minimal ``websockets`` server (this file,
  ``relay`` sub-command) that answers a connection's first frame with a
  canned ``welcome`` and forwards every later frame, unparsed, to everyone
  in the room *including the sender* (the echo stands in for the ack);
* **collab**: ``python -m collab serve`` with SQLite (``synchronous=FULL``:
  durability on), the flood guard opened wide so that it measures the hub.

Scenarios (``--scenario``):

* ``hot``: 1 document x 50 clients, each typing 10 edits/s for 15 s;
* ``many``: 200 documents x 5 clients, 2 edits/s each, 15 s;
* ``idle``: 5,000 idle connections over 500 documents: server memory per connection;
* ``saturate``: 1 document x 10 clients, each sending its next edit as soon
  as the previous one is acknowledged, 15 s.

Collab clients are ot.js-style clients (one op in flight, later edits
composed into a buffer, transform on receipt); at the end every client of a
document must hold the same text as the server (``GET /api/docs/{doc}``).
Latency is from an edit's send to its arrival at each other client
(matched by revision through the sender's ack; with the relay, by op id).
Server CPU seconds (with its child processes: the SQLite store's fsync helper) and
peak RSS come from psutil.

Examples::

    python benchmarks/load.py --scenario hot
    python benchmarks/load.py --scenario saturate --quick
    python benchmarks/load.py --scenario saturate --quick --rounds 3   # median of 3 interleaved rounds
    python benchmarks/load.py --scenario idle
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    REPO, SRC, free_port, machine, percentile, raise_nofile, read_metrics, summarize_collapsed, table,
)

import orjson  # noqa: E402
import psutil  # noqa: E402
from websockets.client import ClientProtocol  # noqa: E402
from websockets.frames import Frame, Opcode  # noqa: E402
from websockets.protocol import State  # noqa: E402
from websockets.uri import parse_uri  # noqa: E402

from collab import ot  # noqa: E402
from collab.doctext import DocText  # noqa: E402

WELCOME = '{"type":"welcome","client":"relay","rev":0,"role":"edit","peers":[],"text":""}'
ALPHABET = "abcdefghijklmnopqrstuvwxyz      \né😀"


# -- the baseline relay ------------------------------------------------------------


async def relay_main(port: int) -> None:
    """A bare relay: no parsing, every frame after the first goes to the whole room."""
    from websockets.asyncio.server import broadcast, serve

    rooms: dict[str, set[Any]] = {}

    async def handler(ws: Any) -> None:
        room = rooms.setdefault(ws.request.path, set())
        try:
            first = True
            async for frame in ws:
                if first:
                    first = False
                    room.add(ws)
                    await ws.send(WELCOME)
                    continue
                broadcast(room, frame)
        finally:
            room.discard(ws)

    async with serve(handler, "127.0.0.1", port, compression=None, ping_interval=20, max_size=4 << 20, backlog=4096):
        await asyncio.Future()


# -- clients -------------------------------------------------------------------------


class WSConn(asyncio.Protocol):
    """A lean WebSocket client: websockets' sans-I/O protocol on an asyncio transport.

    The generator has one core for thousands of clients, so it avoids the
    per-frame futures of ``websockets.asyncio``; text frames go straight to
    ``on_text`` as bytes (orjson parses bytes).
    """

    def __init__(self, url: str, on_text: Any) -> None:
        self.proto = ClientProtocol(parse_uri(url), max_size=None)
        self.on_text = on_text
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.proto.send_request(self.proto.connect())
        self._flush()

    def data_received(self, data: bytes) -> None:
        proto = self.proto
        proto.receive_data(data)
        for event in proto.events_received():
            if isinstance(event, Frame):
                if event.opcode is Opcode.TEXT:
                    self.on_text(event.data)
            elif not self.opened.done():  # the handshake response
                if proto.state is State.OPEN:
                    self.opened.set_result(None)
                else:
                    self.opened.set_exception(ConnectionError(f"handshake failed: {proto.handshake_exc}"))
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"connection lost: {exc}"))

    def send(self, text: str) -> None:
        self.proto.send_text(text.encode())
        self._flush()

    def _flush(self) -> None:
        transport = self.transport
        assert transport is not None
        for chunk in self.proto.data_to_send():
            if chunk:
                transport.write(chunk)
            elif transport.can_write_eof():
                transport.write_eof()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            if self.proto.state is State.OPEN:
                self.proto.send_close(1000)
                self._flush()
            self.transport.close()



@dataclass
class DocStats:
    """What the clients of one document saw."""

    sent_at: dict[Any, float] = field(default_factory=dict)  # rev (collab) or op id (relay) -> send time
    arrivals: list[tuple[Any, float]] = field(default_factory=list)  # (rev or id, arrival time)


@dataclass
class Totals:
    acks: int = 0
    acks_in_window: int = 0
    deliveries: int = 0
    edits: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)


class Client:
    """One simulated editor: an ot.js-style client over one WebSocket."""

    def __init__(self, run: "Run", doc: str, index: int, stats: DocStats) -> None:
        self.run = run
        self.doc = doc
        self.index = index
        self.stats = stats
        self.rng = random.Random(f"{doc}/{index}")
        self.ws: Any = None
        #: The client's copy, a DocText as the server's is: re-slicing a str of tens of
        #: KiB for every op received made the generator, not the server, the bottleneck.
        self.text = DocText()
        self.rev = 0
        self.inflight: tuple[ot.Operation, str] | None = None
        self.inflight_sent = 0.0
        #: Frames sent and not yet echoed (relay) or acknowledged (collab: at most 1).
        self.outstanding = 0
        self.buffer: ot.Operation | None = None
        self.seq = 0
        self.prefix = f"{index}."
        self.acked = asyncio.Event()
        self.acked.set()
        self.welcomed: asyncio.Future[dict] | None = None

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        self.welcomed = loop.create_future()
        url = f"ws://127.0.0.1:{self.run.port}/ws/{self.doc}"
        _, self.ws = await loop.create_connection(lambda: WSConn(url, self._receive), "127.0.0.1", self.run.port)
        await asyncio.wait_for(self.ws.opened, 60)
        self.ws.send('{"type":"join","user":{"name":"bot","color":"#888"}}')
        welcome = await asyncio.wait_for(self.welcomed, 60)
        self.text = DocText(welcome.get("text", ""))
        self.rev = welcome["rev"]

    # -- sending

    def edit(self) -> None:
        """Make one random local edit (mostly typing, some deleting) and send or buffer it."""
        n = len(self.text)
        rng = self.rng
        if n and rng.random() < 0.15:
            pos = rng.randrange(n)
            op = ot.from_splice(n, pos, 1, "")
        else:
            op = ot.from_splice(n, rng.randint(0, n), 0, rng.choice(ALPHABET))
        self.run.totals.edits += 1
        if self.run.relay:
            self._send(op)
            return
        self.text.apply(op)
        if self.inflight is None:
            self._send(op)
        else:
            self.buffer = op if self.buffer is None else ot.compose(self.buffer, op)

    def _send(self, op: ot.Operation) -> None:
        self.seq += 1
        op_id = f"{self.index}.{self.seq}"
        self.inflight = (op, op_id)
        self.outstanding += 1
        self.acked.clear()
        now = time.perf_counter()
        self.inflight_sent = now
        if self.run.relay:
            self.stats.sent_at[op_id] = now
        self.ws.send(orjson.dumps({"type": "op", "rev": self.rev, "op": op, "id": op_id}).decode())

    # -- receiving

    def _receive(self, frame: bytes) -> None:
        now = time.perf_counter()
        msg = orjson.loads(frame)
        kind = msg["type"]
        run = self.run
        if not self.welcomed.done():
            if kind == "welcome":
                self.welcomed.set_result(msg)
            return
        if run.relay:
            if kind != "op":
                return
            op_id = msg["id"]
            if op_id.startswith(self.prefix):  # the echo of our own frame: the relay's "ack"
                self._acked(now)
            else:
                run.totals.deliveries += 1
                self.stats.arrivals.append((op_id, now))
            return
        if kind == "op":
            op = msg["op"]
            if self.inflight is not None:
                mine, op = ot.transform(self.inflight[0], op)
                self.inflight = (mine, self.inflight[1])
                if self.buffer is not None:
                    self.buffer, op = ot.transform(self.buffer, op)
            self.text.apply(op)
            self.rev = msg["rev"]
            run.totals.deliveries += 1
            self.stats.arrivals.append((msg["rev"], now))
        elif kind == "ack":
            self.rev = msg["rev"]
            self.stats.sent_at[msg["rev"]] = self.inflight_sent
            self._acked(now)
        elif kind == "error":
            run.totals.errors += 1
            if len(run.totals.error_samples) < 5:
                run.totals.error_samples.append(frame[:300].decode(errors="replace"))

    def _acked(self, now: float) -> None:
        run = self.run
        run.totals.acks += 1
        if run.window_open:
            run.totals.acks_in_window += 1
        if run.relay:
            self.outstanding -= 1
            if self.outstanding == 0:
                self.inflight = None
                self.acked.set()
            return
        self.inflight = None
        if self.buffer is not None:
            op, self.buffer = self.buffer, None
            self._send(op)
        else:
            self.acked.set()

    @property
    def settled(self) -> bool:
        return self.inflight is None and self.buffer is None

    def close_now(self) -> None:
        if self.ws is not None:
            self.ws.close()
            self.ws = None

    async def close(self) -> None:
        self.close_now()


# -- one run against one server -----------------------------------------------------------


@dataclass
class Scenario:
    name: str
    docs: int
    clients_per_doc: int
    rate: float  # edits/s per client; 0 = as fast as acks allow; None = idle
    seconds: float
    idle: bool = False


class Run:
    """One scenario against one server process."""

    def __init__(self, target: str, port: int, proc: psutil.Process, scenario: Scenario) -> None:
        self.target = target
        self.relay = target == "relay"
        self.port = port
        self.proc = proc
        self.scenario = scenario
        self.totals = Totals()
        self.window_open = False
        self.stats: dict[str, DocStats] = {}
        self.clients: list[Client] = []
        self.peak_rss = 0
        self.connect_retries = 0
        #: Where to write a py-spy profile of the collab server during the editing window.
        self.profile: str | None = None

    async def _watch_rss(self) -> None:
        while True:
            try:
                self.peak_rss = max(self.peak_rss, self.proc.memory_info().rss)
            except psutil.Error:
                return
            await asyncio.sleep(0.05)

    async def _connect_all(self, concurrency: int = 100) -> None:
        sc = self.scenario
        sem = asyncio.Semaphore(concurrency)
        for d in range(sc.docs):
            doc = f"load-{sc.name}-{d}"
            self.stats[doc] = DocStats()
            for i in range(sc.clients_per_doc):
                self.clients.append(Client(self, doc, i, self.stats[doc]))

        async def one(c: Client) -> None:
            async with sem:
                for attempt in range(5):
                    try:
                        await c.open()
                        return
                    except (OSError, asyncio.TimeoutError) as exc:  # ConnectionError is an OSError
                        self.connect_retries += 1
                        if attempt == 4:
                            raise SystemExit(f"{self.target}: cannot connect client {c.doc}/{c.index}: {exc}") from None
                        c.close_now()
                        await asyncio.sleep(0.2 * (attempt + 1))

        await asyncio.gather(*(one(c) for c in self.clients))

    async def _type(self, c: Client, deadline: float) -> None:
        rate = self.scenario.rate
        rng = c.rng
        if rate == 0:  # saturate: the next edit as soon as the last is acknowledged
            while time.perf_counter() < deadline:
                c.edit()
                await c.acked.wait()
            return
        interval = 1 / rate
        await asyncio.sleep(rng.random() * interval)
        nxt = time.perf_counter()
        while nxt < deadline:
            c.edit()
            nxt += interval * (0.5 + rng.random())
            delay = nxt - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)

    async def execute(self) -> dict[str, Any]:
        sc = self.scenario
        watcher = asyncio.create_task(self._watch_rss())
        rss_before = self.proc.memory_info().rss
        t_connect = time.perf_counter()
        await self._connect_all()
        connect_seconds = time.perf_counter() - t_connect
        result: dict[str, Any] = {
            "target": self.target,
            "connections": len(self.clients),
            "connect_s": connect_seconds,
            "connect_retries": self.connect_retries,
        }
        if sc.idle:
            await asyncio.sleep(sc.seconds)  # let buffers settle, pings run
            rss_after = self.proc.memory_info().rss
            result.update(
                rss_before=rss_before,
                rss_after=rss_after,
                per_conn=(rss_after - rss_before) / len(self.clients),
                cpu=self._server_cpu(),
                peak_rss=max(self.peak_rss, rss_after),
            )
            await self._close_all()
            watcher.cancel()
            return result
        spy = None
        if self.profile and not self.relay and shutil.which("py-spy"):
            spy = subprocess.Popen(
                ["py-spy", "record", "--pid", str(self.proc.pid), "--duration", str(int(sc.seconds)), "--rate", "200",
                 "--format", "raw", "--nonblocking", "-o", self.profile],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        # The generator's own cyclic GC stays out of the window: a full collection
        # of its 1,000 clients' state took 15-62 ms, and every frame that arrived
        # meanwhile was timed as late (most of the deliveries over 4 ms in `many`
        # fell in such a pause). The server's GC is left as it is: that is measured.
        gc.collect()
        gc.freeze()
        gc.disable()
        cpu0 = self._server_cpu()
        loop0 = self._loop_cpu()
        gen0 = time.process_time()
        t0 = time.perf_counter()
        self.window_open = True
        deadline = t0 + sc.seconds
        try:
            await asyncio.gather(*(self._type(c, deadline) for c in self.clients))
        finally:
            gc.enable()
            gc.unfreeze()
        self.window_open = False
        window = time.perf_counter() - t0
        converged, failures = await self._quiesce()
        ops_per_commit = await self._ops_per_commit()
        if spy is not None:
            await asyncio.get_running_loop().run_in_executor(None, spy.wait)
        cpu = self._server_cpu() - cpu0
        loop_cpu = self._loop_cpu() - loop0
        gen_cpu = time.process_time() - gen0
        wall = time.perf_counter() - t0
        lat = self._latencies()
        t = self.totals
        result.update(
            seconds=window,
            edits=t.edits,
            applied=t.acks_in_window / window,
            deliveries=t.deliveries / (time.perf_counter() - t0),
            p50=percentile(lat, 50) * 1e3,
            p99=percentile(lat, 99) * 1e3,
            max=max(lat, default=0) * 1e3,
            samples=len(lat),
            cpu=cpu,
            loop_cpu=loop_cpu,
            cpu_per_edit=cpu / t.acks * 1e6 if t.acks else 0.0,
            gen_cpu=gen_cpu,
            wall=wall,
            load=os.getloadavg()[0],
            peak_rss=self.peak_rss,
            converged=converged,
            failures=failures,
            ops_per_commit=ops_per_commit,
            errors=t.errors,
            error_samples=t.error_samples,
        )
        await self._close_all()
        watcher.cancel()
        return result

    async def _quiesce(self, timeout: float = 60.0) -> tuple[str, int]:
        """Wait for every op to be acknowledged and delivered; check convergence."""
        end = time.perf_counter() + timeout
        while time.perf_counter() < end and not all(c.settled for c in self.clients):
            await asyncio.sleep(0.05)
        if self.relay:
            await asyncio.sleep(0.5)
            return "n/a", 0
        by_doc: dict[str, list[Client]] = {}
        for c in self.clients:
            by_doc.setdefault(c.doc, []).append(c)
        import httpx

        failures = 0
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.port}", timeout=30) as http:
            for doc, clients in by_doc.items():
                server = (await http.get(f"/api/docs/{doc}")).json()
                while time.perf_counter() < end and any(c.rev < server["rev"] for c in clients):
                    await asyncio.sleep(0.05)
                if any(c.rev != server["rev"] or str(c.text) != server["text"] for c in clients) or not all(
                    c.settled for c in clients
                ):
                    failures += 1
        return ("yes" if failures == 0 else "NO"), failures

    async def _ops_per_commit(self) -> str:
        """The server's average group commit (``/metrics``), or ``n/a`` (relay, memory store)."""
        if self.relay:
            return "n/a"
        counters = await asyncio.to_thread(read_metrics, self.port, timeout=30)
        commits = int(counters.get("collab_store_commits_total", 0))
        return f"{int(counters['collab_store_ops_written_total']) / commits:.1f}" if commits else "n/a"

    def _server_cpu(self) -> float:
        """CPU seconds of the server process and its children (the SQLite store's fsync helper)."""
        total = sum(self.proc.cpu_times()[:2])
        for child in self.proc.children(recursive=True):
            try:
                total += sum(child.cpu_times()[:2])
            except psutil.Error:
                pass
        return total

    def _loop_cpu(self) -> float:
        """CPU seconds of the server's main thread (the event loop), apart from its helper threads."""
        for t in self.proc.threads():
            if t.id == self.proc.pid:
                return t.user_time + t.system_time
        return 0.0

    def _latencies(self) -> list[float]:
        out: list[float] = []
        for st in self.stats.values():
            sent = st.sent_at
            for key, t in st.arrivals:
                s = sent.get(key)
                if s is not None:
                    out.append(t - s)
        return out

    async def _close_all(self) -> None:
        await asyncio.gather(*(c.close() for c in self.clients), return_exceptions=True)


# -- servers ------------------------------------------------------------------------------


def _child_setup() -> None:
    raise_nofile(65536)
    os.setpgrp()


PIN = True


def pin_prefix(cpu: int) -> list[str]:
    if PIN and (os.cpu_count() or 1) >= 2 and shutil.which("taskset"):
        return ["taskset", "-c", str(cpu)]
    return []


def start_server(target: str, port: int, data_dir: str, store: str) -> subprocess.Popen:
    if target == "relay":
        cmd = [sys.executable, str(Path(__file__).resolve()), "relay", "--port", str(port)]
    else:
        wide = "1000000"
        cmd = [
            sys.executable, "-m", "collab", "serve", "--port", str(port), "--data-dir", data_dir,
            "--conn-rate", wide, "--conn-burst", wide, "--conn-per-ip", wide, "--max-connections", wide,
            "--msg-rate", wide, "--msg-burst", wide, "--bytes-rate", "1000000000", "--bytes-burst", "1000000000",
            "--handshake-timeout", "60", "--log-level", "warning",
        ]  # fmt: skip
    env = dict(os.environ)
    if target != "relay":
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH", "")) if p)  # this checkout's collab
        if store not in ("sqlite", "sqlite-normal", "memory"):
            raise SystemExit(f"unknown store {store!r}: use sqlite, sqlite-normal or memory")
        env.pop("DATABASE_URL", None)
        if store == "memory":
            env["DATABASE_URL"] = "memory:"
        # fsync per commit, or committed once the OS has it (set either way: the caller's env must not decide)
        env["COLLAB_SQLITE_SYNC"] = "normal" if store == "sqlite-normal" else "full"
        # Every generated client comes from 127.0.0.1: the per-address budgets, opened wide like the rest.
        env.update(COLLAB_ADDR_MSG_RATE="1000000", COLLAB_ADDR_MSG_BURST="1000000",
                   COLLAB_ADDR_BYTES_RATE="1000000000", COLLAB_ADDR_BYTES_BURST="1000000000")
    proc = subprocess.Popen(pin_prefix(0) + cmd, cwd=str(REPO), env=env, preexec_fn=_child_setup)
    deadline = time.time() + 30
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{target} server exited with {proc.returncode}: {' '.join(cmd)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"{target} server did not start listening on {port}")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_target(target: str, scenario: Scenario, store: str, profile: str | None = None) -> dict[str, Any]:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="collab-load-") as tmp:
        proc = start_server(target, port, tmp, store)
        try:
            ps = psutil.Process(proc.pid)
            time.sleep(0.5)  # let the server finish importing before the baseline RSS
            label = "relay" if target == "relay" else f"collab ({store})"
            run = Run(label, port, ps, scenario)
            run.profile = profile
            return _run_loop(run)
        finally:
            stop_server(proc)


def _run_loop(run: Run) -> dict[str, Any]:
    try:
        import uvloop

        return uvloop.run(run.execute())
    except ImportError:
        return asyncio.run(run.execute())


# -- reporting ----------------------------------------------------------------------------


def report(scenario: Scenario, results: list[dict[str, Any]]) -> str:
    base = results[0]
    if scenario.idle:
        rows = [
            [r["target"], r["connections"], r["connect_s"], r["rss_before"] / 2**20, r["rss_after"] / 2**20,
             r["per_conn"] / 1024, r["per_conn"] / base["per_conn"] if base["per_conn"] else 0.0]
            for r in results
        ]  # fmt: skip
        return table(
            ["server", "connections", "connect s", "RSS before MiB", "RSS after MiB", "KiB/connection", "× relay"], rows
        )
    rows = []
    for r in results:
        rows.append([
            r["target"], r["edits"], r["applied"], r["applied"] / base["applied"], r["deliveries"],
            r["p50"], r["p99"], r["p99"] / base["p99"] if base["p99"] else 0.0, r["max"],
            r["cpu"], r["loop_cpu"], r["cpu_per_edit"], r["cpu_per_edit"] / base["cpu_per_edit"] if base["cpu_per_edit"] else 0.0,
            r["gen_cpu"], r["wall"], r["load"], r["peak_rss"] / 2**20, r.get("ops_per_commit", "n/a"), r["converged"],
            r["errors"],
        ])  # fmt: skip
    return table(
        ["server", "edits sent", "applied/s", "× relay", "deliveries/s", "p50 ms", "p99 ms", "p99 × relay",
         "max ms", "server CPU s", "loop thread CPU s", "CPU µs/applied edit", "× relay", "generator CPU s", "wall s", "load avg",
         "peak RSS MiB", "ops/commit", "converged", "errors"],
        rows,
    )  # fmt: skip


#: A generator busier than this (CPU seconds per wall second) may itself be what limits a run.
GENERATOR_BUSY = 0.9


def generator_notes(results: list[dict[str, Any]]) -> str:
    """A line for each run in which the generator, not the server, may have been the limit."""
    notes = []
    for r in results:
        busy = r.get("gen_cpu", 0.0) / r["wall"] if r.get("wall") else 0.0
        if busy >= GENERATOR_BUSY:
            notes.append(
                f"note: the generator was busy {busy:.0%} of the time during {r['target']}'s run: "
                "it, not the server, may be what limited that run's throughput and latency"
            )
    return "\n".join(notes)


def summary(scenario: Scenario, rounds: list[list[dict[str, Any]]]) -> str:
    """Per server: the median (and range) over rounds of each figure and of its ratio to the same round's relay."""

    def med(values: list[float], fmt: str) -> str:
        values = sorted(values)
        mid = values[len(values) // 2] if len(values) % 2 else (values[len(values) // 2 - 1] + values[len(values) // 2]) / 2
        return f"{mid:{fmt}} [{values[0]:{fmt}}-{values[-1]:{fmt}}]"

    def ratio(a: float, b: float) -> float:
        return a / b if b else 0.0

    rows = []
    for j, first in enumerate(rounds[0]):
        runs = [(r[j], r[0]) for r in rounds]
        if scenario.idle:
            rows.append([first["target"], med([x["per_conn"] / 1024 for x, _ in runs], ".1f"),
                         med([ratio(x["per_conn"], b["per_conn"]) for x, b in runs], ".2f")])
            continue
        rows.append([
            first["target"],
            med([x["applied"] for x, _ in runs], ",.0f"), med([ratio(x["applied"], b["applied"]) for x, b in runs], ".2f"),
            med([x["p99"] for x, _ in runs], ".2f"), med([ratio(x["p99"], b["p99"]) for x, b in runs], ".2f"),
            med([x["cpu_per_edit"] for x, _ in runs], ".0f"),
            med([ratio(x["cpu_per_edit"], b["cpu_per_edit"]) for x, b in runs], ".2f"),
            "n/a" if first["converged"] == "n/a" else ("yes" if all(x["converged"] == "yes" for x, _ in runs) else "NO"),
            sum(x["errors"] for x, _ in runs),
        ])  # fmt: skip
    if scenario.idle:
        return table(["server", "KiB/connection", "× relay"], rows)
    return table(
        ["server", "applied/s", "× relay", "p99 ms", "p99 × relay", "CPU µs/applied edit", "× relay", "converged", "errors"],
        rows,
    )  # fmt: skip


SCENARIOS = {
    "hot": Scenario("hot", 1, 50, 10.0, 15.0),
    "many": Scenario("many", 200, 5, 2.0, 15.0),
    "idle": Scenario("idle", 500, 10, 0.0, 5.0, idle=True),
    "saturate": Scenario("saturate", 1, 10, 0.0, 15.0),
}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["relay"]:
        ap = argparse.ArgumentParser(prog="load.py relay")
        ap.add_argument("--port", type=int, required=True)
        a = ap.parse_args(argv[1:])
        raise_nofile(65536)
        try:
            import uvloop

            uvloop.run(relay_main(a.port))
        except ImportError:
            asyncio.run(relay_main(a.port))
        except KeyboardInterrupt:
            pass
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", choices=sorted(SCENARIOS), required=True)
    ap.add_argument("--seconds", type=float, help="editing time (default 15; --quick 5)")
    ap.add_argument("--quick", action="store_true", help="5 s of editing; idle: 1,000 connections over 100 documents")
    ap.add_argument("--stores", default="sqlite", help="collab stores to run, comma-separated: sqlite (fsync per commit, the default), "
                    "sqlite-normal (COLLAB_SQLITE_SYNC=normal), memory")
    ap.add_argument("--docs", type=int, help="override the number of documents")
    ap.add_argument("--clients", type=int, help="override the clients per document")
    ap.add_argument("--rate", type=float, help="override edits/s per client (0: as fast as acks allow)")
    ap.add_argument("--no-pin", action="store_true", help="let the OS place the server and the generator on any CPU")
    ap.add_argument("--json", metavar="FILE", help="also write the raw results to FILE")
    ap.add_argument("--profile", metavar="FILE", help="py-spy the collab server during the editing window (collapsed stacks to FILE)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run relay and collab alternately this many times and also print the median of the "
                         "per-round ratios (a shared machine's speed drifts between runs)")
    args = ap.parse_args(argv)
    sc = SCENARIOS[args.scenario]
    if args.quick:
        sc.seconds = 5.0 if not sc.idle else 2.0
        if sc.idle:
            sc.docs = 100
    if args.seconds:
        sc.seconds = args.seconds
    sc.docs = args.docs or sc.docs
    sc.clients_per_doc = args.clients or sc.clients_per_doc
    sc.rate = sc.rate if args.rate is None else args.rate
    global PIN
    PIN = not args.no_pin
    soft = raise_nofile(65536)
    if pin_prefix(1):
        os.sched_setaffinity(0, {1})
    print(f"machine: {machine()}; open files limit {soft}")
    print(f"command: python benchmarks/load.py {' '.join(argv)}")
    print(
        f"scenario {sc.name}: {sc.docs} document(s) x {sc.clients_per_doc} clients, "
        + ("idle" if sc.idle else f"{sc.rate or 'max'} edits/s each for {sc.seconds:g} s")
        + ("; server on CPU 0, generator on CPU 1\n" if pin_prefix(0) else "; not pinned\n")
    )
    rounds: list[list[dict[str, Any]]] = []
    for i in range(max(1, args.rounds)):
        results = [run_target("relay", sc, "")]
        for store in [s for s in args.stores.split(",") if s]:
            results.append(run_target("collab", sc, store, args.profile if i == 0 else None))
        rounds.append(results)
        if args.rounds > 1:
            print(f"round {i + 1} of {args.rounds}:")
        print(report(sc, results))
        notes = generator_notes(results)
        if notes:
            print(notes)
    if len(rounds) > 1:
        print(f"\nmedian over {len(rounds)} rounds (each ratio against the relay of its own round; range in brackets):\n")
        print(summary(sc, rounds))
    if args.profile and Path(args.profile).is_file():
        print(f"\nprofile of the collab server ({args.profile}):\n")
        print(summarize_collapsed(args.profile))
    for r in results:
        if r.get("error_samples"):
            print(f"\n{r['target']}: {r['errors']} errors, e.g. {r['error_samples'][:2]}")
        if r.get("connect_retries"):
            print(f"\n{r['target']}: {r['connect_retries']} connection attempts failed and were retried")
        if r.get("failures"):
            print(f"\n{r['target']}: {r['failures']} documents did NOT converge")
    if args.json:
        Path(args.json).write_text(json.dumps({"scenario": sc.__dict__, "results": results}, indent=1))


if __name__ == "__main__":
    main()
