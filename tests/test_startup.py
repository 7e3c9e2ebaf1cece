"""Every way ``collab serve`` can fail to start is one line on stderr that says
what to do: non-zero exit, no traceback, and no "serving" banner. The banner
itself comes only once the server answers. Each case runs the real command in
a subprocess.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from collab.config import Settings
from conftest import free_port

CLEAN = ("PORT", "DATABASE_URL", "REDIS_URL", "WEB_CONCURRENCY", "DYNO", "RENDER", "FLY_APP_NAME",
         "RAILWAY_ENVIRONMENT", "K_SERVICE")
PG = os.environ.get("COLLAB_TEST_DATABASE_URL")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COLLAB_") and k not in CLEAN}
    env.update(extra)
    return env


def serve_fails(tmp_path: Path, *args: str, prelude: str = "", code: int = 1, **env: str) -> str:
    """Run ``collab serve ARGS`` (after ``prelude``, Python run first); return its one stderr line."""
    code_ = f"import sys\n{prelude}\nfrom collab.cli import main\nsys.exit(main(sys.argv[1:]))"
    result = subprocess.run([sys.executable, "-c", code_, "serve", *args], cwd=tmp_path,
                            env=clean_env(**env), capture_output=True, text=True, timeout=60)
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "serving" not in result.stdout, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
def busy_port():
    """A port another program is listening on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


# ---------------------------------------------------------------------------
# Port


def test_port_in_use_names_port_when_port_set_it(tmp_path, busy_port):
    line = serve_fails(tmp_path, PORT=str(busy_port), COLLAB_PORT=str(free_port()))
    assert f"127.0.0.1:{busy_port}" in line and "set PORT to a free port" in line and "COLLAB_PORT" not in line


def test_port_in_use_names_collab_port_or_the_flag(tmp_path, busy_port):
    assert "set COLLAB_PORT to a free port" in serve_fails(tmp_path, COLLAB_PORT=str(busy_port))
    line = serve_fails(tmp_path, "--port", str(busy_port), PORT="1")
    assert "set --port to a free port" in line


@pytest.mark.parametrize("value", ["abc", "70000", "-1"])
def test_bad_port_in_the_environment(tmp_path, value):
    line = serve_fails(tmp_path, PORT=value)
    assert f"PORT={value!r} is not a port number" in line and "PORT=8000" in line


def test_bad_port_flag_is_one_line_pointing_to_help(tmp_path):
    line = serve_fails(tmp_path, "--port", "x", code=2)
    assert "--port" in line and "collab serve --help" in line


# ---------------------------------------------------------------------------
# Data directory


def test_data_dir_under_a_file(tmp_path):
    (tmp_path / "a-file").write_text("not a directory")
    line = serve_fails(tmp_path, "--port", "0", "--data-dir", str(tmp_path / "a-file" / "data"))
    assert "cannot write the data directory" in line and "--data-dir / COLLAB_DATA_DIR" in line


def test_read_only_data_dir(tmp_path):
    data = tmp_path / "ro"
    data.mkdir()
    data.chmod(0o500)
    root = os.geteuid() == 0  # root writes past file modes: make the directory immutable instead
    if root and subprocess.run(["chattr", "+i", str(data)], capture_output=True).returncode != 0:
        pytest.skip("running as root where chattr +i does not work: no directory is unwritable to root")
    try:
        line = serve_fails(tmp_path, "--port", "0", "--data-dir", str(data))
    finally:
        if root:
            subprocess.run(["chattr", "-i", str(data)], check=True)
        data.chmod(0o700)
    assert f"cannot write the data directory {data} (" in line and "--data-dir / COLLAB_DATA_DIR" in line


def test_hand_over_directory_under_a_file(tmp_path):
    (tmp_path / "a-file").write_text("not a directory")
    line = serve_fails(tmp_path, "--port", "0", REDIS_URL="redis://127.0.0.1:1/0",
                       COLLAB_HANDOFF_DIR=str(tmp_path / "a-file" / "handoff"))
    assert "cannot use the hand-over directory" in line and "COLLAB_HANDOFF_DIR" in line


def test_relay_address_must_be_host_and_port_and_needs_trusted_processes(tmp_path):
    redis = {"REDIS_URL": "redis://127.0.0.1:1/0"}
    line = serve_fails(tmp_path, "--port", "0", COLLAB_RELAY_ADDRESS="10.0.0.5", COLLAB_TRUSTED_PROXIES="10.0.0.0/8",
                       **redis)
    assert "COLLAB_RELAY_ADDRESS" in line and "10.0.0.5:8000" in line, line
    line = serve_fails(tmp_path, "--port", "0", COLLAB_RELAY_ADDRESS="10.0.0.5:8000", **redis)
    assert "COLLAB_TRUSTED_PROXIES" in line and "unset COLLAB_RELAY_ADDRESS" in line, line
    line = serve_fails(tmp_path, "--port", "0", COLLAB_RELAY_ADDRESS="10.0.0.5:8000",
                       COLLAB_TRUSTED_PROXIES="10.0.0.0/8")
    assert "REDIS_URL" in line and "unset COLLAB_RELAY_ADDRESS" in line, line
    line = serve_fails(tmp_path, "--port", "0", COLLAB_RELAY_ADDRESS="auto", COLLAB_TRUSTED_PROXIES="10.0.0.0/8",
                       **redis)
    assert "COLLAB_RELAY_ADDRESS" in line and "auto:8000" in line, line


# ---------------------------------------------------------------------------
# DATABASE_URL and REDIS_URL


def test_database_url_of_another_database(tmp_path):
    line = serve_fails(tmp_path, "--port", "0", DATABASE_URL="mysql://u@localhost/db")
    assert "DATABASE_URL must start with postgres:// or postgresql://" in line


def test_at_sign_in_password_names_the_real_host(tmp_path):
    line = serve_fails(tmp_path, "--port", "0", DATABASE_URL="postgres://ann:p@ss@db.internal:5432/notes")
    assert "%40" in line and "db.internal:5432/notes" in line and "ss@db" not in line


def test_database_url_with_a_bad_port(tmp_path):
    line = serve_fails(tmp_path, "--port", "0", DATABASE_URL="postgres://ann@db.internal:54x2/notes")
    assert "DATABASE_URL has an invalid port" in line


def test_unreachable_database(tmp_path):
    port = free_port()
    line = serve_fails(tmp_path, "--port", "0", DATABASE_URL=f"postgres://ann:secret@127.0.0.1:{port}/notes")
    assert f"127.0.0.1:{port}/notes" in line and "DATABASE_URL" in line and "secret" not in line


def test_redis_url_of_another_scheme(tmp_path):
    line = serve_fails(tmp_path, "--port", "0", DATABASE_URL="postgres://ann@127.0.0.1/notes",
                       REDIS_URL="http://127.0.0.1:6379")
    assert "REDIS_URL must start with redis://" in line


@pytest.mark.skipif(not PG, reason="COLLAB_TEST_DATABASE_URL is not set: an unreachable Redis is checked after PostgreSQL")
def test_unreachable_redis(tmp_path):
    port = free_port()
    line = serve_fails(tmp_path, "--port", "0", DATABASE_URL=PG, REDIS_URL=f"redis://:pw@127.0.0.1:{port}/0")
    assert f"127.0.0.1:{port}" in line and "REDIS_URL" in line


@pytest.mark.parametrize("module,url,extra", [
    ("asyncpg", {"DATABASE_URL": "postgres://ann@127.0.0.1/notes"}, "postgres"),
    ("redis", {"DATABASE_URL": "postgres://ann@127.0.0.1/notes", "REDIS_URL": "redis://127.0.0.1:6379/0"}, "redis"),
])
def test_missing_extra_says_what_to_install(tmp_path, module, url, extra):
    # The only simulated fault here: the driver is installed in this venv, so hide it from the import system.
    line = serve_fails(tmp_path, "--port", "0", prelude=f"sys.modules[{module!r}] = None", **url)
    assert f"pip install 'collab[{extra}]'" in line


def test_several_workers_with_sqlite_name_web_concurrency(tmp_path):
    line = serve_fails(tmp_path, "--port", "0", WEB_CONCURRENCY="2", DYNO="web.1")
    assert "WEB_CONCURRENCY=2" in line and "set WEB_CONCURRENCY=1" in line and "DATABASE_URL" in line


# ---------------------------------------------------------------------------
# The banner and the storage warning


def start(tmp_path: Path, *args: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "collab", "serve", "--port", "0", *args], cwd=tmp_path, env=clean_env(**env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stop(proc: subprocess.Popen) -> str:
    proc.terminate()
    _, err = proc.communicate(timeout=20)
    return err


def banner_url(line: str) -> str:
    assert " serving http://" in line, line
    return line.split(" serving ", 1)[1].split()[0].rstrip("/")


def test_banner_only_once_the_server_answers(tmp_path):
    proc = start(tmp_path)
    try:
        line = proc.stdout.readline()
        url = banner_url(line)
        assert httpx.get(url + "/healthz", timeout=5).status_code == 200  # first try: no retry needed
        assert (tmp_path / "data").is_dir()
    finally:
        err = stop(proc)
    assert "Traceback" not in err


def test_storage_warning_on_an_ephemeral_platform(tmp_path):
    proc = start(tmp_path, "--log-level", "warning", RENDER="true")
    try:
        banner_url(proc.stdout.readline())
    finally:
        err = stop(proc)
    warning = [line for line in err.splitlines() if line.startswith("collab: WARNING")]
    assert len(warning) == 1 and "Render (RENDER is set)" in warning[0] and "DATABASE_URL" in warning[0]


def test_storage_warning_as_a_setting():
    assert Settings.from_env({}).storage_warning is None
    heroku = Settings.from_env({"DYNO": "web.1"})
    assert "Heroku" in heroku.storage_warning and "COLLAB_DATA_DIR" in heroku.storage_warning
    assert "WEB_CONCURRENCY is set" in Settings.from_env({"WEB_CONCURRENCY": "1"}).storage_warning
    assert Settings.from_env({"FLY_APP_NAME": "x", "DATABASE_URL": "postgres://h/db"}).storage_warning is None
    assert Settings.from_env({"FLY_APP_NAME": "x", "COLLAB_DATA_DIR": "/data"}).storage_warning is None  # a volume
