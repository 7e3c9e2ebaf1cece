"""`collab serve` with no configuration at all serves the editor on http://127.0.0.1:8000."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time

import httpx
import pytest


def port_free(port: int) -> bool:
    """Whether the server could bind ``port`` now: as it does, with SO_REUSEADDR, so that a port
    whose last connections are only in TIME-WAIT counts as free."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.mark.skipif(not port_free(8000), reason="port 8000 is in use on this machine; the default-port check needs it free")
def test_collab_serve_defaults(tmp_path):
    exe = shutil.which("collab")
    cmd = [exe, "serve"] if exe else [sys.executable, "-m", "collab", "serve"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("COLLAB_") and k not in ("PORT", "DATABASE_URL", "REDIS_URL", "WEB_CONCURRENCY")}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get("http://127.0.0.1:8000/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "collab serve did not answer on 127.0.0.1:8000"
            time.sleep(0.1)
        home = httpx.get("http://127.0.0.1:8000/")
        assert home.status_code == 200 and "text/html" in home.headers["content-type"]
        editor = httpx.get("http://127.0.0.1:8000/d/first-doc")
        assert editor.status_code == 200 and "<script" in editor.text
        r = httpx.put("http://127.0.0.1:8000/api/docs/first-doc/text", content="hi 👋".encode())
        assert r.status_code == 200
        assert (tmp_path / "data").is_dir(), "the default data directory ./data was not created"
    finally:
        proc.terminate()
        proc.wait(15)
