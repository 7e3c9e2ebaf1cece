"""The event loop's end of the fsync helper: ask for an ``fdatasync`` of the WAL, get the answer as a callback.

:class:`WalSync` starts the helper process (:mod:`collab.store.walsync`),
writes one byte per request into its pipe and reads its answers through
the event loop's own ``epoll``, like a socket. If the helper dies or cannot
be started, it goes on with the same ``fdatasync`` on the store's thread,
and logs why.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import os
import subprocess
import sys
from typing import Callable, NamedTuple

from .walsync import DONE, fdatasync_path

log = logging.getLogger("collab.store")

Done = Callable[[BaseException | None], object]


class Launch(NamedTuple):
    """How to start the helper: its command line, environment and working directory."""

    args: list[str]
    env: dict[str, str]
    cwd: str


def helper_command(requests: int, replies: int, path: str) -> Launch:
    """How to start the helper on these pipe ends, for the WAL file at ``path``.

    ``-m``, run from the directory that holds the ``collab`` package (also
    first on ``PYTHONPATH``), finds this module wherever the package lives,
    and never another ``collab`` in the server's working directory; ``-S``
    skips site-packages, which the helper does not need.
    """
    package = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package, env.get("PYTHONPATH", "")) if p)
    args = [sys.executable, "-S", "-m", "collab.store.walsync", str(requests), str(replies), os.path.abspath(path)]
    return Launch(args, env, package)


class WalSync:
    """Requests for an ``fdatasync`` of the file at ``path``, answered on the event loop.

    :meth:`sync` calls ``done(None)`` once every write made to the file
    before the call is on disk, or ``done(error)``. Callbacks run on the
    loop, in the order of the requests. ``executor`` runs the fallback
    (the store's own thread).
    """

    def __init__(self, path: str, executor: concurrent.futures.Executor) -> None:
        self.path = path
        self._executor = executor
        self._loop: asyncio.AbstractEventLoop | None = None
        self._helper: subprocess.Popen | None = None
        self._requests = -1
        self._replies = -1
        self._waiting: collections.deque[Done] = collections.deque()
        #: The fallback's requests not yet covered by an fdatasync; one runs at a time.
        self._queued: list[Done] = []
        self._threaded = False

    @property
    def helper_pid(self) -> int | None:
        """The helper's process id, while it serves requests."""
        return self._helper.pid if self._helper is not None and not self._threaded else None

    def start(self) -> None:
        """Start the helper (on the running loop); on a platform that cannot, use the thread."""
        self._loop = asyncio.get_running_loop()
        try:
            req_r, self._requests = os.pipe()
            self._replies, rep_w = os.pipe()
            try:
                launch = helper_command(req_r, rep_w, self.path)
                self._helper = subprocess.Popen(launch.args, env=launch.env, cwd=launch.cwd, pass_fds=(req_r, rep_w),
                                                stdin=subprocess.DEVNULL, close_fds=True)
            finally:
                os.close(req_r)
                os.close(rep_w)
            os.set_blocking(self._replies, False)
            self._loop.add_reader(self._replies, self._answered)
        except (OSError, ValueError, NotImplementedError) as exc:
            log.warning("the fsync helper process could not start (%s); fsyncing on the store's thread", exc)
            self._use_thread()

    def sync(self, done: Done) -> None:
        """Ask for an fdatasync covering every write made so far; ``done`` is called on the loop."""
        if self._threaded:
            self._queued.append(done)
            if len(self._queued) == 1:
                self._thread_sync()
            return
        self._waiting.append(done)
        try:
            os.write(self._requests, b"s")
        except OSError as exc:  # the helper is gone: EPIPE
            self._lost(f"cannot reach it: {exc}")

    def _answered(self) -> None:
        try:
            answers = os.read(self._replies, 65536)
        except BlockingIOError:
            return
        except OSError as exc:
            answers, why = b"", str(exc)
        else:
            why = f"it exited with code {self._helper.poll() if self._helper else None}"
        if not answers:
            self._lost(why)
            return
        for answer in answers:
            done = self._waiting.popleft()
            done(None if answer == DONE[0] else OSError(f"fdatasync of {self.path!r} failed (the server's log says why)"))

    def _lost(self, why: str) -> None:
        """The helper died: fsync on the thread from now on, starting with what it owed."""
        if self._threaded:
            return
        log.error("the fsync helper process stopped (%s); fsyncing on the store's thread from now on", why)
        owed = list(self._waiting)
        self._waiting.clear()
        self._use_thread()
        for done in owed:
            self.sync(done)

    def _use_thread(self) -> None:
        self._threaded = True
        self._close_helper()

    def _thread_sync(self) -> None:
        assert self._loop is not None
        loop, covered = self._loop, list(self._queued)
        try:
            work = self._executor.submit(fdatasync_path, self.path)
        except RuntimeError as exc:  # the executor is shut down
            work = concurrent.futures.Future()
            work.set_exception(exc)

        def finished(work: concurrent.futures.Future) -> None:
            try:
                loop.call_soon_threadsafe(self._thread_synced, covered, work.exception())
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass

        work.add_done_callback(finished)

    def _thread_synced(self, covered: list[Done], error: BaseException | None) -> None:
        del self._queued[: len(covered)]
        if self._queued:
            self._thread_sync()
        for done in covered:
            done(error)

    def _close_helper(self) -> None:
        if self._loop is not None and self._replies >= 0:
            self._loop.remove_reader(self._replies)
        for fd in (self._requests, self._replies):
            if fd >= 0:
                os.close(fd)
        self._requests = self._replies = -1
        helper, self._helper = self._helper, None
        if helper is not None:
            try:
                helper.wait(timeout=5)  # it exits on end of file, after the fdatasync it may be in
            except subprocess.TimeoutExpired:
                helper.kill()
                helper.wait()

    def close(self) -> None:
        """Stop the helper. Call once nothing waits for a sync."""
        self._close_helper()
        self._threaded = True
