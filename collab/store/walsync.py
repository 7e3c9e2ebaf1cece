"""Make a SQLite WAL file durable from a helper process.

The SQLite store commits on the event loop with ``synchronous=NORMAL``: a
commit's pages reach the operating system (which survives ``kill -9``) but
not the disk. With ``COLLAB_SQLITE_SYNC=full`` an append is acknowledged
only once an ``fdatasync`` of the WAL file has covered it, which is what
SQLite's own ``synchronous=FULL`` does at every commit, and survives a power
cut too.

That ``fdatasync`` runs in a small helper process (:data:`HELPER`), not on a
thread of the server: a thread that returns from a blocking call must win
back the GIL from the busy event loop, and on a server's one core those
hand-offs cost more than the call itself (``docs/benchmarks.md``, ninth
round). The loop writes one byte per request into a pipe; the helper reads
every request waiting, makes one ``fdatasync`` that covers them all, and
answers one byte per request (``0`` done, ``1`` failed); the loop sees the
answer through its own ``epoll``, like a socket.

The helper has no state worth keeping: it ignores ``SIGINT`` and
``SIGTERM`` (so a Ctrl-C or a service manager's stop does not take it away
while the server drains its last commits) and exits when the server's end
of the pipe closes, including when the server is killed. If it dies or
cannot be started, :class:`WalSync` goes on with the same ``fdatasync`` on
a thread, and logs why.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import os
import subprocess
import sys
from typing import Callable

log = logging.getLogger("collab.store")

#: The helper: ``python -c HELPER requests replies path``, with the two pipe
#: ends passed down. It opens the WAL file itself, and again if the file at
#: ``path`` is ever another one (an fsync of a replaced file would cover nothing).
HELPER = r"""
import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
requests, replies, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
sync = getattr(os, "fdatasync", os.fsync)
fd = -1
while True:
    asked = os.read(requests, 65536)
    if not asked:
        break
    try:
        if fd < 0 or os.fstat(fd).st_ino != os.stat(path).st_ino:
            if fd >= 0:
                os.close(fd)
            fd = -1
            fd = os.open(path, os.O_RDONLY)
        sync(fd)
        answer = b"\0"
    except OSError as exc:
        print(f"collab: fdatasync of {path!r} failed: {exc}", file=sys.stderr, flush=True)
        answer = b"\1"
    os.write(replies, answer * len(asked))
"""

Done = Callable[[BaseException | None], object]


def fdatasync_path(path: str) -> None:
    """What the helper does for one request, on the calling thread."""
    fd = os.open(path, os.O_RDONLY)
    try:
        getattr(os, "fdatasync", os.fsync)(fd)
    finally:
        os.close(fd)


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
                self._helper = subprocess.Popen(
                    [sys.executable, "-I", "-S", "-c", HELPER, str(req_r), str(rep_w), self.path],
                    pass_fds=(req_r, rep_w), stdin=subprocess.DEVNULL, close_fds=True,
                )
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
            done(None if answer == 0 else OSError(f"fdatasync of {self.path!r} failed (the server's log says why)"))

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
