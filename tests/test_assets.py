"""The editor's files over real HTTP: gzip when the client accepts it, ETags and
304s, a year's caching only for URLs that carry the content's hash, the same
strict security headers as every other answer, and nothing outside the folder.
"""

from __future__ import annotations

import gzip
import hashlib
import re
import shutil
from pathlib import Path

import httpx
import pytest

from collab.assets import IMMUTABLE, REVALIDATE, accepts_gzip, etag_matches
from collab.auth import SECURITY_HEADERS

DIST = Path(__file__).resolve().parent.parent / "frontend" / "dist"
CSP = SECURITY_HEADERS["Content-Security-Policy"]

pytestmark = pytest.mark.skipif(not (DIST / "editor.html").is_file(), reason="frontend/dist is not built")


def referenced(page: str) -> list[tuple[str, str]]:
    """``(name, v)`` of every ``/static/`` URL a built page loads."""
    return re.findall(r"/static/([\w.-]+)\?v=([0-9a-f]+)", (DIST / page).read_text())


async def raw_get(client: httpx.AsyncClient, url: str, **headers: str) -> tuple[httpx.Response, bytes]:
    """The answer and its body as sent on the wire (not decoded)."""
    async with client.stream("GET", url, headers=headers) as r:
        return r, b"".join([chunk async for chunk in r.aiter_raw()])


async def test_pages_and_bundles_are_gzipped_hashed_and_immutable(server):
    names = referenced("editor.html") + referenced("index.html")
    assert {n for n, _ in names} >= {"editor.js", "home.js", "style.css"}
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as c:
        for name, v in names:
            on_disk = (DIST / name).read_bytes()
            assert v == hashlib.sha256(on_disk).hexdigest()[:12], f"{name}: the page's ?v= is not the file's hash"
            r, wire = await raw_get(c, f"/static/{name}?v={v}", **{"Accept-Encoding": "gzip, deflate, br"})
            assert r.status_code == 200, name
            assert r.headers["content-security-policy"] == CSP
            assert r.headers["cache-control"] == IMMUTABLE
            assert r.headers["vary"] == "Accept-Encoding"
            assert r.headers["content-encoding"] == "gzip"
            assert gzip.decompress(wire) == on_disk
            assert int(r.headers["content-length"]) == len(wire)
            if len(on_disk) > 10_000:
                assert len(wire) < len(on_disk) / 2, name
            # The same URL without gzip: the file as it is.
            r, wire = await raw_get(c, f"/static/{name}?v={v}", **{"Accept-Encoding": "identity"})
            assert "content-encoding" not in r.headers and wire == on_disk
            assert r.headers["content-type"].startswith(("text/javascript", "text/css", "image/svg+xml"))
        # The editor page itself (a document named with an emoji is refused, a plain one served).
        r, wire = await raw_get(c, "/d/notes-2026", **{"Accept-Encoding": "gzip"})
        assert r.status_code == 200 and r.headers["content-encoding"] == "gzip"
        assert gzip.decompress(wire) == (DIST / "editor.html").read_bytes()
        assert r.headers["cache-control"] == REVALIDATE and r.headers["content-security-policy"] == CSP
        assert (await c.get("/d/notes-👋🏽")).status_code == 404


async def test_gzip_only_when_accepted(server):
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as c:
        on_disk = (DIST / "editor.js").read_bytes()
        for header in ("gzip;q=0", "br", "identity, *;q=0", ""):
            r, wire = await raw_get(c, "/static/editor.js", **{"Accept-Encoding": header})
            assert "content-encoding" not in r.headers, header
            assert wire == on_disk, header
        for header in ("GZIP", "br;q=1, gzip;q=0.5", "*"):
            r, wire = await raw_get(c, "/static/editor.js", **{"Accept-Encoding": header})
            assert r.headers.get("content-encoding") == "gzip", header
            assert gzip.decompress(wire) == on_disk


async def test_etag_revalidation_answers_304_without_a_body(server):
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as c:
        for url in ("/static/editor.js", "/static/style.css", "/d/notes", "/"):
            for enc in ("gzip", "identity"):
                first = await c.get(url, headers={"Accept-Encoding": enc})
                etag = first.headers["etag"]
                again = await c.get(url, headers={"Accept-Encoding": enc, "If-None-Match": f'"other", {etag}'})
                assert again.status_code == 304, (url, enc)
                assert again.content == b""
                assert again.headers["etag"] == etag
                assert again.headers["content-security-policy"] == CSP
                changed = await c.get(url, headers={"Accept-Encoding": enc, "If-None-Match": '"not-this-one"'})
                assert changed.status_code == 200 and changed.content == first.content
            head = await c.head(url, headers={"Accept-Encoding": "gzip"})
            assert head.status_code == 200 and head.content == b"" and head.headers["etag"].endswith('-gz"')


async def test_only_hashed_urls_are_cached_for_a_year(server):
    chunks = [p.name for p in DIST.glob("*-*.js")]
    assert chunks, "the build makes content-named chunks (preview-<hash>.js)"
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as c:
        for name in chunks:
            r = await c.get(f"/static/{name}")
            assert r.status_code == 200 and r.headers["cache-control"] == IMMUTABLE, name
        for url in ("/static/editor.js", "/static/editor.js?v=0123456789ab", "/static/favicon.svg", "/"):
            r = await c.get(url)
            assert r.status_code == 200 and r.headers["cache-control"] == REVALIDATE, url


async def test_nothing_outside_the_folder(server):
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as c:
        for path in ("/static/%2e%2e/%2e%2e/pyproject.toml", "/static/..%2F..%2Fpyproject.toml", "/static/.gitignore",
                     "/static/sub/editor.js", "/static/missing-👋🏽.js", "/static/"):
            r = await c.get(path)
            assert r.status_code == 404, path
            assert r.headers["content-security-policy"] == CSP
        r = await c.post("/static/editor.js")
        assert r.status_code == 405


async def test_a_rebuilt_file_is_served_afresh(server_factory, tmp_path, monkeypatch):
    static = tmp_path / "dist"
    shutil.copytree(DIST, static)
    monkeypatch.setenv("COLLAB_STATIC_DIR", str(static))
    server = await server_factory()
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as c:
        before = await c.get("/static/style.css")
        (static / "style.css").write_text(before.text + "\n/* 👋🏽 rebuilt */\n", encoding="utf-8")
        after = await c.get("/static/style.css", headers={"If-None-Match": before.headers["etag"]})
        assert after.status_code == 200
        assert after.text.endswith("/* 👋🏽 rebuilt */\n")
        assert after.headers["etag"] != before.headers["etag"]


def test_accept_encoding_and_if_none_match_parsing():
    assert accepts_gzip("gzip") and accepts_gzip("deflate, gzip;q=0.1") and accepts_gzip("*;q=0.5")
    assert not accepts_gzip(None) and not accepts_gzip("gzip;q=0") and not accepts_gzip("gzip;q=x")
    assert not accepts_gzip("*;q=0, br") and not accepts_gzip("gzip;q=0, *")
    assert etag_matches('W/"abc"', ('"abc"',)) and etag_matches("*", ('"abc"',))
    assert not etag_matches('"abcd"', ('"abc"',)) and not etag_matches(None, ('"abc"',))
