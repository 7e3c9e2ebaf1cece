"""The fsync helper (:mod:`collab.store.walsync`): its functions called as code, and the real process.

A failing disk cannot be caused on this machine, so the helper's test-only
fault file (``COLLAB_TEST_FSYNC_FAULT``) stands in for it where a failure is
needed; everything else is the real thing: real pipes, real files, a real
helper process started the way the store starts it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import subprocess

from collab.store import walsync
from collab.store.walsync import DONE, FAILED, FAULT_ENV, serve, sync_file
from collab.store.walsync_client import WalSync, helper_command


def _requests(n: int) -> tuple[int, int]:
    """A pipe holding ``n`` requests, its write end closed: ``serve`` answers them, then sees the end."""
    r, w = os.pipe()
    os.write(w, b"s" * n)
    os.close(w)
    return r, w


def _read_all(fd: int) -> bytes:
    out = b""
    while chunk := os.read(fd, 65536):
        out += chunk
    return out


def test_serve_answers_every_waiting_request_and_stops_when_the_server_closes_its_end(tmp_path):
    wal = tmp_path / "x.sqlite3-wal"
    wal.write_bytes("😀".encode() * 100)
    requests, _ = _requests(3)
    replies_r, replies_w = os.pipe()
    try:
        serve(requests, replies_w, str(wal))  # returns: the requests' write end is closed
        os.close(replies_w)
        assert _read_all(replies_r) == DONE * 3, "one answer per request, all covered by the sync"
    finally:
        os.close(requests)
        os.close(replies_r)


def test_serve_answers_failed_while_the_fault_file_exists_and_for_a_file_it_cannot_sync(tmp_path, capsys):
    wal = tmp_path / "x.sqlite3-wal"
    wal.write_bytes(b"x")
    fault = tmp_path / "fault"
    fault.touch()
    for path, expected in ((str(wal), FAILED), (str(tmp_path / "missing-wal"), FAILED)):
        requests, _ = _requests(2)
        replies_r, replies_w = os.pipe()
        try:
            serve(requests, replies_w, path, fault=str(fault) if path == str(wal) else None)
            os.close(replies_w)
            assert _read_all(replies_r) == expected * 2
        finally:
            os.close(requests)
            os.close(replies_r)
    assert "fdatasync of" in capsys.readouterr().err, "a real failure is said on stderr"
    fault.unlink()
    requests, _ = _requests(1)
    replies_r, replies_w = os.pipe()
    try:
        serve(requests, replies_w, str(wal), fault=str(fault))  # the fault file is gone: syncs again
        os.close(replies_w)
        assert _read_all(replies_r) == DONE
    finally:
        os.close(requests)
        os.close(replies_r)


def test_serve_returns_quietly_when_nobody_reads_its_answers(tmp_path, capsys):
    """The server was killed while a sync was asked: the answer's pipe is broken (EPIPE)."""
    wal = tmp_path / "x.sqlite3-wal"
    wal.write_bytes(b"x")
    r, w = os.pipe()
    os.write(w, b"s")  # write end stays open: serve returns because of the broken reply pipe
    replies_r, replies_w = os.pipe()
    os.close(replies_r)
    try:
        serve(r, replies_w, str(wal))
    finally:
        for fd in (r, w, replies_w):
            os.close(fd)
    assert capsys.readouterr().err == ""


def test_sync_file_reopens_a_file_replaced_at_its_path(tmp_path):
    """An fsync of a replaced file would cover nothing: the helper follows the path."""
    wal = tmp_path / "x.sqlite3-wal"
    wal.write_bytes(b"old")
    fd, ok = sync_file(-1, str(wal))
    assert ok and os.fstat(fd).st_ino == os.stat(wal).st_ino
    again, ok = sync_file(fd, str(wal))
    assert ok and again == fd, "the same file: the descriptor is kept"
    new = tmp_path / "new"
    new.write_bytes("🦄".encode())
    os.replace(new, wal)
    reopened, ok = sync_file(fd, str(wal))
    try:
        assert ok and os.fstat(reopened).st_ino == os.stat(wal).st_ino
    finally:
        os.close(reopened)


def test_main_refuses_a_wrong_command_line(capsys):
    assert walsync.main(["1", "2"]) == 2
    assert "usage: python -m collab.store.walsync" in capsys.readouterr().err


def _start_helper(wal: str, env_extra: dict[str, str] | None = None) -> tuple[subprocess.Popen, int, int]:
    """The helper process as the store starts it; returns it, the requests' write end and the replies' read end."""
    req_r, req_w = os.pipe()
    rep_r, rep_w = os.pipe()
    launch = helper_command(req_r, rep_w, wal)
    launch.env.update(env_extra or {})
    proc = subprocess.Popen(launch.args, env=launch.env, cwd=launch.cwd, pass_fds=(req_r, rep_w),
                            stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, close_fds=True)
    os.close(req_r)
    os.close(rep_w)
    return proc, req_w, rep_r


def test_the_helper_runs_as_a_module_and_exits_quietly_when_the_server_is_gone(tmp_path):
    """``python -m collab.store.walsync``: answers, then, its server gone (the reply pipe broken,
    as after ``kill -9``), exits with status 0 and nothing on stderr."""
    wal = tmp_path / "x.sqlite3-wal"
    wal.write_bytes(b"x")
    proc, req_w, rep_r = _start_helper(str(wal))
    try:
        os.write(req_w, b"ss")
        answers = b""
        while len(answers) < 2:
            answers += os.read(rep_r, 2)
        assert answers == DONE * 2
        os.close(rep_r)  # the server died: nobody reads the answers any more
        os.write(req_w, b"s")
        os.close(req_w)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0
        assert err == b"", err.decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_walsync_reports_the_helpers_failure_to_its_caller_on_the_loop(tmp_path, monkeypatch):
    wal = tmp_path / "x.sqlite3-wal"
    wal.write_bytes(b"x")
    fault = tmp_path / "fault"
    monkeypatch.setenv(FAULT_ENV, str(fault))
    with concurrent.futures.ThreadPoolExecutor(1) as executor:
        sync = WalSync(str(wal), executor)
        sync.start()
        try:
            assert sync.helper_pid is not None
            loop = asyncio.get_running_loop()
            answers: list[asyncio.Future] = [loop.create_future() for _ in range(3)]
            sync.sync(answers[0].set_result)
            assert await asyncio.wait_for(answers[0], 10) is None
            fault.touch()
            sync.sync(answers[1].set_result)
            error = await asyncio.wait_for(answers[1], 10)
            assert isinstance(error, OSError) and "failed" in str(error)
            fault.unlink()
            sync.sync(answers[2].set_result)
            assert await asyncio.wait_for(answers[2], 10) is None
        finally:
            sync.close()



async def test_the_helper_finds_its_own_package_and_the_wal_from_any_working_directory(tmp_path, monkeypatch):
    """A store opened with a relative path, from a directory holding another ``collab`` package:
    the helper still runs this module, and syncs the right file."""
    from collab.store.sqlite import SqliteStore
    from collab.store import StoredOp

    decoy = tmp_path / "collab"
    decoy.mkdir()
    (decoy / "__init__.py").write_text("raise ImportError('a decoy collab package')\n")
    monkeypatch.chdir(tmp_path)
    store = SqliteStore(os.path.join("data", "😀.sqlite3"), history_depth=5)
    await store.open()
    try:
        await asyncio.wait_for(store.append("d", [StoredOp(1, ["🦄"], "c1", "u1")], 1), 10)
        assert store.fsync_helper_pid is not None, "the helper died: the store fell back to its thread"
        assert store.health() is None
    finally:
        await store.close()
