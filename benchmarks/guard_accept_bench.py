"""Benchmark the accept-time flood guard (collab.guard) on real uvicorn servers.

Measures, in one run, so the ratios are comparable:

* accepted-connection throughput (new TCP connection + ``GET /healthz`` +
  close) with and without the guard installed;
* server CPU time per accepted-and-served connection, and per connection
  refused by the guard (read from the server process with psutil).

Usage::

    python benchmarks/guard_accept_bench.py [--seconds 5] [--concurrency 16] [--out table.md]

Prints a markdown section; ``--out`` also writes it to a file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

REQUEST = b"GET /healthz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"


def _serve(spec: dict) -> None:
    """Subprocess entry: a minimal app on uvicorn, with or without the guard; prints the port."""
    import uvloop
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from collab import server
    from collab.config import Settings

    async def healthz(request: Any) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/healthz", healthz)])
    settings = Settings(log_level="error", **spec["settings"])
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(4096)

    async def main() -> None:
        started = asyncio.Event()
        if spec["guard"]:
            srv = server.build_server(settings, app, started)
        else:
            srv = server._Server(server.build_config(settings, app), started)
        task = asyncio.create_task(srv.serve(sockets=[sock]))
        await started.wait()
        print(f"PORT {sock.getsockname()[1]}", flush=True)
        await task

    uvloop.run(main())


class ServerProc:
    def __init__(self, guard: bool, **settings: Any) -> None:
        spec = json.dumps({"guard": guard, "settings": settings})
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve", spec], stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("PORT "):
            self.proc.kill()
            raise SystemExit(f"benchmark server did not start (got {line!r}); run from the repository root")
        self.port = int(line.split()[1])
        import psutil

        self.ps = psutil.Process(self.proc.pid)

    def cpu(self) -> float:
        t = self.ps.cpu_times()
        return t.user + t.system

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)


IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


async def _connect(port: int, src: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect from source address ``src``; the port is picked at connect() time so
    thousands of short connections do not exhaust bind()'s port choice."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((src, 0))
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock)


async def _one_request(port: int, src: str) -> int:
    """Connect from ``src``, GET /healthz, read to EOF: 1 if served, 0 if not, -1 on a client error."""
    try:
        reader, writer = await _connect(port, src)
    except OSError:
        return -1
    try:
        writer.write(REQUEST)
        data = await reader.read()
    except (ConnectionResetError, BrokenPipeError):
        data = b""
    finally:
        writer.close()
    return 1 if data.startswith(b"HTTP/1.1 200") else 0


async def _refused_connect(port: int, src: str) -> int:
    """Connect from ``src``, send nothing: 1 if the server closes at once, 0 if not, -1 on a client error."""
    try:
        reader, writer = await _connect(port, src)
    except OSError:
        return -1
    try:
        data = await asyncio.wait_for(reader.read(1), 5)
    except (ConnectionResetError, BrokenPipeError):
        data = b""
    except asyncio.TimeoutError:
        data = b"?"
    finally:
        writer.close()
    return 1 if data == b"" else 0


async def _load(port: int, seconds: float, concurrency: int, fn: Any) -> tuple[int, int, float]:
    """Run ``fn`` from ``concurrency`` workers (each its own source address) for ``seconds``.

    Returns (successes, client errors, elapsed)."""
    ok = errors = 0
    end = time.perf_counter() + seconds

    async def worker(i: int) -> None:
        nonlocal ok, errors
        src = f"127.0.{1 + i // 250}.{2 + i % 250}"
        while time.perf_counter() < end:
            r = await fn(port, src)
            if r > 0:
                ok += 1
            elif r < 0:
                errors += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return ok, errors, time.perf_counter() - t0


class Scenario:
    """One server and its client workload, measured in short interleaved rounds."""

    def __init__(self, name: str, guard: bool, fn: Any, **settings: Any) -> None:
        self.name, self.fn = name, fn
        self.srv = ServerProc(guard, **settings)
        self.ok = self.errors = 0
        self.elapsed = self.cpu = 0.0

    def round(self, seconds: float, concurrency: int, record: bool = True) -> None:
        cpu0 = self.srv.cpu()
        ok, errors, elapsed = asyncio.run(_load(self.srv.port, seconds, concurrency, self.fn))
        if record:
            self.cpu += self.srv.cpu() - cpu0
            self.ok += ok
            self.errors += errors
            self.elapsed += elapsed

    @property
    def rate(self) -> float:
        return self.ok / self.elapsed if self.elapsed else 0.0

    @property
    def cpu_per_conn_us(self) -> float:
        return self.cpu / max(self.ok, 1) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="measuring time per scenario")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent client connections")
    parser.add_argument("--out", help="also write the markdown section to this file")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        _serve(json.loads(args.serve))
        return

    unlimited = dict(conn_rate=1e9, conn_burst=10**9, conn_per_ip=10**6, max_connections=10**6)
    plain = Scenario("accepted, no guard (baseline)", False, _one_request, **unlimited)
    guarded = Scenario("accepted, guard installed", True, _one_request, **unlimited)
    # Every source address gets one connection (burst 1), never refilled: the rest are refused.
    refused = Scenario("refused at accept by the guard", True, _refused_connect, conn_rate=1e-9, conn_burst=1,
                       conn_per_ip=10**6, max_connections=10**6, handshake_timeout=30)
    scenarios = [plain, guarded, refused]
    try:
        for sc in scenarios:  # warm up; spends the refused scenario's bursts
            sc.round(0.3, args.concurrency, record=False)
        rounds = max(1, round(args.seconds / 0.5))
        for _ in range(rounds):  # interleaved, so load from elsewhere on the host hits all alike
            for sc in scenarios:
                sc.round(args.seconds / rounds, args.concurrency)
    finally:
        for sc in scenarios:
            sc.srv.stop()
    errors = sum(sc.errors for sc in scenarios)
    if errors:
        print(f"warning: {errors} client-side connect errors (not counted)", file=sys.stderr)
    rows = [(sc.name, sc, sc.rate / plain.rate) for sc in scenarios]
    lines = [
        "## Flood guard benchmark",
        "",
        f"`python benchmarks/guard_accept_bench.py --seconds {args.seconds:g} --concurrency {args.concurrency}` on "
        f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; client and server on "
        "one host (loopback), client connections from distinct 127.0.x.y source addresses. Each accepted "
        "connection is a new TCP connection + `GET /healthz` + close; a refused one is a new TCP connection "
        "the server closes before reading. Server CPU is the server process's user+system time. The three "
        "servers run side by side and are measured in interleaved 0.5 s rounds.",
        "",
        "| scenario | connections/s | vs baseline | server CPU per connection | vs served (no guard) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, r, rel in rows:
        cpu_ratio = r.cpu_per_conn_us / plain.cpu_per_conn_us
        lines.append(f"| {name} | {r.rate:,.0f} | {rel:.2f}x | {r.cpu_per_conn_us:,.0f} µs | {cpu_ratio:.2f}x |")
    lines += [
        "",
        f"Guard overhead on accepted connections: {(guarded.rate / plain.rate - 1) * 100:+.1f}% throughput, "
        f"{(guarded.cpu_per_conn_us / plain.cpu_per_conn_us - 1) * 100:+.1f}% server CPU per connection. "
        f"A refused connection costs the server {refused.cpu_per_conn_us / plain.cpu_per_conn_us:.2f}x "
        "the CPU of a served one (a `get_extra_info` call, a dict probe, `abort()`), and nothing of it reaches "
        "the HTTP parser or the app.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
