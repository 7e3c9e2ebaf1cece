"""The browser editor, tested in a real browser (Debian's Chromium driven by
Playwright) against the real server in a child process.

Skipped only when /usr/bin/chromium (or Playwright) is missing.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import threading
import time
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

CHROMIUM = os.environ.get("COLLAB_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

if not Path(CHROMIUM).exists():
    pytest.skip(f"{CHROMIUM} is missing: the browser tests need Debian's chromium", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="python playwright is not installed")

from conftest import ServerProcess  # noqa: E402  (tests/ is on sys.path)

ROOT = Path(__file__).resolve().parent.parent
SECRET = "browser-test-secret-" + "x" * 32


# --------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    if not (ROOT / "frontend" / "dist" / "editor.js").exists():
        pytest.fail("frontend/dist is not built: run frontend/build.sh")
    s = ServerProcess(str(tmp_path_factory.mktemp("browser-data"))).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def short_history_srv(tmp_path_factory):
    """A server that keeps only 2 operations of history (to force snapshots on resume)."""
    s = ServerProcess(str(tmp_path_factory.mktemp("short-history")), env={"COLLAB_HISTORY_DEPTH": "2"}).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


class Pages:
    """Opens pages, each in its own context (its own localStorage = its own user)."""

    def __init__(self, browser):
        self.browser = browser
        self.contexts = []
        self.errors: list[str] = []

    def open(self, url: str, name: str | None = None, color: str = "#1971c2", viewport=None, wait=True):
        ctx = self.browser.new_context(viewport=viewport or {"width": 1000, "height": 700})
        if name is not None:
            user = json.dumps({"name": name, "color": color})
            ctx.add_init_script(f"localStorage.setItem('collab.user', {json.dumps(user)});")
        self.contexts.append(ctx)
        page = ctx.new_page()
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        page.on("console", lambda m: self.errors.append(f"console: {m.text}") if m.type == "error" else None)
        page.goto(url)
        if wait:
            wait_connected(page)
        return page

    def close(self):
        for c in self.contexts:
            c.close()


@pytest.fixture
def pages(browser):
    p = Pages(browser)
    yield p
    p.close()


def new_doc() -> str:
    return "t-" + secrets.token_hex(5)


def wait_connected(page, timeout=10_000):
    page.wait_for_selector("#conn-status[data-state=connected]", timeout=timeout)


def text_of(page) -> str:
    return page.evaluate("collab.view.state.doc.toString()")


def server_text(srv, doc: str) -> str:
    r = httpx.get(f"{srv.base_url}/api/docs/{doc}/text", timeout=5)
    r.raise_for_status()
    return r.text


def wait_converged(srv, doc: str, pages_, timeout=15.0) -> str:
    """Every page connected, everything acknowledged, all texts equal the server's."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        states = [p.evaluate("[collab.client.saved, collab.session.status, collab.view.state.doc.toString()]") for p in pages_]
        texts = {s[2] for s in states}
        if all(s[0] and s[1] == "connected" for s in states) and len(texts) == 1:
            st = server_text(srv, doc)
            if texts == {st}:
                return st
        last = (states, server_text(srv, doc))
        time.sleep(0.05)
    raise AssertionError(f"pages did not converge: {last!r}")


def focus_at(page, where: str):
    """Put the caret at the document start or end."""
    page.click(".cm-content")
    page.keyboard.press("Control+Home" if where == "start" else "Control+End")


class Proxy:
    """A TCP proxy that the test can cut (closing every connection and
    refusing new ones) and restore: a real network failure, which
    context.set_offline() alone does not cause for an open WebSocket."""

    def __init__(self, target_port: int):
        self.target = target_port
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.up = True
        self.drop_up = False  # swallow browser -> server bytes (an op lost on the way)
        self.drop_down = False  # swallow server -> browser bytes (an ack lost on the way)
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self):
        while not self.stopped:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            if not self.up:
                c.close()
                continue
            try:
                u = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                c.close()
                continue
            with self.lock:
                self.conns += [c, u]
            threading.Thread(target=self._pipe, args=(c, u, "drop_up"), daemon=True).start()
            threading.Thread(target=self._pipe, args=(u, c, "drop_down"), daemon=True).start()

    def _pipe(self, a, b, drop_flag):
        try:
            while True:
                data = a.recv(65536)
                if not data:
                    break
                if not getattr(self, drop_flag):
                    b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self):
        self.up = False
        with self.lock:
            conns, self.conns = self.conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass

    def restore(self):
        self.drop_up = self.drop_down = False
        self.up = True

    def close(self):
        self.stopped = True
        self.cut()
        self.sock.close()


# --------------------------------------------------------------------------
# tests


def test_home_lists_documents_creates_and_opens(srv, pages):
    doc = new_doc()
    httpx.put(f"{srv.base_url}/api/docs/{doc}/text", content="hello".encode(), timeout=5).raise_for_status()
    home = pages.open(srv.base_url + "/", wait=False)
    home.wait_for_selector(f"#doc-rows a:text-is('{doc}')")
    assert home.title().startswith("collab")
    # A new document gets a fresh random name.
    home.click("#new-doc")
    home.wait_for_url("**/d/*")
    wait_connected(home)
    name = home.url.rsplit("/", 1)[1]
    assert name and name != doc
    assert home.title() == f"{name} · collab"
    # Open one by name.
    home.goto(srv.base_url + "/")
    home.fill("#open-name", doc)
    home.press("#open-name", "Enter")
    home.wait_for_url(f"**/d/{doc}")
    wait_connected(home)
    assert text_of(home) == "hello"
    assert home.inner_text("#char-count").startswith("5 characters")


def test_two_pages_type_concurrently_and_converge(srv, pages):
    doc = new_doc()
    a = pages.open(f"{srv.base_url}/d/{doc}", name="Alice")
    b = pages.open(f"{srv.base_url}/d/{doc}", name="Bob", color="#2f9e44")
    focus_at(a, "start")
    focus_at(b, "start")
    # Same spot, at the same time, emoji included; no waiting in between,
    # so the operations cross on the wire.
    for i in range(6):
        a.keyboard.type(f"a{i}😀")
        b.keyboard.type(f"b{i}🎉")
        if i == 3:
            a.keyboard.press("Backspace")
            b.keyboard.press("Control+End")
    final = wait_converged(srv, doc, [a, b])
    for i in range(6):
        assert f"b{i}" in final
    assert final.count("🎉") == 6
    assert final.count("😀") == 5  # one removed by Backspace (a whole emoji, never half)
    assert a.inner_text("#save-status") == "All changes saved"
    assert not pages.errors, pages.errors


def test_presence_caret_and_name(srv, pages):
    doc = new_doc()
    a = pages.open(f"{srv.base_url}/d/{doc}", name="Alice Presence", color="#e03131")
    b = pages.open(f"{srv.base_url}/d/{doc}", name="Bob")
    focus_at(a, "start")
    a.keyboard.type("line one\nline two")
    wait_converged(srv, doc, [a, b])
    label = b.locator(".cm-remote-label", has_text="Alice Presence")
    label.wait_for(timeout=5000)
    # The caret sits where Alice's caret is: end of line two.
    assert b.locator(".cm-line", has_text="line two").locator(".cm-remote-caret").count() == 1
    # Both are listed as here.
    assert "Alice Presence" in (b.get_attribute("#people", "title") or "")
    # Bob adds a line above: Alice's caret moves with the text, still at the
    # end of "line two" (now the third line).
    focus_at(b, "start")
    b.keyboard.type("Bob's line\n")
    wait_converged(srv, doc, [a, b])
    assert b.locator(".cm-line", has_text="line two").locator(".cm-remote-caret").count() == 1
    assert b.evaluate("collab.view.state.doc.lineAt([...document.querySelectorAll('.cm-remote-caret')].length && "
                      "collab.view.posAtDOM(document.querySelector('.cm-remote-caret'))).number") == 3
    # Alice moves to the start: Bob sees her caret move there.
    a.keyboard.press("Control+Home")
    b.wait_for_function(
        "() => { const c = document.querySelector('.cm-remote-caret');"
        " return c && collab.view.posAtDOM(c) === 0; }",
        timeout=5000,
    )
    # And Alice sees Bob, with his name.
    a.locator(".cm-remote-label", has_text="Bob").wait_for(timeout=5000)


def test_no_layout_jump_when_remote_edits_arrive_above(srv, pages):
    doc = new_doc()
    body = "".join(f"line {i}\n" for i in range(200))
    httpx.put(f"{srv.base_url}/api/docs/{doc}/text", content=body.encode(), timeout=5).raise_for_status()
    a = pages.open(f"{srv.base_url}/d/{doc}", name="Alice")
    b = pages.open(f"{srv.base_url}/d/{doc}", name="Bob")
    # Bob works around line 100, in the middle of his screen.
    b.evaluate("""() => { const v = collab.view, pos = v.state.doc.line(101).from + 4;
        v.dispatch({selection: {anchor: pos}, scrollIntoView: true}); v.focus(); }""")
    b.wait_for_timeout(200)
    caret_y = "() => collab.view.coordsAtPos(collab.view.state.selection.main.head).top"
    before = b.evaluate(caret_y)
    # Alice adds lines far above (off Bob's screen), then just above his caret.
    for where in (0, 98):
        a.evaluate(f"""() => {{ const v = collab.view, pos = v.state.doc.line({where} + 1).from;
            v.dispatch({{changes: {{from: pos, insert: 'new 1\\nnew 2\\nnew 3\\n'}}}}); }}""")
        wait_converged(srv, doc, [a, b])
        b.wait_for_timeout(100)
        assert abs(b.evaluate(caret_y) - before) <= 2, f"Bob's line jumped after an insert at line {where}"
    assert b.evaluate("collab.view.state.doc.lineAt(collab.view.state.selection.main.head).text") == "line 100"


def test_xss_name_is_rendered_as_text(srv, pages):
    doc = new_doc()
    payload = '<img src=x onerror="window.__xss=1">'
    a = pages.open(f"{srv.base_url}/d/{doc}", name=payload)
    b = pages.open(f"{srv.base_url}/d/{doc}", name="Bob")
    focus_at(a, "start")
    a.keyboard.type("hi")
    label = b.locator(".cm-remote-label")
    label.wait_for(timeout=5000)
    assert label.inner_text() == payload
    assert b.locator("[onerror], img[src=x]").count() == 0
    assert b.evaluate("window.__xss") is None
    assert payload in (b.get_attribute("#people", "title") or "")


def test_offline_page_keeps_typing_and_converges(srv, pages):
    doc = new_doc()
    proxy = Proxy(srv.port)
    try:
        a = pages.open(f"{proxy.base_url}/d/{doc}", name="Alice")
        b = pages.open(f"{srv.base_url}/d/{doc}", name="Bob")
        focus_at(a, "start")
        a.keyboard.type("shared ")
        wait_converged(srv, doc, [a, b])
        # The network goes away for real: connections cut, none accepted.
        a.context.set_offline(True)
        proxy.cut()
        a.wait_for_function(
            "() => ['offline', 'reconnecting'].includes(document.querySelector('#conn-status').dataset.state)",
            timeout=5000,
        )
        assert a.inner_text("#conn-status .conn-text") in ("Offline", "Reconnecting…")
        a.keyboard.press("Control+End")
        a.keyboard.type("offline 😀 typing")
        assert a.inner_text("#save-status").startswith("Unsaved changes")
        assert a.evaluate("collab.client.saved") is False
        focus_at(b, "start")
        b.keyboard.type("[bob] ")
        time.sleep(0.3)
        assert "offline" not in server_text(srv, doc)
        # Back online: the page resends and converges.
        proxy.restore()
        a.context.set_offline(False)
        final = wait_converged(srv, doc, [a, b], timeout=20)
        assert final == "[bob] shared offline 😀 typing"
        assert a.evaluate("collab.client.stats.welcomeOps") >= 1  # resumed with `since`, no snapshot
        assert a.inner_text("#conn-status .conn-text") == "Connected"
    finally:
        proxy.close()


@pytest.mark.parametrize("lost", ["op", "ack"])
def test_long_absence_rebases_local_edits_on_the_snapshot(short_history_srv, pages, lost):
    """Away longer than the kept history: the server answers the resume with
    a snapshot; the page resends its in-flight op (same id, same rev), learns
    from ack/stale_rev whether it had been applied, and rebases the rest."""
    s = short_history_srv
    proxy = Proxy(s.port)
    try:
        doc = new_doc()
        a = pages.open(f"{proxy.base_url}/d/{doc}", name="Alice")
        b = pages.open(f"{s.base_url}/d/{doc}", name="Bob")
        focus_at(a, "start")
        a.keyboard.type("one two three")
        wait_converged(s, doc, [a, b])
        # An op goes out and either it (lost == "op") or its ack (lost == "ack") is lost.
        setattr(proxy, f"drop_{'up' if lost == 'op' else 'down'}", True)
        a.keyboard.press("Control+End")
        a.keyboard.insert_text(" [A1]")  # one edit, one op
        time.sleep(0.4)
        assert a.evaluate("collab.client.saved") is False
        assert ("[A1]" in server_text(s, doc)) == (lost == "ack")
        a.context.set_offline(True)
        proxy.cut()
        a.wait_for_function("() => document.querySelector('#conn-status').dataset.state !== 'connected'")
        a.keyboard.press("Control+Home")
        a.keyboard.type("[A2] ")
        # Bob edits more than the history keeps.
        focus_at(b, "end")
        for i in range(4):
            b.keyboard.type(f" b{i}")
            b.wait_for_function("() => collab.client.saved")
        proxy.restore()
        a.context.set_offline(False)
        final = wait_converged(s, doc, [a, b], timeout=20)
        stats = a.evaluate("collab.client.stats")
        assert stats["welcomeText"] == 2, stats  # the first join, and the resume after the absence
        assert stats["resendApplied" if lost == "ack" else "resendNotApplied"] == 1, stats
        assert final.count("[A1]") == 1 and final.count("[A2]") == 1, final
        assert final.startswith("[A2] one two three")
        for i in range(4):
            assert f" b{i}" in final
    finally:
        proxy.close()


def test_reload_shows_saved_text(srv, pages):
    doc = new_doc()
    a = pages.open(f"{srv.base_url}/d/{doc}", name="Alice")
    focus_at(a, "start")
    a.keyboard.type("# Title\n\nsaved 🎉 text")
    wait_converged(srv, doc, [a])
    a.reload()
    wait_connected(a)
    assert text_of(a) == "# Title\n\nsaved 🎉 text"
    assert a.inner_text("#save-status") == "All changes saved"
    a.wait_for_function("() => document.title === 'Title · collab'")  # the first heading is its title
    assert a.inner_text("#char-count").startswith("21 characters")  # code points: the emoji is one
    # Download as Markdown: the exact text, named after the document.
    a.click("#download-btn")
    with a.expect_download() as dl:
        a.click("#download-md")
    assert dl.value.suggested_filename == f"{doc}.md"
    assert Path(dl.value.path()).read_text(encoding="utf-8") == "# Title\n\nsaved 🎉 text"
    # Copy link: the page's own URL.
    a.context.grant_permissions(["clipboard-read", "clipboard-write"])
    a.click("#copy-link")
    a.wait_for_selector("#toast:not([hidden])")
    assert a.evaluate("navigator.clipboard.readText()") == f"{srv.base_url}/d/{doc}"


def test_undo_only_undoes_own_edits(srv, pages):
    doc = new_doc()
    a = pages.open(f"{srv.base_url}/d/{doc}", name="Alice")
    b = pages.open(f"{srv.base_url}/d/{doc}", name="Bob")
    focus_at(a, "start")
    a.keyboard.type("alice")
    wait_converged(srv, doc, [a, b])
    focus_at(b, "end")
    b.keyboard.type(" bob")
    wait_converged(srv, doc, [a, b])
    focus_at(a, "start")
    a.keyboard.type(">")
    wait_converged(srv, doc, [a, b])
    assert text_of(a) == ">alice bob"
    # Alice undoes twice: her ">" and her "alice" go, Bob's text stays.
    a.keyboard.press("Control+z")
    wait_converged(srv, doc, [a, b])
    assert text_of(a) == "alice bob"
    a.keyboard.press("Control+z")
    final = wait_converged(srv, doc, [a, b])
    assert final == " bob"
    # Nothing of Alice's is left to undo: Bob's edit is not hers to undo.
    a.keyboard.press("Control+z")
    time.sleep(0.2)
    assert wait_converged(srv, doc, [a, b]) == " bob"
    # Redo brings hers back, transformed through Bob's edit.
    a.keyboard.press("Control+Shift+z")
    assert wait_converged(srv, doc, [a, b]) == "alice bob"


def test_read_only_role_and_token_passing(tmp_path, pages):
    from collab.auth import mint_token

    s = ServerProcess(str(tmp_path / "data"), env={"COLLAB_SECRET": SECRET}).start()
    try:
        doc = new_doc()
        edit = mint_token(SECRET, [doc], "edit")
        read = mint_token(SECRET, [doc], "read")
        w = pages.open(f"{s.base_url}/d/{doc}?token={quote(edit)}", name="Writer")
        focus_at(w, "start")
        w.keyboard.type("only the writer")
        r = pages.open(f"{s.base_url}/d/{doc}?token={quote(read)}", name="Reader")
        r.wait_for_function("() => collab.view.state.doc.toString() === 'only the writer'", timeout=5000)
        assert r.is_visible("#readonly-badge")
        assert r.get_attribute(".cm-content", "contenteditable") == "false"
        r.click("#mode-edit")  # a read-only link opens in view mode (issue 24); the editor refuses typing
        focus_at(r, "end")
        r.keyboard.type("nope")
        time.sleep(0.3)
        assert text_of(r) == "only the writer"
        assert not w.is_visible("#readonly-badge")
        # Share links carry the token in the fragment (#token=): that works too.
        f = pages.open(f"{s.base_url}/d/{doc}#token={quote(read)}", name="Fragment")
        assert text_of(f) == "only the writer" and f.is_visible("#readonly-badge")
        # Without a token the page is refused, visibly.
        n = pages.open(f"{s.base_url}/d/{doc}", name="Nobody", wait=False)
        n.wait_for_selector("#conn-status[data-state=closed]", timeout=10_000)
        assert n.is_visible("#banner")
    finally:
        s.stop()


def test_phone_width(srv, pages, browser):
    doc = new_doc()
    ctx = browser.new_context(viewport={"width": 375, "height": 740}, is_mobile=True, has_touch=True)
    pages.contexts.append(ctx)
    page = ctx.new_page()
    page.goto(f"{srv.base_url}/d/{doc}")
    wait_connected(page)
    page.tap(".cm-content")
    page.keyboard.type("typed on a phone")
    wait_converged(srv, doc, [page])
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 375, f"horizontal overflow on a phone: {width}px"
    box = page.locator(".cm-editor").bounding_box()
    assert box and box["width"] >= 300 and box["height"] >= 300
    for sel in ("#copy-link", "#download-btn", "#conn-status", "#save-status", "#people", "#me"):
        assert page.is_visible(sel), sel


CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "connect-src 'self' ws: wss:; img-src 'self' data:"
)


def test_pages_work_under_script_src_self(srv, pages, browser):
    """No inline script or handler anywhere: the pages run under a CSP with
    script-src 'self' (CodeMirror's injected styles need style-src 'unsafe-inline')."""
    dist = ROOT / "frontend" / "dist"
    for name in ("index.html", "editor.html"):
        html = (dist / name).read_text()
        assert "<script>" not in html
        assert not re.search(r"<script(?![^>]*\bsrc=)", html), f"inline script in {name}"
        assert not re.search(r"\son[a-z]+\s*=", html), f"inline event handler in {name}"
    doc = new_doc()
    ctx = browser.new_context()
    pages.contexts.append(ctx)
    page = ctx.new_page()
    violations: list[str] = []
    page.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
    served = httpx.get(f"{srv.base_url}/d/{doc}", timeout=5).headers.get("content-security-policy", "")
    if "script-src 'self'" not in served:
        # The server does not send a CSP (yet): add one. A fulfilled response
        # loses its local address space, so Chromium's local-network checks
        # then block the WebSocket; only the page's own behaviour is checked.
        def with_csp(route):
            resp = route.fetch()
            route.fulfill(response=resp, headers={**resp.headers, "content-security-policy": CSP})

        page.route("**/d/**", with_csp)
        page.route("**/", with_csp)
    page.goto(f"{srv.base_url}/d/{doc}")
    page.wait_for_selector(".cm-editor .cm-content")
    page.wait_for_function("() => document.querySelector('#title-btn').textContent.length > 0")
    if "script-src 'self'" in served:
        wait_connected(page)
    page.goto(f"{srv.base_url}/")
    page.wait_for_function("() => document.querySelector('#docs-status').textContent !== 'Loading…'")
    assert not violations, violations
