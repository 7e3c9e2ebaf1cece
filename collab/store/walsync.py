"""Make a SQLite WAL file durable: the fsync helper process and the event loop's end of it.

The SQLite store commits on the event loop with ``synchronous=NORMAL``: a
commit's pages reach the operating system (which survives ``kill -9``) but
not the disk. With ``COLLAB_SQLITE_SYNC=full`` an append is acknowledged
only once an ``fdatasync`` of the WAL file has covered it, which is what
SQLite's own ``synchronous=FULL`` does at every commit, and survives a power
cut too.

That ``fdatasync`` runs in a small helper process, this module run as
``python -m collab.store.walsync REQUESTS REPLIES PATH`` (see :func:`main`),
not on a thread of the server: a thread that returns from a blocking call
must win back the GIL from the busy event loop, and on a server's one core
those hand-offs cost more than the call itself (``docs/benchmarks.md``).
The loop writes one byte per request into a pipe; the helper reads every
request waiting, makes one ``fdatasync`` that covers them all, and answers
one byte per request (:data:`DONE` or :data:`FAILED`); the loop sees the
answer through its own ``epoll``, like a socket.

The helper has no state worth keeping: it ignores ``SIGINT`` and
``SIGTERM`` (so a Ctrl-C or a service manager's stop does not take it away
while the server drains its last commits) and exits quietly when the
server's end of a pipe closes, including when the server is killed. If it
dies or cannot be started, :class:`WalSync` goes on with the same
``fdatasync`` on a thread, and logs why.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import os
import signal
import subprocess
import sys
from typing import Callable, NamedTuple

log = logging.getLogger("collab.store")

#: The helper's answer to a request: the fdatasync covering it succeeded, or failed.
DONE, FAILED = b"\0", b"\1"
#: Tests only: while the file this names exists, the helper answers :data:`FAILED`
#: without syncing (a failing disk cannot be caused on purpose). Read once, at start.
FAULT_ENV = "COLLAB_TEST_FSYNC_FAULT"

Done = Callable[[BaseException | None], object]


def fdatasync_path(path: str) -> None:
    """One ``fdatasync`` of the file at ``path``, on the calling thread (the fallback's work)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        getattr(os, "fdatasync", os.fsync)(fd)
    finally:
        os.close(fd)


def sync_file(fd: int, path: str) -> tuple[int, bool]:
    """``fdatasync`` the file at ``path`` through ``fd`` (opened again if the path names another
    file now: an fsync of a replaced file covers nothing). Returns the descriptor to keep and
    whether the sync succeeded."""
    try:
        if fd < 0 or os.fstat(fd).st_ino != os.stat(path).st_ino:
            if fd >= 0:
                os.close(fd)
            fd = -1
            fd = os.open(path, os.O_RDONLY)
        getattr(os, "fdatasync", os.fsync)(fd)
        return fd, True
    except OSError as exc:
        _say(f"collab: fdatasync of {path!r} failed: {exc}")
        return fd, False


def _say(line: str) -> None:
    try:
        print(line, file=sys.stderr, flush=True)
    except (OSError, ValueError):  # stderr is gone with the server: nobody to tell
        pass


def serve(requests: int, replies: int, path: str, fault: str | None = None) -> None:
    """Answer requests read from ``requests`` on ``replies`` until either pipe closes.

    Every request waiting is answered by one sync. ``fault`` (tests only):
    while that file exists, answer :data:`FAILED` without syncing.
    """
    fd = -1
    while True:
        try:
            asked = os.read(requests, 65536)
        except OSError:
            return
        if not asked:  # the server closed its end, or died
            return
        if fault is not None and os.path.exists(fault):
            ok = False
        else:
            fd, ok = sync_file(fd, path)
        try:
            os.write(replies, (DONE if ok else FAILED) * len(asked))
        except OSError:  # BrokenPipeError: the server is gone, nobody waits for the answer
            return


def main(argv: list[str] | None = None) -> int:
    """The helper process: ``python -m collab.store.walsync REQUESTS REPLIES PATH``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3:
        _say("usage: python -m collab.store.walsync REQUESTS_FD REPLIES_FD WAL_PATH (started by the SQLite store)")
        return 2
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    serve(int(args[0]), int(args[1]), args[2], os.environ.get(FAULT_ENV) or None)
    return 0


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


if __name__ == "__main__":
    sys.exit(main())
