"""Shared fixtures: real collab servers on ephemeral ports, and a tiny WebSocket client.

``server`` is an in-process uvicorn server (same event loop as the test) on
a fresh SQLite data directory; ``server_factory`` makes more, with settings
overridden; ``ServerProcess`` runs one in a child process, for tests that
kill it. ``frontend_node_modules`` installs the browser client's pinned
JavaScript dependencies on first use (or skips, saying what is missing), so
the one test command works on a fresh clone.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator

import httpx
import pytest
import websockets

from collab.config import Settings

ROOT = Path(__file__).resolve().parent.parent
FRONTEND = ROOT / "frontend"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_modules_problem(frontend: Path = FRONTEND) -> str | None:
    """Install ``frontend/node_modules`` from ``package-lock.json`` (``npm ci``) unless it is fresh.

    Returns ``None`` when the modules are there, else the one-line reason they
    are not (no Node.js, no npm, ``npm ci`` failed). Runs under a file lock,
    so test runs started at the same time in one checkout install once.
    """
    if shutil.which("node") is None:
        return "node is not installed: the JavaScript tests need Node.js >= 18 (and npm)"
    modules = frontend / "node_modules"
    stamp = modules / ".package-lock.json"  # written by npm after every install
    lock_path = Path(tempfile.gettempdir()) / f"collab-npm-{hashlib.sha1(str(frontend).encode()).hexdigest()[:12]}.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.exists() and stamp.stat().st_mtime >= (frontend / "package-lock.json").stat().st_mtime:
            return None
        npm = shutil.which("npm")
        if npm is None:
            return "npm is not installed: it installs frontend/node_modules for the JavaScript tests"
        try:
            result = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=frontend,
                                    capture_output=True, text=True, timeout=600)
        except subprocess.TimeoutExpired:
            return "npm ci in frontend/ took over 10 minutes; run it by hand and retry"
        if result.returncode != 0:
            last = (result.stderr.strip() or result.stdout.strip() or "no output").splitlines()[-1]
            return f"npm ci in frontend/ failed ({last}); run it by hand to see why"
    return None


@pytest.fixture(scope="session")
def frontend_node_modules() -> Path:
    """``frontend/node_modules``, installed by ``npm ci`` on first use; skips the test when that cannot be done."""
    problem = node_modules_problem()
    if problem is not None:
        pytest.skip(problem)
    return FRONTEND / "node_modules"


@dataclass
class RunningServer:
    """A server under test: where it listens, and its app (for white-box checks)."""

    base_url: str
    ws_url: str
    settings: Settings
    app: Any = None
    task: asyncio.Task | None = None

    @property
    def hub(self):
        return self.app.state.collab.hub

    def ws(self, doc: str, query: str = "") -> str:
        return f"{self.ws_url}/ws/{doc}" + (f"?{query}" if query else "")

    async def stop(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task


@pytest.fixture
async def server_factory(tmp_path) -> AsyncIterator:
    """``await server_factory(**settings_overrides)`` starts another in-process server."""
    from collab.app import create_app
    from collab.server import serve

    running: list[RunningServer] = []

    async def start(app=None, uvicorn_options: dict | None = None, **overrides: Any) -> RunningServer:
        data_dir = overrides.pop("data_dir", None) or str(tmp_path / f"data{len(running)}")
        settings = Settings(data_dir=data_dir, host="127.0.0.1").replace(**overrides)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        settings = settings.replace(port=port)
        app = app or create_app(settings)
        started = asyncio.Event()
        task = asyncio.create_task(serve(settings, app, sockets=[sock], started=started, **(uvicorn_options or {})))
        waiter = asyncio.create_task(started.wait())
        await asyncio.wait({task, waiter}, timeout=15, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()
        assert started.is_set(), "the server did not start within 15 s"
        server = RunningServer(f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}", settings, app, task)
        running.append(server)
        return server

    yield start
    for server in reversed(running):
        await server.stop()


@pytest.fixture
async def server(server_factory) -> RunningServer:
    return await server_factory()


class WS:
    """A bare protocol client for tests: JSON in, JSON out, nothing hidden."""

    def __init__(self, conn: websockets.ClientConnection) -> None:
        self.conn = conn

    @classmethod
    async def open(cls, url: str, **kwargs: Any) -> "WS":
        kwargs.setdefault("max_queue", None)  # tests read selectively; never stall the close handshake
        return cls(await websockets.connect(url, open_timeout=10, max_size=None, **kwargs))

    async def send(self, msg: Any) -> None:
        await self.conn.send(msg if isinstance(msg, (str, bytes)) else json.dumps(msg))

    async def recv(self, timeout: float = 10) -> dict:
        return json.loads(await asyncio.wait_for(self.conn.recv(), timeout))

    async def recv_type(self, kind: str, timeout: float = 10) -> dict:
        """The next message of type ``kind``, skipping others (presence, join...)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            msg = await self.recv(max(0.01, deadline - asyncio.get_running_loop().time()))
            if msg["type"] == kind:
                return msg

    async def join(self, since: int | None = None, user: dict | None = None) -> dict:
        msg: dict = {"type": "join"}
        if since is not None:
            msg["since"] = since
        if user is not None:
            msg["user"] = user
        await self.send(msg)
        return await self.recv_type("welcome")

    async def close(self) -> None:
        await self.conn.close()


@pytest.fixture
async def ws_open() -> AsyncIterator:
    """``await ws_open(url)`` opens a :class:`WS`; all are closed after the test."""
    opened: list[WS] = []

    async def open_(url: str, **kwargs: Any) -> WS:
        ws = await WS.open(url, **kwargs)
        opened.append(ws)
        return ws

    yield open_

    async def close(ws: WS) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.close(), 2)

    await asyncio.gather(*(close(ws) for ws in opened))


async def http_get(url: str, **kwargs: Any) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.get(url, **kwargs)


async def metric(server: Any, name: str) -> float:
    """The value of ``name`` on ``server``'s ``/metrics`` (anything with a ``base_url``)."""
    text = (await http_get(f"{server.base_url}/metrics")).text
    return float(text.split(f"\n{name} ")[1].split()[0])


@dataclass
class ServerProcess:
    """A collab server in a child process (so a test can SIGKILL it)."""

    data_dir: str
    port: int = field(default_factory=free_port)
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    #: The server's working directory (a relative data directory is inside it).
    cwd: str = str(ROOT)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20) -> "ServerProcess":
        env = dict(os.environ, COLLAB_DATA_DIR=self.data_dir, COLLAB_PORT=str(self.port), COLLAB_HOST="127.0.0.1")
        env.pop("PORT", None)
        env.update(self.env)
        code = "from collab.config import Settings; from collab.server import run; run(Settings.from_env())"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code], env=env, cwd=self.cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(self.base_url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError("server did not become healthy")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


class TcpProxy:
    """A loopback TCP proxy in front of a server, to cut connections the way networks do.

    ``blackhole()`` stops forwarding in both directions while keeping both
    sockets open (a laptop lid shut: no FIN, no close frame); ``cut()``
    aborts every connection; ``refuse`` makes new connections fail at once.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.refuse = False
        self._server: asyncio.base_events.Server | None = None
        self._pairs: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter, list[bool]]] = []
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> "TcpProxy":
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refuse:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        flowing = [True]
        self._pairs.append((writer, up_writer, flowing))
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst, flowing))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, flowing: list[bool]) -> None:
        try:
            while True:
                data = await src.read(65536)
                if not data:
                    break
                if flowing[0]:
                    dst.write(data)
                    await dst.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            if flowing[0]:
                dst.transport.abort()

    def blackhole(self) -> None:
        for _, _, flowing in self._pairs:
            flowing[0] = False

    def cut(self) -> None:
        for down, up, flowing in self._pairs:
            flowing[0] = True
            down.transport.abort()
            up.transport.abort()
        self._pairs.clear()

    async def close(self) -> None:
        self.cut()
        for task in list(self._tasks):
            task.cancel()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@pytest.fixture
async def tcp_proxy() -> AsyncIterator:
    """``await tcp_proxy(port)`` starts a :class:`TcpProxy` in front of ``port``."""
    proxies: list[TcpProxy] = []

    async def start(port: int) -> TcpProxy:
        proxy = await TcpProxy(port).start()
        proxies.append(proxy)
        return proxy

    yield start
    for proxy in proxies:
        await proxy.close()
