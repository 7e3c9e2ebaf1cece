"""Worker processes sharing one listening socket, replaced when they die, until the group is stopped.

:class:`Supervisor` forks ``count`` workers (each runs ``target(ready)``
on the socket the parent bound, and calls ``ready()`` once it accepts
connections). Once all are serving, a worker that dies for any reason
(``kill -9``, the kernel's out-of-memory killer, a crash) is replaced by a
new fork on the same socket, with one log line for the death and one when
the new worker serves. Workers that keep dying soon after they start are
replaced after a delay that doubles each time (up to :data:`MAX_BACKOFF`),
so a worker that cannot start does not become a fork loop. SIGTERM or
SIGINT to the parent stops every worker (each closes its connections with
1012) and nothing is restarted after that.

The parent also makes the directory through which the workers report
``/metrics`` for the whole group (:mod:`collab.workermetrics`); a dead
worker's file is kept there, so the group's counters never go back.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait as wait_any
from multiprocessing.process import BaseProcess
from typing import Any, Callable

from collab import workermetrics
from collab.startup import StartupError

log = logging.getLogger("collab.server")

#: A worker that dies within this many seconds of its start died early; only repeated early deaths back off.
STABLE_SECONDS = 10.0
#: The delay before replacing a worker after the second early death in a row; doubled for each further one.
FIRST_BACKOFF = 0.5
#: The longest delay before a worker is replaced.
MAX_BACKOFF = 30.0

#: A worker's body: serve on the shared socket, calling ``ready()`` once connections are accepted.
Target = Callable[[Callable[[], None]], None]


@dataclass
class _Worker:
    proc: BaseProcess
    #: The parent's end of the pipe on which the worker says it is serving.
    ready: Connection
    started: float
    #: The pid of the worker this one replaces (for the log line).
    replaces: int | None = None
    serving: bool = False

    @property
    def pid(self) -> int:
        assert self.proc.pid is not None
        return self.proc.pid


def backoff(early: int) -> float:
    """Seconds to wait before replacing a worker after ``early`` early deaths in a row (the first: none)."""
    return 0.0 if early <= 1 else min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** (early - 2))


def _how(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return f"signal {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"signal {-exitcode}"
    return f"exit code {exitcode}"


def _child(target: Target, ready: Connection, metrics_dir: str) -> None:
    """The worker's first steps after the fork: the signals of a fresh process, then ``target``."""
    signal.set_wakeup_fd(-1)  # the parent's: its signals are not this process's business
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    workermetrics.share(metrics_dir)

    def say_ready() -> None:
        try:
            ready.send(True)
        except OSError:  # the parent is gone: nobody to tell
            pass

    target(say_ready)


class Supervisor:
    """``count`` forked workers on one socket, kept at that number until SIGTERM or SIGINT."""

    def __init__(self, count: int, target: Target) -> None:
        self.count = count
        self.target = target
        self.ctx = multiprocessing.get_context("fork")
        self.workers: list[_Worker] = []
        self.stopping = False
        #: Early deaths in a row (reset by a worker that lived :data:`STABLE_SECONDS`).
        self.early = 0
        #: Replacements waiting for their time: ``(monotonic time, pid replaced)``.
        self.pending: list[tuple[float, int]] = []
        self.metrics_dir = tempfile.mkdtemp(prefix="collab-metrics-")
        #: Written to by the signal handling (``signal.set_wakeup_fd``), so a signal ends any wait.
        self._wake_r, self._wake_w = socket.socketpair()

    def run(self, on_ready: Callable[[], None] | None = None) -> None:
        """Start the workers; ``on_ready()`` once all serve; replace the dead until stopped by a signal.

        Raises :class:`StartupError` if a worker stops before all are serving
        (the others are stopped first).
        """
        for end in (self._wake_r, self._wake_w):
            end.setblocking(False)
        signal.set_wakeup_fd(self._wake_w.fileno())
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        try:
            for _ in range(self.count):
                self._start()
            if self._wait_ready() and on_ready is not None:
                on_ready()
            self._watch()
        finally:
            signal.set_wakeup_fd(-1)
            self._wake_r.close()
            self._wake_w.close()
            shutil.rmtree(self.metrics_dir, ignore_errors=True)

    def _start(self, replaces: int | None = None) -> None:
        reader, writer = self.ctx.Pipe(duplex=False)
        proc = self.ctx.Process(target=_child, args=(self.target, writer, self.metrics_dir), daemon=False)
        proc.start()
        writer.close()  # the worker has its own copy
        worker = _Worker(proc, reader, time.monotonic(), replaces)
        self.workers.append(worker)
        if self.stopping:  # the signal came while it was being forked
            self._terminate(worker)

    def _stop(self, signum: int, _frame: Any) -> None:
        """SIGTERM or SIGINT: stop every worker, start no more."""
        self.stopping = True
        for w in list(self.workers):
            self._terminate(w)

    @staticmethod
    def _terminate(worker: _Worker) -> None:
        if worker.proc.exitcode is None:
            try:
                os.kill(worker.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def _wait_ready(self) -> bool:
        """Until every worker serves (``True``); a worker that stops first stops them all.

        ``False`` when stopped by a signal meanwhile; :class:`StartupError` when a worker stopped by itself.
        """
        while not all(w.serving for w in self.workers):
            self._wait(None)
            failed = not self.stopping and any(w.proc.exitcode is not None for w in self.workers)
            if failed or self.stopping:
                self._stop(signal.SIGTERM, None)
                while self.workers:
                    self._wait(None)
                    self._reap(replace=False)
                if failed:
                    raise StartupError("a worker process stopped during start-up; the lines above say why")
                return False
        return True

    def _watch(self) -> None:
        """Replace dead workers (after their back-off) until stopped and every worker is gone."""
        while self.workers or (self.pending and not self.stopping):
            due = min((t for t, _ in self.pending), default=None)
            self._wait(None if due is None else max(0.0, due - time.monotonic()))
            self._reap(replace=not self.stopping)
            now = time.monotonic()
            due_now = [p for p in self.pending if p[0] <= now or self.stopping]
            self.pending = [p for p in self.pending if p not in due_now]
            for _, replaced in due_now:
                if not self.stopping:
                    self._start(replaces=replaced)

    def _wait(self, timeout: float | None) -> None:
        """Until a worker dies or says it serves, a signal arrives, or ``timeout`` seconds pass."""
        waiting: list[Any] = [self._wake_r] + [w.proc.sentinel for w in self.workers]
        waiting += [w.ready for w in self.workers if not w.serving]
        for obj in wait_any(waiting, timeout):
            if obj is self._wake_r:
                try:
                    self._wake_r.recv(4096)
                except BlockingIOError:
                    pass
                continue
            for w in self.workers:
                if obj is w.ready and not w.serving:
                    self._note_serving(w)

    def _note_serving(self, w: _Worker) -> None:
        try:
            w.ready.recv()
        except (EOFError, OSError):  # it died before it was ready: its sentinel says so
            return
        w.serving = True
        if w.replaces is not None:
            log.info("worker pid %d is serving, in place of pid %d", w.pid, w.replaces)

    def _reap(self, replace: bool) -> None:
        """Take the dead workers out, keep their metrics, and schedule their replacements."""
        for w in [w for w in self.workers if w.proc.exitcode is not None]:
            self.workers.remove(w)
            pid, how, lived = w.pid, _how(w.proc.exitcode), time.monotonic() - w.started
            w.proc.join()
            w.proc.close()
            w.ready.close()
            workermetrics.retire(self.metrics_dir, pid)
            if not replace:
                continue
            self.early = self.early + 1 if lived < STABLE_SECONDS else 0
            delay = backoff(self.early)
            after = f" in {delay:g} s ({self.early} early exits in a row)" if delay else ""
            log.warning("worker pid %d stopped (%s) after %.1f s; starting another%s", pid, how, lived, after)
            self.pending.append((time.monotonic() + delay, pid))


def supervise(count: int, sock: socket.socket, target: Target, on_ready: Callable[[], None] | None = None) -> None:
    """Run ``count`` workers on ``sock`` under a :class:`Supervisor` until stopped; then close ``sock``."""
    try:
        Supervisor(count, target).run(on_ready)
    finally:
        sock.close()
