"""Run the collab ASGI app under uvicorn with the flood guard installed.

:func:`serve` is the coroutine (used by tests and embedders); :func:`run`
is the blocking entry point used by the CLI, with ``settings.workers``
processes sharing one listening socket (a worker that dies is replaced,
see :mod:`collab.supervisor`). :func:`run` first runs the
start-up checks of :mod:`collab.startup` (one line per problem, before
anything says "serving") and reports readiness only once every worker
accepts connections with its store open.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import shutil
import socket
import tempfile
from typing import Any, Callable

import uvicorn

from collab import guard
from collab.config import Settings
from collab.handoff import HandOff
from collab.startup import Sources, StartupError, preflight
from collab.supervisor import supervise

log = logging.getLogger("collab.server")

ASGIApp = Callable[..., Any]

#: Seconds a shutdown waits for open connections before closing them.
GRACEFUL_SHUTDOWN = 10
#: The cyclic GC's thresholds in a server process (see :func:`tune_gc`).
GC_THRESHOLD = (10_000, 250, 1000)


def _ws_implementation() -> str | type:
    """collab's WebSocket protocol (:mod:`collab.transport`), or uvicorn's own (plain ASGI,
    one warning line) when this uvicorn lacks an internal it relies on."""
    from collab import transport

    return transport.ws_protocol()


def build_config(settings: Settings, app: ASGIApp, **overrides: Any) -> uvicorn.Config:
    """A ``uvicorn.Config`` for ``app`` with collab's limits applied.

    ``proxy_headers`` is off: client addresses behind a proxy are resolved by
    :func:`collab.guard.client_ip` from ``settings.trusted_proxies`` only.
    """
    if settings.trusted_proxies:
        app = guard.ProxyIPLimit(app, settings)
    options: dict[str, Any] = dict(
        host=settings.host,
        port=settings.port,
        ws=_ws_implementation(),
        # A larger message is refused from its frame header (1009), before its payload is read.
        ws_max_size=settings.max_message_bytes,
        ws_ping_interval=settings.ping_interval if settings.ping_interval > 0 else None,
        ws_ping_timeout=settings.ping_timeout if settings.ping_timeout > 0 else None,
        ws_per_message_deflate=False,
        proxy_headers=False,
        server_header=False,
        log_config=None,
        log_level=settings.log_level,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN,
        lifespan="auto",
    )
    options.update(overrides)
    return uvicorn.Config(app, **options)


class _Server(uvicorn.Server):
    """uvicorn.Server that reports when it is listening, and takes connections handed to it."""

    def __init__(self, config: uvicorn.Config, started: asyncio.Event | None) -> None:
        super().__init__(config)
        self._started_event = started
        #: Set by :func:`build_server` with ``handoff_dir``: this process's end of the directory.
        self.handoff: HandOff | None = None
        #: The app's state (:class:`collab.app.CollabApp`), whose hub knows each document's owner.
        self.collab: Any = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            self._listen_for_handoffs()
        if self.started and self._started_event is not None:
            self._started_event.set()

    def _listen_for_handoffs(self) -> None:
        """Once the hub runs (it knows the owners): take connections the other processes here hand over."""
        from collab import transport

        handoff, hub = self.handoff, getattr(self.collab, "hub", None)
        backplane = getattr(hub, "backplane", None)
        if handoff is None or backplane is None:
            return
        handoff.start(backplane.process_id, hub.owner_elsewhere, backplane.address_of)
        problem = transport.handoff_problem(self)
        if problem is not None:
            log.warning("%s: connections are not handed or relayed between processes", problem)
            return
        factory = transport.protocol_factory(self)
        if backplane.relay_address:  # the others link here to relay their clients of this one's documents
            handoff.stream_factory = factory
        if not handoff.directory:  # relays only
            return
        loop = asyncio.get_running_loop()

        def accept(sock: socket.socket, data: bytes) -> None:
            def protocol() -> asyncio.Protocol:
                proto = factory()
                proto.handed_in(data)  # type: ignore[attr-defined]
                return proto

            task = loop.create_task(loop.connect_accepted_socket(protocol, sock))
            task.add_done_callback(_report_handed_failure)

        try:
            handoff.listen(backplane.process_id, accept)
        except OSError as exc:
            log.warning("cannot take connections handed over in %s (%s); each is served where it arrives",
                        handoff.directory, exc)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self.handoff is not None:
            self.handoff.close()  # first: the others stop handing connections here
        await super().shutdown(sockets=sockets)


def _report_handed_failure(task: "asyncio.Task[Any]") -> None:
    if not task.cancelled() and task.exception() is not None:
        log.info("a connection handed here was gone before it was served: %s", task.exception())


def build_server(settings: Settings, app: ASGIApp, started: asyncio.Event | None = None,
                 **overrides: Any) -> uvicorn.Server:
    """A ``uvicorn.Server`` for ``app`` with the flood guard installed."""
    config = build_config(settings, app, **overrides)
    from collab import transport

    transport.configure(config, settings)  # collab's protocol gets this server's incoming-memory limits
    server = _Server(config, started)
    if transport.support_problem() is None:  # else plain ASGI, without the guard's uvicorn glue (warned)
        installed = guard.install(server, settings)  # settings: shares the per-address state with the app (SourceLimits.for_settings)
        collab_state = getattr(getattr(app, "state", None), "collab", None)
        if (settings.handoff_dir or settings.relay_address) and settings.redis_url and collab_state is not None:
            server.handoff = installed.handoff = HandOff(settings.handoff_dir)
            server.collab = collab_state
    return server


async def serve(
    settings: Settings,
    app: ASGIApp | None = None,
    *,
    sockets: list[socket.socket] | None = None,
    started: asyncio.Event | None = None,
    **overrides: Any,
) -> None:
    """Serve until stopped by a signal or by cancelling this coroutine.

    ``sockets``: already bound listening sockets (otherwise
    ``settings.host``/``settings.port`` are bound). ``started`` is set once
    the server accepts connections. ``overrides`` are ``uvicorn.Config``
    options (tests use ``ws=`` to run without the direct-write protocol).
    Cancelling shuts the server down
    gracefully (listening sockets closed, connections closed) before the
    cancellation propagates.
    """
    if app is None:
        from collab.app import create_app

        app = create_app(settings)
    server = build_server(settings, app, started, **overrides)
    task = asyncio.ensure_future(server.serve(sockets=sockets))
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(task), GRACEFUL_SHUTDOWN + 5)
        except asyncio.TimeoutError:
            server.force_exit = True
            task.cancel()
        except asyncio.CancelledError:
            server.force_exit = True
        raise


def tune_gc() -> None:
    """Make the cyclic GC cheaper for a long-running server process.

    ``gc.freeze()`` moves everything alive after startup (modules, the app)
    into a permanent generation that collections no longer traverse. A
    gen-0 threshold of 10,000 instead of 700 stops the hub's per-op garbage
    from triggering a collection every few edits, while one collection
    stays short: its cost per object grows steeply once the young
    generation no longer fits in the CPU's cache, and a flood of held
    connections (about a hundred tracked objects each) fills it quickly.
    A gen-1 collection follows only every 250 of those (2.5 million net
    allocations), so the history entries that survive each edit do not keep
    the older generations busy. Only here, in the CLI's worker
    process: :func:`serve` leaves an embedder's GC alone.
    ``benchmarks/trace_replay.py`` calls it too, to time the hub as it runs here.
    See docs/benchmarks.md ("Garbage collection") for the measurements.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD[0], GC_THRESHOLD[1], GC_THRESHOLD[2])


async def _serve_announced(settings: Settings, app: ASGIApp | None, sock: socket.socket,
                           ready: Callable[[], None] | None) -> None:
    """:func:`serve` on ``sock``, calling ``ready()`` once it accepts connections (its store open)."""
    started = asyncio.Event()

    async def announce() -> None:
        await started.wait()
        if ready is not None:
            ready()

    announcer = asyncio.ensure_future(announce())
    try:
        await serve(settings, app, sockets=[sock], started=started)
    finally:
        announcer.cancel()
    if not started.is_set():
        raise StartupError("the server stopped before it was ready; the log above says why")


def _worker(settings: Settings, app: ASGIApp | None, sock: socket.socket,
            ready: Callable[[], None] | None = None) -> None:
    tune_gc()
    config_loop = uvicorn.Config(app or (lambda: None), log_config=None).get_loop_factory()
    runner = asyncio.Runner(loop_factory=config_loop) if hasattr(asyncio, "Runner") else None
    if runner is None:  # Python 3.10
        asyncio.run(_serve_announced(settings, app, sock, ready))
        return
    with runner:
        runner.run(_serve_announced(settings, app, sock, ready))


def run(settings: Settings, app: ASGIApp | None = None, *, on_ready: Callable[[int], None] | None = None,
        sources: Sources | None = None) -> None:
    """Serve ``app`` (default: ``collab.app.create_app(settings)``) until SIGINT/SIGTERM.

    A start-up problem raises :class:`collab.startup.StartupError` (one line
    saying what to do) before ``on_ready(port)`` is called, which happens once
    every worker accepts connections. ``sources`` says which setting gave the
    port and the worker count, for those messages (default: read from the
    environment). With ``settings.workers > 1`` the socket is bound once and
    shared by that many forked processes, kept at that number by
    :mod:`collab.supervisor` (a worker that dies is replaced); each has its
    own guard, so per-IP limits apply per process (a client may get up to
    ``workers`` times ``conn_per_ip``).
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sock = preflight(settings, sources or Sources.of({}, os.environ))
    port = sock.getsockname()[1]
    log.info("listening on http://%s:%d (%d worker%s)", settings.host, port,
             settings.workers, "" if settings.workers == 1 else "s")
    if settings.workers <= 1:
        _worker(settings, app, sock, None if on_ready is None else (lambda: on_ready(port)))
        return
    handoff_dir = None
    if settings.redis_url and not settings.handoff_dir:  # the workers pass each other their owners' clients
        handoff_dir = tempfile.mkdtemp(prefix="collab-handoff-")
        settings = settings.replace(handoff_dir=handoff_dir)
    try:
        supervise(settings.workers, sock, lambda ready: _worker(settings, app, sock, ready),
                  None if on_ready is None else (lambda: on_ready(port)))
    finally:
        if handoff_dir is not None:
            shutil.rmtree(handoff_dir, ignore_errors=True)
