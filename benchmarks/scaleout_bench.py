"""Scale-out benchmark: one process (SQLite, or PostgreSQL alone) vs one, two and three processes (PostgreSQL + Redis).

Each configuration runs real ``collab`` server processes and the same
loads, driven over WebSocket from this process:

* **many documents**: ``--docs`` documents with 2 writers each;
* **many documents, reopened**: the same documents, just after those writers
  left, with 2 new writers each (people coming back: the documents are still
  loaded, and their leases moved as the first writers left);
* **one hot document**: ``--hot`` writers on one document.

One more configuration runs two processes on PostgreSQL that share nothing
but the server: each has its own schema and no Redis, and each document's
writers are all on one of them. No design of a cluster does less per edit,
so its CPU per op is the floor for any two processes on this machine: half
the load per process means fewer edits per group commit and per loop turn.

Two more run two and three processes on one machine without affinity, as
before, but sharing a hand-over directory (``COLLAB_HANDOFF_DIR``, what the
workers of ``collab serve --workers N`` share by themselves): a process
passes each new connection to the process that owns its document
(:mod:`collab.handoff`), so a document's writers end up on one process.
Two more stand for processes on separate machines, which cannot pass a
socket: each says where the others reach it (``COLLAB_RELAY_ADDRESS``), and
a process relays each new connection's bytes to the process that owns its
document, which serves it.

Every writer behaves like a real client: one operation in flight, the next
sent when the previous is acknowledged (an insert at the start, based on the
revision the writer has seen, so concurrent ones are transformed). Writers
are spread over the processes (without affinity, each document's over
several; its first writer joins first). Reported: acknowledged ops/s,
ack latency p50/p99, the CPU the server processes used (in cores), to
show where the bottleneck is, and the collab processes' CPU per acknowledged
op (summed over the processes: what more processes cost for the same work).
With ``--cpu-cap CORES`` (root, cgroups), each collab process may use at most that
many cores (a CFS quota of its own), as on a machine with a core per process,
scaled down: with caps that leave the machine idle cores, the rows compare what
each configuration gets from the same CPU per process, where without caps the
processes, PostgreSQL, Redis and the load share a saturated machine.
With ``--pace-many OPS`` and ``--pace-hot OPS``, the writers type at a
fixed total rate instead (each at its share, from a random start, so they
are not in step): every configuration then does the same work, and the CPU
per op compares what that work costs, on a machine that is not saturated.
Prints a markdown table. With ``--rounds N`` every configuration runs N
times, in turn, and each row is the median of its rounds: on a shared
machine whose speed drifts over minutes, ratios between rows of one round
are not to be trusted.

    python benchmarks/scaleout_bench.py --database-url postgresql://postgres@127.0.0.1:5432/test \\
        --redis-url redis://127.0.0.1:6379/0 [--seconds 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import websockets
from _common import free_port, wait_healthy

ROOT = Path(__file__).resolve().parent.parent
#: Two processes that share nothing per edit (see the module's docstring).
FLOOR = "2 processes, PostgreSQL, nothing shared (own schemas), routed by document"


class CpuCap:
    """A cgroup whose processes may use at most ``cores`` cores together (a CFS quota), made and removed here.

    Uses the cgroup v2 ``cpu.max`` where the unified hierarchy has the cpu controller, else v1's ``cpu``
    hierarchy. Needs root (or a delegated cgroup); raises ``SystemExit`` with what to do otherwise."""

    PERIOD_US = 10_000  # short, so a capped process waits at most a few ms at a time, not a whole 100 ms

    def __init__(self, cores: float) -> None:
        name = f"collab-bench-{os.getpid()}-{secrets.token_hex(3)}"
        quota = max(1000, int(cores * self.PERIOD_US))
        v2 = Path("/sys/fs/cgroup")
        v1 = Path("/sys/fs/cgroup/cpu")
        controllers = v2 / "cgroup.controllers"
        try:
            if controllers.exists() and "cpu" in controllers.read_text().split():
                self.path = v2 / name
                self.path.mkdir()
                (self.path / "cpu.max").write_text(f"{quota} {self.PERIOD_US}")
            elif (v1 / "cpu.cfs_quota_us").exists():
                self.path = v1 / name
                self.path.mkdir()
                (self.path / "cpu.cfs_period_us").write_text(str(self.PERIOD_US))
                (self.path / "cpu.cfs_quota_us").write_text(str(quota))
            else:
                raise SystemExit("--cpu-cap: no cgroup cpu controller found (neither v2 cpu.max nor v1 cpu)")
        except OSError as exc:
            raise SystemExit(f"--cpu-cap could not make a cgroup with a CPU quota (run as root, with the cpu "
                             f"controller enabled): {exc}") from None

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(str(pid))

    def remove(self) -> None:
        """Remove the cgroup (once its process has exited)."""
        try:
            self.path.rmdir()
        except OSError as exc:  # its process still runs: the cgroup stays until removed by hand
            print(f"--cpu-cap: could not remove {self.path} ({exc}); rmdir it once its process exits",
                  file=sys.stderr)


@dataclass
class Server:
    """A collab server process (with ``cap``: at most that many cores, in a cgroup of its own)."""

    env: dict[str, str]
    cap: float = 0.0
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    cgroup: CpuCap | None = None

    def start(self) -> "Server":
        env = dict(os.environ, COLLAB_PORT=str(self.port), COLLAB_HOST="127.0.0.1", COLLAB_LOG_LEVEL="warning",
                   COLLAB_MSG_RATE="100000", COLLAB_MSG_BURST="100000", COLLAB_CONN_RATE="10000",
                   COLLAB_CONN_BURST="10000", COLLAB_CONN_PER_IP="10000",
                   COLLAB_ADDR_MSG_RATE="1000000", COLLAB_ADDR_MSG_BURST="1000000")
        env.pop("PORT", None)
        env.pop("WEB_CONCURRENCY", None)
        env.update(self.env)
        if env.get("COLLAB_RELAY_ADDRESS") == "self":  # where the other processes reach this one
            env["COLLAB_RELAY_ADDRESS"] = f"127.0.0.1:{self.port}"
        code = "from collab.config import Settings; from collab.server import run; run(Settings.from_env())"
        self.proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=str(ROOT),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if self.cap:
            self.cgroup = CpuCap(self.cap)
            self.cgroup.add(self.proc.pid)
        wait_healthy(self.proc, self.port)
        return self

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process so far (from /proc)."""
        assert self.proc is not None
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.cgroup is not None:
            self.cgroup.remove()


async def writer(url: str, go: asyncio.Event, clock: dict, latencies: list[float], every: float = 0.0,
                 phase: float = 0.0) -> int:
    """One client with one op in flight at a time, from ``go`` until ``clock["stop"]``; returns ops acknowledged.

    With ``every`` (seconds), a typist: the k-th op is sent ``phase + k * every`` after the start, or
    when the one before is acknowledged if that is later; otherwise each op is sent at once."""
    async with websockets.connect(url, max_size=None, open_timeout=30) as ws:
        await ws.send(json.dumps({"type": "join"}))
        length = rev = 0
        while True:
            msg = json.loads(await ws.recv())
            if msg["type"] == "welcome":
                rev, length = msg["rev"], len(msg["text"])
                break
        clock["joined"] += 1
        await go.wait()
        done = 0
        n = 0
        loop = asyncio.get_running_loop()
        due = clock["start"] + phase
        while loop.time() < clock["stop"]:
            if every:
                if due > loop.time():
                    await asyncio.sleep(due - loop.time())  # pacing, not synchronisation: a typist's rhythm
                    if loop.time() >= clock["stop"]:
                        break
                due += every
            n += 1
            op_id = secrets.token_hex(6)
            await ws.send(json.dumps({"type": "op", "rev": rev, "op": ["x", length] if length else ["x"], "id": op_id}))
            sent = loop.time()
            while True:
                msg = json.loads(await ws.recv())
                if msg["type"] == "op":
                    rev = msg["rev"]
                    length += sum(len(c) for c in msg["op"] if isinstance(c, str)) + sum(
                        c for c in msg["op"] if isinstance(c, int) and c < 0)
                elif msg["type"] == "ack":
                    rev = msg["rev"]
                    length += 1
                    clock["last"] = max(clock["last"], loop.time())
                    latencies.append(clock["last"] - sent)
                    done += 1
                    break
                elif msg["type"] == "error":
                    raise RuntimeError(f"the server refused an op: {msg}")
    return done


async def run_load(servers: list[Server], docs: list[str], per_doc: int, seconds: float, by_doc: bool,
                   pace: float = 0.0) -> dict:
    """Writers spread over ``servers`` (a balancer without affinity), or routed by document.

    With ``pace`` (ops/s offered by all writers together), each writer types at its share of it,
    starting at a random moment of its first interval, so writers are not in step with each other."""
    latencies: list[float] = []
    loop = asyncio.get_running_loop()
    waves: list[list[str]] = [[] for _ in range(per_doc)]
    for d, doc in enumerate(docs):
        for k in range(per_doc):
            # Without affinity a document's writers are on different processes, and which process
            # its first writer (and so its owner) reaches varies from document to document, as
            # behind a random balancer; plain round robin would give every first writer to one.
            target = servers[d % len(servers)] if by_doc else servers[(d + k) % len(servers)]
            waves[k].append(f"ws://127.0.0.1:{target.port}/ws/{doc}")
    go = asyncio.Event()
    clock = {"joined": 0, "stop": float("inf"), "last": 0.0, "start": 0.0}
    tasks: list[asyncio.Task[int]] = []
    every = len(docs) * per_doc / pace if pace else 0.0
    phases = random.Random(len(docs) * 1000 + per_doc)
    # Each document's first writer opens it, then the others join (as people do): had every process
    # opened every document at the same moment, the one a few milliseconds ahead would own them all.
    for wave in waves:
        tasks += [asyncio.create_task(writer(u, go, clock, latencies, every, phases.uniform(0, every)))
                  for u in wave]
        while clock["joined"] < len(tasks):  # everyone joined first, so the measurement is of editing only
            await asyncio.sleep(0.01)
            for t in tasks:
                if t.done():
                    t.result()
    cpu0 = [s.cpu_seconds() for s in servers]
    infra0 = infra_cpu()
    own0 = time.process_time()
    start = clock["start"] = loop.time()
    clock["stop"] = start + seconds
    go.set()
    counts = await asyncio.gather(*tasks)
    # Up to the last ack: closing the connections afterwards is not part of the measurement.
    elapsed = clock["last"] - start
    cpu = sum(s.cpu_seconds() - c for s, c in zip(servers, cpu0)) / elapsed
    # (A process that exited meanwhile makes a sum go down: count no less than zero.)
    infra = {k: max(0.0, v - infra0.get(k, 0.0)) / elapsed for k, v in infra_cpu().items()}
    own = (time.process_time() - own0) / elapsed
    latencies.sort()
    return {
        "ops": sum(counts) / elapsed,
        "p50": statistics.median(latencies) * 1000 if latencies else float("nan"),
        "p99": latencies[int(len(latencies) * 0.99)] * 1000 if latencies else float("nan"),
        "max": latencies[-1] * 1000 if latencies else float("nan"),
        "cpu": cpu,
        "pg": infra.get("postgres", 0.0),
        "redis": infra.get("redis-server", 0.0),
        "load": own,
    }


def infra_cpu() -> dict[str, float]:
    """CPU seconds used so far by the PostgreSQL and Redis server processes on this machine (if psutil is there)."""
    try:
        import psutil
    except ImportError:
        return {}
    out: dict[str, float] = {}
    for p in psutil.process_iter(["name", "cpu_times"]):
        name = p.info["name"] or ""
        if name in ("postgres", "redis-server") and p.info["cpu_times"] is not None:
            t = p.info["cpu_times"]
            out[name] = out.get(name, 0.0) + t.user + t.system
    return out


async def bench(args: argparse.Namespace) -> None:
    tag = secrets.token_hex(4)
    # (name, each server's environment, routed by document)
    configs: list[tuple[str, list[dict[str, str]], bool]] = []
    schemas: list[int] = []  # the numbers of the schemas the configurations use (dropped after)
    with tempfile.TemporaryDirectory() as tmp:
        configs.append(("1 process, SQLite", [{"COLLAB_DATA_DIR": tmp}], False))
        if args.database_url and args.redis_url:
            sep = "&" if "?" in args.database_url else "?"
            rsep = "&" if "?" in args.redis_url else "?"

            def pg(n: int) -> dict[str, str]:
                schemas.append(n)
                return {"DATABASE_URL": f"{args.database_url}{sep}schema=collab_bench_{tag}_{n}"}

            configs.append((ONE_PG, [pg(5)], False))  # one process needs no Redis
            for n, procs, name, by_doc in ((1, 1, "1 process, PostgreSQL + Redis", False),
                                           (2, 2, NO_AFFINITY, False),
                                           (3, 2, "2 processes, PostgreSQL + Redis, routed by document", True),
                                           (4, 3, THREE, False),
                                           (8, 2, HANDED, False),
                                           (9, 3, THREE_HANDED, False),
                                           (10, 2, RELAYED, False),
                                           (11, 3, THREE_RELAYED, False)):
                env = dict(pg(n), REDIS_URL=f"{args.redis_url}{rsep}prefix=collab-bench-{tag}-{n}")
                if name in (HANDED, THREE_HANDED):  # processes on one machine: each passes the others
                    env["COLLAB_HANDOFF_DIR"] = tempfile.mkdtemp(dir=tmp)  # their owners' connections
                if name in (RELAYED, THREE_RELAYED):  # as if on separate machines: relayed to the owner
                    env.update(COLLAB_RELAY_ADDRESS="self", COLLAB_TRUSTED_PROXIES="127.0.0.1")
                configs.append((name, [env] * procs, by_doc))
            configs.append((FLOOR, [pg(6), pg(7)], True))
        else:
            print("(PostgreSQL + Redis rows skipped: pass --database-url and --redis-url)", file=sys.stderr)
        wanted = [w for w in args.only.split("|") if w]
        configs = [c for c in configs if not wanted or any(w in c[0] for w in wanted)]
        # Rounds go through every configuration in turn, so a machine that slows down or speeds up
        # over minutes (a shared VM) shifts every row alike; each row is the median of its rounds.
        runs: dict[str, list[tuple[dict, dict, dict]]] = {name: [] for name, _, _ in configs}
        for r in range(args.rounds):
            for name, envs, by_doc in configs:
                servers = [Server(env, args.cpu_cap) for env in envs]
                try:
                    for s in servers:
                        s.start()
                    docs = [f"many-{tag}-{r}-{i}" for i in range(args.docs)]
                    many = await run_load(servers, docs, 2, args.seconds, by_doc, args.pace_many)
                    again = await run_load(servers, docs, 2, args.seconds, by_doc, args.pace_many)
                    hot = await run_load(servers, [f"hot-{tag}-{r}"], args.hot, args.seconds, by_doc, args.pace_hot)
                finally:
                    for s in servers:
                        s.stop()
                runs[name].append((many, again, hot))
                print(f"done: {name} (round {r + 1} of {args.rounds})", file=sys.stderr)
        rows = [(name, [median_of([run[i] for run in done]) for i in range(3)]) for name, done in runs.items()]
        await drop_schemas(args.database_url, tag, schemas)
    rounds = f"; median of {args.rounds} rounds" if args.rounds > 1 else ""
    paced = ""
    if args.pace_many or args.pace_hot:
        paced = (f"; paced: {args.pace_many:g} ops/s offered on the many documents, {args.pace_hot:g} on the hot one "
                 "(0: as fast as acknowledged), each writer at its share from a random start")
    print(f"\n{args.docs} documents x 2 writers, and 1 document x {args.hot} writers; one op in flight per writer; "
          f"{args.seconds:g} s each{rounds}{paced}\n")
    if args.cpu_cap:
        print(f"Each collab process capped at {args.cpu_cap:g} cores (a CFS quota of its own)\n")
    print(f"CPU in cores (machine: {os.cpu_count()}): collab servers / PostgreSQL / Redis / this load generator\n")
    print("| configuration | load | ops/s | ack p50 ms | ack p99 ms | ack max ms | collab CPU µs per op "
          "| CPU: collab / pg / redis / load |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for name, results in rows:
        for load, r in zip(("many docs", "many docs, reopened", "hot doc"), results):
            per_op = r["per_op"]
            print(f"| {name} | {load} | {r['ops']:.0f} | {r['p50']:.1f} | {r['p99']:.1f} | {r['max']:.0f} "
                  f"| {per_op:.0f} | {r['cpu']:.2f} / {r['pg']:.2f} / {r['redis']:.2f} / {r['load']:.2f} |")
    print_ratios(dict(rows))


@dataclass(frozen=True)
class Ratio:
    """One ratio between two rows of a run: ``row`` / ``base``, of ``measure`` under load number ``load``
    (0: many docs, 2: hot doc); issue 22's target, if it sets one (``at_least``: the ratio must be at least
    ``target``, else at most)."""

    what: str
    row: str
    load: int
    base: str
    measure: str
    target: float | None = None
    at_least: bool = True

    def line(self, rows: dict[str, list[dict]]) -> str | None:
        """The ratio's table line, if both rows ran."""
        if self.row not in rows or self.base not in rows or not rows[self.base][self.load][self.measure]:
            return None
        ratio = rows[self.row][self.load][self.measure] / rows[self.base][self.load][self.measure]
        if self.target is None:
            return f"| {self.what} | {ratio:.2f}x |  |  |"
        met = ratio >= self.target if self.at_least else ratio <= self.target
        return (f"| {self.what} | {ratio:.2f}x | {'≥' if self.at_least else '≤'} {self.target:.1f}x "
                f"| {'yes' if met else 'no'} |")


ONE_PG, NO_AFFINITY, THREE = ("1 process, PostgreSQL", "2 processes, PostgreSQL + Redis, no affinity",
                              "3 processes, PostgreSQL + Redis, no affinity")
HANDED, THREE_HANDED = ("2 processes on one machine, no affinity, connections handed to the owner",
                        "3 processes on one machine, no affinity, connections handed to the owner")
RELAYED, THREE_RELAYED = ("2 processes, as on separate machines, no affinity, connections relayed to the owner",
                          "3 processes, as on separate machines, no affinity, connections relayed to the owner")
RATIOS = [
    Ratio("1 process on PostgreSQL / 1 on SQLite, ops/s", ONE_PG, 0, "1 process, SQLite", "ops", 0.6),
    Ratio("2 processes, no affinity / 1 on PostgreSQL, ops/s", NO_AFFINITY, 0, ONE_PG, "ops", 1.0),
    Ratio("... collab CPU per op", NO_AFFINITY, 0, ONE_PG, "per_op", 1.3, at_least=False),
    Ratio("hot doc, 3 processes / 1 on PostgreSQL, ops/s", THREE, 2, ONE_PG, "ops", 0.8),
    Ratio("... ack p99", THREE, 2, ONE_PG, "p99", 2.0, at_least=False),
    Ratio("2 processes on one machine, handed to the owner / 1 on PostgreSQL, ops/s", HANDED, 0, ONE_PG, "ops", 1.0),
    Ratio("... collab CPU per op", HANDED, 0, ONE_PG, "per_op", 1.3, at_least=False),
    Ratio("hot doc, 3 processes on one machine, handed / 1 on PostgreSQL, ops/s", THREE_HANDED, 2, ONE_PG, "ops",
          0.8),
    Ratio("... ack p99", THREE_HANDED, 2, ONE_PG, "p99", 2.0, at_least=False),
    Ratio("2 processes, relayed to the owner / 1 on PostgreSQL, ops/s", RELAYED, 0, ONE_PG, "ops", 1.0),
    Ratio("... collab CPU per op", RELAYED, 0, ONE_PG, "per_op", 1.3, at_least=False),
    Ratio("hot doc, 3 processes, relayed / 1 on PostgreSQL, ops/s", THREE_RELAYED, 2, ONE_PG, "ops", 0.8),
    Ratio("... ack p99", THREE_RELAYED, 2, ONE_PG, "p99", 2.0, at_least=False),
    Ratio("floor: 2 processes sharing nothing / 1 on PostgreSQL, ops/s", FLOOR, 0, ONE_PG, "ops"),
    Ratio("... collab CPU per op", FLOOR, 0, ONE_PG, "per_op"),
    Ratio("2 processes, no affinity / the floor, ops/s", NO_AFFINITY, 0, FLOOR, "ops"),
    Ratio("... collab CPU per op", NO_AFFINITY, 0, FLOOR, "per_op"),
]


def print_ratios(rows: dict[str, list[dict]]) -> None:
    """The ratios issue 22 sets targets for, from this run's rows (those that ran)."""
    lines = [line for line in (r.line(rows) for r in RATIOS) if line is not None]
    if lines:
        print("\n| ratio (within this run) | measured | target | met |\n| --- | ---: | ---: | --- |")
        print("\n".join(lines))


def median_of(results: list[dict]) -> dict:
    """Each measure's median over rounds (CPU per op from the medians of the round's own ratios)."""
    out = {k: statistics.median(r[k] for r in results) for k in results[0]}
    out["per_op"] = statistics.median(r["cpu"] / r["ops"] * 1e6 if r["ops"] else float("nan") for r in results)
    return out


async def drop_schemas(url: str, tag: str, numbers: Iterable[int] = range(1, 6)) -> None:
    """Drop the schemas ``collab_bench_{tag}_{n}`` a run made."""
    if not url:
        return
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        for n in numbers:
            await conn.execute(f'DROP SCHEMA IF EXISTS "collab_bench_{tag}_{n}" CASCADE')
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=os.environ.get("COLLAB_TEST_DATABASE_URL", ""))
    parser.add_argument("--redis-url", default=os.environ.get("COLLAB_TEST_REDIS_URL", ""))
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each load (default 5)")
    parser.add_argument("--docs", type=int, default=50, help="documents in the many-documents load (default 50)")
    parser.add_argument("--only", default="",
                        help="run only the configurations whose name contains this (several: separated by |)")
    parser.add_argument("--hot", type=int, default=20, help="writers on the hot document (default 20)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every configuration this many times, in turn, and report medians (default 1)")
    parser.add_argument("--pace-many", type=float, default=0.0,
                        help="ops/s offered by all writers of the many-documents load together, each typing at its "
                             "share from a random start (default 0: each sends its next op when acknowledged)")
    parser.add_argument("--pace-hot", type=float, default=0.0, help="the same for the hot document's writers")
    parser.add_argument("--cpu-cap", type=float, default=0.0,
                        help="cap each collab process at this many cores (a cgroup each; needs root), as on a "
                             "machine with a core per process, scaled down (default 0: no cap)")
    asyncio.run(bench(parser.parse_args()))


if __name__ == "__main__":
    main()
