"""Tests of the ``collab`` command line: parsing, and cat/put/tail/serve against real servers."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

import collab
from collab import auth
from collab.cli import build_parser, describe, main, parse_ttl, serve_settings

ROOT = Path(__file__).resolve().parent.parent
SECRET = "s" * 40


def env(**extra: str) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("COLLAB_")}
    e.update(extra)
    return e


async def run_cli(*args: str, stdin: bytes | None = None, timeout: float = 30, **extra_env: str):
    """Run ``python -m collab ARGS`` (so the server in this event loop keeps serving)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "collab", *args, cwd=str(ROOT), env=env(**extra_env),
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    return proc.returncode, out.decode(), err.decode()


# ---------------------------------------------------------------------------
# Parsing


@pytest.mark.parametrize("text,seconds", [
    ("30m", 1800), ("12h", 43200), ("7d", 604800), ("3600", 3600), ("90s", 90), ("2w", 1209600), ("never", None),
])
def test_parse_ttl(text, seconds):
    assert parse_ttl(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "5q", "-1h", "0"])
def test_parse_ttl_rejects(text):
    with pytest.raises(argparse.ArgumentTypeError, match="30m|zero"):
        parse_ttl(text)


def test_serve_flags_override_environment():
    args = build_parser().parse_args([
        "serve", "--port", "8123", "--allowed-origins", "https://a.example, https://b.example",
        "--trusted-proxies", "10.0.0.0/8", "--msg-rate", "7.5", "--workers", "2", "--log-level", "debug",
    ])
    s = serve_settings(args, {"COLLAB_PORT": "9000", "COLLAB_HOST": "0.0.0.0", "COLLAB_CONN_BURST": "3"})
    assert s.port == 8123  # flag beats env
    assert s.host == "0.0.0.0" and s.conn_burst == 3  # env kept where no flag
    assert s.allowed_origins == ["https://a.example", "https://b.example"]
    assert s.trusted_proxies == ["10.0.0.0/8"]
    assert (s.msg_rate, s.workers, s.log_level) == (7.5, 2, "debug")
    assert s.history_depth == 1000  # default


def test_every_serve_flag_maps_to_a_setting():
    from collab.cli import SERVE_FLAGS
    from collab.config import Settings

    fields = set(Settings.__dataclass_fields__)
    for flag, dest, *_ in SERVE_FLAGS:
        assert dest in fields, flag
    flags = {f for f, *_ in SERVE_FLAGS}
    for needed in ["--host", "--port", "--data-dir", "--database-url", "--redis-url", "--workers", "--secret",
                   "--allowed-origins", "--history-depth", "--max-message-bytes", "--conn-rate", "--conn-burst",
                   "--conn-per-ip", "--max-connections", "--handshake-timeout", "--msg-rate", "--msg-burst",
                   "--bytes-rate", "--bytes-burst", "--trusted-proxies", "--log-level"]:
        assert needed in flags


def test_sqlite_sync_from_flag_and_environment():
    parse = build_parser().parse_args
    assert serve_settings(parse(["serve"]), {}).sqlite_sync == "full"
    assert serve_settings(parse(["serve"]), {"COLLAB_SQLITE_SYNC": "NORMAL"}).sqlite_sync == "normal"
    assert serve_settings(parse(["serve", "--sqlite-sync", "full"]), {"COLLAB_SQLITE_SYNC": "normal"}).sqlite_sync == "full"
    with pytest.raises(SystemExit, match="COLLAB_SQLITE_SYNC='off' is not one of full, normal"):
        serve_settings(parse(["serve"]), {"COLLAB_SQLITE_SYNC": "off"})


@pytest.mark.parametrize("argv", [["serve", "--port", "x"], ["serve", "--workers", "0"], ["serve", "--sqlite-sync", "off"],
                                  ["cat", "http://h"],
                                  ["token", "--role", "read"], ["token", "--doc", "a", "--role", "admin"]])
def test_bad_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert "error" in capsys.readouterr().err


def test_help_exits_0_and_has_examples(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in ["serve", "cat", "put", "tail", "token", "examples:"]:
        assert cmd in out
    for cmd in ["serve", "cat", "put", "tail", "token"]:
        with pytest.raises(SystemExit) as e:
            main([cmd, "--help"])
        assert e.value.code == 0
    assert "COLLAB_SECRET" in capsys.readouterr().out


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_python_dash_m_collab_help():
    r = subprocess.run([sys.executable, "-m", "collab", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "collab serve" in r.stdout


# ---------------------------------------------------------------------------
# token


def test_token_without_secret_says_what_to_set(capsys, monkeypatch):
    monkeypatch.delenv("COLLAB_SECRET", raising=False)
    assert main(["token", "--doc", "notes"]) == 1
    assert "COLLAB_SECRET" in capsys.readouterr().err


def test_token_is_minted_from_collab_secret(capsys, monkeypatch):
    monkeypatch.setenv("COLLAB_SECRET", SECRET)
    assert main(["token", "--doc", "team-*", "--role", "read", "--ttl", "7d", "--name", "Wall"]) == 0
    captured = capsys.readouterr()
    token = captured.out.strip()
    assert "\n" not in token  # only the token on stdout, so $(collab token ...) works
    grant = auth.verify_token(SECRET, token)
    assert grant.role == "read" and grant.allows("team-x") and not grant.allows("other")
    assert "read token" in captured.err


def test_token_short_secret_is_explained(capsys, monkeypatch):
    monkeypatch.setenv("COLLAB_SECRET", "short")
    assert main(["token", "--doc", "notes"]) == 1
    assert "32" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# describe (tail's line format)


def test_describe_ops_as_splices():
    assert describe([4, "x", 3], "abcdefg") == 'insert "x" at 4'
    assert describe(["👋", 2, -3, 1], "abcdef") == 'insert "👋" at 0, delete 3 at 3 ("cde")'
    assert describe([1, "a\nb", -1], "xy") == 'insert "a\\nb" at 1, delete 1 at 4 ("y")'
    assert describe([3], "abc") == "no change"
    long = describe(["y" * 200], "")
    assert "(200 chars)" in long and len(long) < 120


# ---------------------------------------------------------------------------
# Against a real server


async def test_put_then_cat_round_trip_with_emoji(server):
    text = "line one 👋\nligne deux é\n"
    rc, out, err = await run_cli("put", server.base_url, "cli-doc", stdin=text.encode())
    assert rc == 0, err
    assert "now at rev 1" in err
    rc, out, err = await run_cli("cat", server.ws_url, "cli-doc")  # ws:// works too
    assert rc == 0, err
    assert out == text
    # Seen live by a connected client, as an ordinary operation.
    async with collab.connect(server.base_url, "cli-doc") as d:
        assert d.text == text
        rc, _, err = await run_cli("put", server.base_url, "cli-doc", stdin="short".encode())
        assert rc == 0, err
        await d.wait_for(lambda t: t == "short", timeout=5)


async def test_cat_in_process_main(server, capsys):
    async with httpx.AsyncClient() as c:
        await c.put(f"{server.base_url}/api/docs/inproc/text", content="hé".encode())
    rc = await asyncio.to_thread(main, ["cat", server.base_url, "inproc"])
    assert rc == 0
    assert capsys.readouterr().out == "hé"


async def test_put_rejects_non_utf8(server):
    rc, _, err = await run_cli("put", server.base_url, "bin", stdin=b"\xff\xfe")
    assert rc == 1 and "not UTF-8" in err


async def test_put_from_file(server, tmp_path):
    f = tmp_path / "in.txt"
    f.write_text("from file", encoding="utf-8")
    rc, _, err = await run_cli("put", server.base_url, "fromfile", "--file", str(f))
    assert rc == 0, err
    rc, out, _ = await run_cli("cat", server.base_url, "fromfile")
    assert out == "from file"


async def test_cat_invalid_name_and_unreachable(server):
    rc, _, err = await run_cli("cat", server.base_url, ".hidden")
    assert rc == 1 and "404" in err
    from conftest import free_port

    rc, _, err = await run_cli("cat", f"http://127.0.0.1:{free_port()}", "x")
    assert rc == 1 and "collab serve" in err and "Traceback" not in err


async def test_tail_prints_one_line_per_change_and_stops_on_ctrl_c(server):
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "collab", "tail", server.base_url, "tailed", cwd=str(ROOT), env=env(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        # Wait until it has joined (it reports on stderr).
        line = await asyncio.wait_for(proc.stderr.readline(), 20)
        assert b"following 'tailed'" in line
        async with collab.connect(server.base_url, "tailed", user={"name": "ada"}) as d:
            await d.insert(0, "x👋")
            await d.synced()
            await d.replace(0, 1, "")
            await d.synced()
            first = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode()
            second = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode()
        assert first == f'rev 1 client {d.client_id} (ada): insert "x👋" at 0\n'
        assert second == f'rev 2 client {d.client_id} (ada): delete 1 at 0 ("x")\n'
    finally:
        proc.send_signal(signal.SIGINT)
        rc = await asyncio.wait_for(proc.wait(), 15)
    err = (await proc.stderr.read()).decode()
    assert rc == 0 and "Traceback" not in err


async def test_serve_prints_url_and_serves(tmp_path):
    from conftest import free_port

    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "collab", "serve", "--port", str(port), "--data-dir", str(tmp_path / "d"),
        "--history-depth", "50", "--log-level", "warning",
        cwd=str(ROOT), env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        assert f"http://127.0.0.1:{port}/" in line
        async with httpx.AsyncClient() as c:
            for _ in range(200):
                try:
                    if (await c.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("collab serve did not become healthy")
        rc, out, err = await run_cli("put", f"http://127.0.0.1:{port}", "served", stdin=b"ok")
        assert rc == 0, err
    finally:
        proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(proc.wait(), 15)
    assert (tmp_path / "d").exists()


async def test_cat_put_with_token(server_factory):
    server = await server_factory(secret=SECRET)
    rc, _, err = await run_cli("cat", server.base_url, "private")
    assert rc == 1 and "401" in err and "--token" in err
    edit = auth.mint_token(SECRET, ["private"])
    read = auth.mint_token(SECRET, ["private"], role="read")
    rc, _, err = await run_cli("put", server.base_url, "private", "--token", edit, stdin=b"secret text")
    assert rc == 0, err
    rc, out, err = await run_cli("cat", server.base_url, "private", COLLAB_TOKEN=read)  # from the environment
    assert rc == 0 and out == "secret text", err
    rc, _, err = await run_cli("put", server.base_url, "private", "--token", read, stdin=b"nope")
    assert rc == 1 and "403" in err
