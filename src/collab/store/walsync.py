"""The fsync helper process: ``python -m collab.store.walsync REQUESTS REPLIES PATH``.

The SQLite store commits on the event loop with ``synchronous=NORMAL``: a
commit's pages reach the operating system (which survives ``kill -9``) but
not the disk. With ``COLLAB_SQLITE_SYNC=full`` an append is acknowledged
only once an ``fdatasync`` of the WAL file has covered it, which is what
SQLite's own ``synchronous=FULL`` does at every commit, and survives a power
cut too.

That ``fdatasync`` runs in this small process, not on a thread of the
server: a thread that returns from a blocking call must win back the GIL
from the busy event loop, and on a server's one core those hand-offs cost
more than the call itself (``docs/benchmarks.md``). The server writes one
byte per request into a pipe; the helper reads every request waiting, makes
one ``fdatasync`` that covers them all, and answers one byte per request
(:data:`DONE` or :data:`FAILED`). The server's end is
:class:`collab.store.walsync_client.WalSync`.

The helper has no state worth keeping: it ignores ``SIGINT`` and
``SIGTERM`` (so a Ctrl-C or a service manager's stop does not take it away
while the server drains its last commits) and exits quietly when the
server's end of a pipe closes, including when the server is killed. It
imports only ``os``, ``signal`` and ``sys`` (and the ``collab.store``
package, whose ``__init__`` imports nothing eagerly), so it starts at once.
"""

from __future__ import annotations

import os
import signal
import sys

#: The helper's answer to a request: the fdatasync covering it succeeded, or failed.
DONE, FAILED = b"\0", b"\1"
#: Tests only: while the file this names exists, the helper answers :data:`FAILED`
#: without syncing (a failing disk cannot be caused on purpose). Read once, at start.
FAULT_ENV = "COLLAB_TEST_FSYNC_FAULT"

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


if __name__ == "__main__":
    sys.exit(main())
