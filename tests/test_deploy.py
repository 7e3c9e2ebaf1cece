"""What docs/deploy.md tells a PaaS user to do works here: the Procfile's
``web`` line serves with the variables a platform sets (``PORT``,
``DATABASE_URL``, ``REDIS_URL``, Heroku's ``WEB_CONCURRENCY=2`` and
``DYNO``), and ``COLLAB_REDIS_INSECURE_TLS=1`` lets collab reach a Redis with
a self-signed certificate over TLS, as Heroku Redis has.
"""

from __future__ import annotations

import asyncio

import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from collab.config import Settings
from conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
PG = os.environ.get("COLLAB_TEST_DATABASE_URL")
REDIS = os.environ.get("COLLAB_TEST_REDIS_URL")
PLATFORM_VARS = ("PORT", "DATABASE_URL", "REDIS_URL", "WEB_CONCURRENCY", "DYNO", "RENDER", "FLY_APP_NAME",
                 "RAILWAY_ENVIRONMENT", "K_SERVICE")


def procfile_web() -> str:
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.startswith("web:"):
            return line.removeprefix("web:").strip()
    raise AssertionError("the Procfile has no web process")


@pytest.mark.skipif(not (PG and REDIS), reason="COLLAB_TEST_DATABASE_URL and COLLAB_TEST_REDIS_URL are not both set")
def test_procfile_serves_with_heroku_variables(tmp_path):
    bin_dir = os.path.dirname(sys.executable)  # the collab command installed beside this Python
    if not os.path.exists(os.path.join(bin_dir, "collab")):
        pytest.skip(f"no collab command in {bin_dir}: install the package (pip install -e .) first")
    port = free_port()
    sep = "&" if "?" in PG else "?"
    env = {k: v for k, v in os.environ.items() if not k.startswith("COLLAB_") and k not in PLATFORM_VARS}
    env.update(PATH=bin_dir + os.pathsep + env.get("PATH", ""), PORT=str(port), DATABASE_URL=f"{PG}{sep}schema=collab_deploy_test", WEB_CONCURRENCY="2",
               REDIS_URL=f"{REDIS.split('?')[0]}?prefix=collab-deploy-test", DYNO="web.1", COLLAB_LOG_LEVEL="warning")
    proc = subprocess.Popen(["bash", "-c", procfile_web()], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        line = proc.stdout.readline()
        assert f"serving http://localhost:{port}/" in line, (line, proc.stderr.read() if proc.poll() is not None else "")
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(base + "/healthz", timeout=10).status_code == 200
        text = "deployed 🚀"
        assert httpx.put(base + "/api/docs/deploy-check/text", content=text.encode(), timeout=10).status_code == 200
        for _ in range(20):  # new connections land on either worker: both read the text from PostgreSQL
            assert httpx.get(base + "/api/docs/deploy-check", timeout=10).json()["text"] == text
    finally:
        os.killpg(proc.pid, 15)
        _, err = proc.communicate(timeout=30)
    assert "Traceback" not in err and "WARNING" not in err, err  # PostgreSQL: no storage warning


def _tls_redis(tmp_path: Path) -> tuple[subprocess.Popen, int]:
    server, openssl = shutil.which("redis-server"), shutil.which("openssl")
    if server is None or openssl is None:
        pytest.skip("redis-server and openssl are needed to run a Redis with TLS")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=redis.example"], check=True, capture_output=True)
    port = free_port()
    proc = subprocess.Popen([server, "--port", "0", "--tls-port", str(port), "--tls-cert-file", str(cert),
                             "--tls-key-file", str(key), "--tls-auth-clients", "no", "--save", "", "--appendonly", "no",
                             "--bind", "127.0.0.1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:  # its log says when it listens (or why not)
        if "Ready to accept connections" in line:
            return proc, port
        if "tls" in line.lower() and ("not supported" in line.lower() or "unrecognized" in line.lower()):
            break
    proc.kill()
    proc.wait()
    pytest.skip("this redis-server was built without TLS")


async def test_self_signed_redis_over_tls_needs_insecure_tls(tmp_path):
    from collab.backplane.redis import RedisBackplane

    proc, port = _tls_redis(tmp_path)
    try:
        url = f"rediss://127.0.0.1:{port}/0"
        strict = RedisBackplane(Settings.from_env({"REDIS_URL": url}).redis_url)
        with pytest.raises(SystemExit, match="certificate verify failed"):
            await strict.open()
        if strict.redis is not None:
            await strict.redis.aclose()
        lenient = RedisBackplane(Settings.from_env({"REDIS_URL": url, "COLLAB_REDIS_INSECURE_TLS": "1"}).redis_url)
        await lenient.open()
        assert await lenient.redis.ping()
        # The bus's own connections go over TLS too: the subscription is confirmed, a record written.
        await asyncio.wait_for(lenient.start(lambda doc, msg: None, lambda: None), 30)
        lenient.set_peer("tls", "c1", {"user": {"name": "Zoë 🔐"}})

        async def recorded() -> dict:
            while not (peers := await lenient.peers("tls")):
                await asyncio.sleep(0.02)
            return peers

        assert (await asyncio.wait_for(recorded(), 30))["c1"]["user"] == {"name": "Zoë 🔐"}
        await lenient.close()
    finally:
        proc.kill()
        proc.wait()


def test_insecure_tls_only_touches_rediss_urls():
    env = {"COLLAB_REDIS_INSECURE_TLS": "1"}
    assert Settings.from_env({**env, "REDIS_URL": "redis://h:6379/0"}).redis_url == "redis://h:6379/0"
    tls = Settings.from_env({**env, "REDIS_URL": "rediss://:pw@h:6380/0?prefix=a"}).redis_url
    assert tls == "rediss://:pw@h:6380/0?prefix=a&ssl_cert_reqs=none&ssl_check_hostname=false"
    assert Settings.from_env({"REDIS_URL": "rediss://h:6380"}).redis_url == "rediss://h:6380"
