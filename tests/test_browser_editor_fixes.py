"""The smaller browser fixes of issue 24, each reproduced in Chromium against
a real server: Backspace deletes a whole emoji with its skin tone; the home
page's sizes are bytes (test_browser_docactions); at 390 px with four people the
toolbar neither overflows nor clips your own avatar; a refused page says so
instead of inviting to write, with Share and Download off; a private
server's home page that gets 401 offers no "New document"; a long outage
offers "Retry now" and reconnects by itself soon after the server is back;
dark mode follows the system and has a toggle; `?`
opens the shortcuts panel.
"""

from __future__ import annotations

import time
from urllib.parse import quote

import httpx

from test_browser import (  # noqa: F401  (browser, pages and srv are fixtures)
    SECRET,
    ServerProcess,
    browser,
    focus_at,
    new_doc,
    pages,
    srv,
    text_of,
    wait_connected,
    wait_converged,
)


def test_backspace_deletes_a_whole_emoji_sequence(srv, pages):
    doc = new_doc()
    a = pages.open(f"{srv.base_url}/d/{doc}", name="Alice")
    focus_at(a, "start")
    a.keyboard.insert_text("hi 👋🏽 👨‍👩‍👧 🇫🇷 é")
    a.keyboard.press("Backspace")  # "é" written as e + U+0301 would lose only its accent; here it is one code point
    a.keyboard.press("Backspace")  # the space
    a.keyboard.press("Backspace")  # the flag, both regional indicators
    assert text_of(a) == "hi 👋🏽 👨‍👩‍👧 "
    a.keyboard.press("Backspace")
    a.keyboard.press("Backspace")  # the family: three people and two joiners
    assert text_of(a) == "hi 👋🏽 "
    a.keyboard.press("Backspace")
    a.keyboard.press("Backspace")  # the waving hand with its skin tone, not leaving 👋
    assert text_of(a) == "hi "
    assert wait_converged(srv, doc, [a]) == "hi "
    # A combining accent is still removed on its own, as CodeMirror does.
    a.keyboard.insert_text("e\u0301")
    a.keyboard.press("Backspace")
    assert text_of(a) == "hi e"


def test_toolbar_at_390px_with_four_people(srv, pages, browser):
    doc = new_doc()
    others = [pages.open(f"{srv.base_url}/d/{doc}", name=n) for n in ("Bob Builder", "Carol Singer", "Dan Brown")]
    ctx = browser.new_context(viewport={"width": 390, "height": 800}, is_mobile=True, has_touch=True)
    ctx.add_init_script("localStorage.setItem('collab.user', JSON.stringify({name: 'Me Myself', color: '#e03131'}));")
    pages.contexts.append(ctx)
    me = ctx.new_page()
    me.goto(f"{srv.base_url}/d/{doc}")
    wait_connected(me)
    me.wait_for_function("() => collab.client.peers.size === 3")
    assert len(others) == 3
    assert me.evaluate("document.documentElement.scrollWidth") <= 390
    # Every control of the header is inside the screen and none covers another.
    boxes = {}
    for sel in ("#people", "#undo-btn", "#redo-btn", "#copy-link", "#download-btn", "#me", "#me-avatar",
                "#mode-switch", "#conn-status", "#save-status", ".brand-mark"):
        b = me.locator(sel).bounding_box()
        assert b and b["width"] > 0, sel
        assert b["x"] >= 0 and b["x"] + b["width"] <= 390, (sel, b)
        boxes[sel] = b
    row = ["#people", "#undo-btn", "#redo-btn", "#copy-link", "#download-btn", "#me"]
    for left, right in zip(row, row[1:]):
        assert boxes[left]["x"] + boxes[left]["width"] <= boxes[right]["x"] + 0.5, (left, right, boxes)
    # Your own avatar is whole: not clipped by the toolbar's overflow.
    clipped = me.evaluate("""() => { const a = document.querySelector('#me-avatar').getBoundingClientRect();
        for (let e = document.querySelector('#me-avatar').parentElement; e; e = e.parentElement) {
          const s = getComputedStyle(e); if (s.overflow === 'visible') continue;
          const r = e.getBoundingClientRect();
          if (a.left < r.left || a.right > r.right || a.top < r.top || a.bottom > r.bottom) return e.className || e.tagName; }
        return null; }""")
    assert clipped is None, clipped
    # The people list says who is here, with a "+N" for those not drawn.
    assert "4 here" in me.get_attribute("#people", "title")
    assert me.locator("#people .more").inner_text() == "+2"


def test_access_denied_page_does_not_invite_writing(tmp_path, pages):
    from collab.auth import mint_token

    s = ServerProcess(str(tmp_path / "data"), env={"COLLAB_SECRET": SECRET}).start()
    try:
        doc = new_doc()
        cases = {
            "forged": "Aa." + "b" * 20 + ".c",
            "expired": mint_token(SECRET, [doc], "edit", ttl_seconds=3600, now=time.time() - 7200),
        }
        for kind, token in cases.items():
            p = pages.open(f"{s.base_url}/d/{doc}#token={quote(token)}", name="Eve", wait=False)
            p.wait_for_selector("#conn-status[data-state=closed]", timeout=10_000)
            banner = p.inner_text("#banner")
            assert "Access denied" in banner and ("expired" in banner) == (kind == "expired"), banner
            assert "Start writing" not in p.inner_text(".cm-editor")
            assert p.is_disabled("#copy-link") and p.is_disabled("#download-btn")
            assert p.get_attribute(".cm-content", "contenteditable") == "false"
        # Without any token the page says a link is needed.
        p = pages.open(f"{s.base_url}/d/{doc}", name="Eve", wait=False)
        p.wait_for_selector("#conn-status[data-state=closed]", timeout=10_000)
        assert "needs a link" in p.inner_text("#banner")
        assert p.is_disabled("#copy-link")
    finally:
        s.stop()


def test_private_home_page_offers_no_new_document(tmp_path, pages):
    s = ServerProcess(str(tmp_path / "data"), env={"COLLAB_SECRET": SECRET}).start()
    try:
        assert httpx.get(f"{s.base_url}/api/docs", timeout=5).status_code == 401
        home = pages.open(s.base_url + "/", wait=False)
        home.wait_for_selector("#access-note:not([hidden])")
        assert "private" in home.inner_text("#access-note")
        assert not home.is_visible("#new-doc")
        assert not home.is_visible("#open-form")
        assert "HTTP 401" not in home.inner_text("body")
    finally:
        s.stop()


def test_retry_now_after_a_long_outage(tmp_path, pages):
    data = str(tmp_path / "data")
    s = ServerProcess(data).start()
    try:
        doc = new_doc()
        a = pages.open(f"{s.base_url}/d/{doc}", name="Alice")
        focus_at(a, "start")
        a.keyboard.type("before")
        wait_converged(s, doc, [a])
        # A long outage: the page's backoff grows to far beyond this test, and
        # the health probe waits as long, so only the click can bring it back.
        a.evaluate(
            "() => { const t = collab.session.timing; t.base = 600000; t.max = 600000; t.probe = 600000; }"
        )
        s.stop()
        a.wait_for_selector("#retry-now:not([hidden])", timeout=10_000)
        assert a.inner_text("#conn-status .conn-text").startswith("Reconnecting in ")
        a.keyboard.type(" offline")
        s2 = ServerProcess(data, port=s.port).start()
        try:
            a.click("#retry-now")
            wait_connected(a, timeout=10_000)
            assert wait_converged(s2, doc, [a]) == "before offline"
            assert a.is_hidden("#retry-now")
        finally:
            s2.stop()
    finally:
        s.stop()


def test_reconnects_by_itself_soon_after_a_long_outage(tmp_path, pages):
    """The backoff has grown far beyond the test's patience: only the health probe can bring the page back."""
    data = str(tmp_path / "data")
    s = ServerProcess(data).start()
    try:
        doc = new_doc()
        a = pages.open(f"{s.base_url}/d/{doc}", name="Alice")
        focus_at(a, "start")
        a.keyboard.type("before 👋🏽")
        wait_converged(s, doc, [a])
        a.evaluate("() => { collab.session.timing.base = 600000; collab.session.timing.max = 600000; }")
        s.stop()
        a.wait_for_selector("#retry-now:not([hidden])", timeout=10_000)
        a.keyboard.type(" offline")
        s2 = ServerProcess(data, port=s.port).start()
        try:
            # No click, no tab switch: the page notices the server is back.
            wait_connected(a, timeout=15_000)
            assert wait_converged(s2, doc, [a]) == "before 👋🏽 offline"
            assert a.is_hidden("#retry-now")
        finally:
            s2.stop()
    finally:
        s.stop()
    # The failed probes while the server was down are network errors, not page errors.
    assert not [e for e in pages.errors if "pageerror" in e], pages.errors


def test_dark_mode_follows_the_system_and_has_a_toggle(srv, pages, browser):
    doc = new_doc()
    bg = "() => getComputedStyle(document.body).backgroundColor"
    ctx = browser.new_context(color_scheme="dark")
    pages.contexts.append(ctx)
    page = ctx.new_page()
    page.goto(f"{srv.base_url}/d/{doc}")
    wait_connected(page)
    dark = page.evaluate(bg)
    assert page.inner_text("#theme-btn") == "Theme: auto"
    page.click("#theme-btn")  # auto -> light
    assert page.inner_text("#theme-btn") == "Theme: light"
    light = page.evaluate(bg)
    assert dark != light
    lum = lambda rgb: sum(int(x) for x in rgb[rgb.index("(") + 1:rgb.index(")")].split(",")[:3])  # noqa: E731
    assert lum(dark) < 200 < lum(light)
    page.click("#theme-btn")  # light -> dark, remembered for the next page
    assert page.evaluate(bg) == dark
    page.goto(f"{srv.base_url}/")
    page.wait_for_function("() => document.documentElement.dataset.theme === 'dark'")
    # A new browser (nothing remembered) in a light system is light.
    ctx.close()
    light_ctx = browser.new_context(color_scheme="light")
    pages.contexts.append(light_ctx)
    p2 = light_ctx.new_page()
    p2.goto(f"{srv.base_url}/d/{doc}")
    wait_connected(p2)
    assert p2.evaluate(bg) == light
    assert p2.inner_text("#theme-btn") == "Theme: auto"


def test_question_mark_opens_the_shortcuts_panel(srv, pages):
    doc = new_doc()
    a = pages.open(f"{srv.base_url}/d/{doc}", name="Alice")
    focus_at(a, "start")
    a.keyboard.type("why?")  # in the text, "?" is just a character
    assert text_of(a) == "why?"
    assert not a.is_visible("#help-dialog")
    a.click("#char-count")  # focus leaves the text
    a.keyboard.press("?")
    a.wait_for_selector("#help-dialog[open]")
    assert "Undo" in a.inner_text("#help-dialog")
    a.keyboard.press("Escape")
    a.wait_for_selector("#help-dialog:not([open])", state="attached")
    # Focus goes back to the text once the dialog's close has run: wait for it, not for a time.
    a.wait_for_selector(".cm-content:focus")
    a.keyboard.press("F1")
    a.wait_for_selector("#help-dialog[open]")
    a.click("#help-close")
    assert text_of(a) == "why?"
    assert not pages.errors, pages.errors
