"""Share links in the browser editor (issue 7, point 3): the Share menu offers
"copy edit link" / "copy read-only link" as the viewer's token allows, and on
an open server "Copy link" copies the plain page URL.

Real server (child process, with and without COLLAB_SECRET), Debian's
Chromium driven by Playwright; the launch helpers come from test_browser.
Skipped only when /usr/bin/chromium (or Playwright) is missing.
"""

from __future__ import annotations

import time
from urllib.parse import quote

import httpx
import pytest

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
)

from collab.auth import mint_token, verify_token

CLIPBOARD = ["clipboard-read", "clipboard-write"]


@pytest.fixture(scope="module")
def secure_srv(tmp_path_factory):
    s = ServerProcess(str(tmp_path_factory.mktemp("share-data")), env={"COLLAB_SECRET": SECRET}).start()
    yield s
    s.stop()


def open_page(pages, base_url: str, path: str, name: str, viewport=None, clipboard=True, wait=True):
    page = pages.open(f"{base_url}{path}", name=name, viewport=viewport, wait=wait)
    if clipboard:
        page.context.grant_permissions(CLIPBOARD, origin=base_url)
    return page


def open_share_menu(page):
    """Open the Share menu and wait for the server's answers."""
    page.click("#copy-link")
    page.wait_for_selector("#share-menu[data-state=ready]", state="visible", timeout=5000)


def clipboard(page) -> str:
    return page.evaluate("navigator.clipboard.readText()")


def copy_from_menu(page, role: str) -> str:
    page.evaluate("navigator.clipboard.writeText('')")
    page.click(f"#share-{role}")
    expected = "Read-only link copied" if role == "read" else "Edit link copied"
    page.wait_for_function(
        "t => !document.querySelector('#toast').hidden && document.querySelector('#toast').textContent === t",
        arg=expected,
        timeout=5000,
    )
    assert page.is_hidden("#share-menu"), "the menu closes once the link is copied"
    return clipboard(page)


def token_of(link: str) -> str:
    assert "#token=" in link, link
    return link.split("#token=", 1)[1]


def api_text(s, doc: str, token: str) -> str:
    r = httpx.get(f"{s.base_url}/api/docs/{doc}/text", headers={"Authorization": f"Bearer {token}"}, timeout=5)
    r.raise_for_status()
    return r.text


def test_edit_token_offers_both_links_and_the_read_link_is_read_only(secure_srv, pages):
    doc = new_doc()
    edit = mint_token(SECRET, [doc, "other-*"], "edit")
    w = open_page(pages, secure_srv.base_url, f"/d/{doc}#token={quote(edit)}", "Writer")
    focus_at(w, "start")
    w.keyboard.type("shared text")
    w.wait_for_function("() => collab.client.saved", timeout=5000)
    assert api_text(secure_srv, doc, edit) == "shared text"

    assert w.inner_text("#copy-link") == "Share"
    assert w.get_attribute("#copy-link", "aria-expanded") == "false"
    open_share_menu(w)
    assert w.get_attribute("#copy-link", "aria-expanded") == "true"
    assert w.is_visible("#share-edit") and w.is_visible("#share-read")
    assert w.inner_text("#share-edit") == "Copy edit link"
    assert w.inner_text("#share-read") == "Copy read-only link"
    assert w.is_hidden("#share-note")

    link = copy_from_menu(w, "read")
    assert link.startswith(f"{secure_srv.base_url}/d/{doc}#token="), link
    grant = verify_token(SECRET, token_of(link))
    assert grant.role == "read" and grant.docs == (doc,), "a link reaches exactly this one document"

    # Opened in another browser, the read-only link shows the badge and typing changes nothing.
    r = open_page(pages, "", link, "Reader", clipboard=False)
    r.wait_for_function("() => collab.view.state.doc.toString() === 'shared text'", timeout=5000)
    assert r.is_visible("#readonly-badge")
    r.click("#mode-edit")  # a read-only link opens in view mode (issue 24); the editor refuses typing
    focus_at(r, "end")
    r.keyboard.type("not allowed")
    time.sleep(0.4)
    assert text_of(r) == "shared text"
    assert api_text(secure_srv, doc, edit) == "shared text"

    # The edit link edits.
    open_share_menu(w)
    edit_link = copy_from_menu(w, "edit")
    grant = verify_token(SECRET, token_of(edit_link))
    assert grant.role == "edit" and grant.docs == (doc,)
    e = open_page(pages, "", edit_link, "Editor", clipboard=False)
    assert not e.is_visible("#readonly-badge")
    focus_at(e, "end")
    e.keyboard.type("!")
    e.wait_for_function("() => collab.client.saved", timeout=5000)
    assert api_text(secure_srv, doc, edit) == "shared text!"
    assert not pages.errors, pages.errors


def test_read_token_offers_only_the_read_link(secure_srv, pages):
    doc = new_doc()
    httpx.put(
        f"{secure_srv.base_url}/api/docs/{doc}/text",
        content="hello",
        headers={"Authorization": f"Bearer {mint_token(SECRET, [doc], 'edit')}"},
        timeout=5,
    ).raise_for_status()
    read = mint_token(SECRET, [doc], "read")
    r = open_page(pages, secure_srv.base_url, f"/d/{doc}?token={quote(read)}", "Reader")
    assert r.is_visible("#readonly-badge")
    posted: list[str] = []
    r.on("request", lambda req: posted.append(req.post_data or "") if req.url.endswith("/share") else None)
    open_share_menu(r)
    assert r.is_visible("#share-read")
    assert r.is_hidden("#share-edit")
    assert r.is_hidden("#share-note")
    assert all('"edit"' not in body for body in posted), "a read-only viewer does not even ask for an edit link"
    link = copy_from_menu(r, "read")
    assert verify_token(SECRET, token_of(link)).role == "read"
    # Reader's share link works too.
    f = open_page(pages, "", link, "Friend", clipboard=False)
    assert text_of(f) == "hello" and f.is_visible("#readonly-badge")


def test_token_without_share_right_offers_nothing(secure_srv, pages):
    doc = new_doc()
    tok = mint_token(SECRET, [doc], "edit", share=False)
    p = open_page(pages, secure_srv.base_url, f"/d/{doc}#token={quote(tok)}", "NoShare")
    open_share_menu(p)
    assert p.is_hidden("#share-edit") and p.is_hidden("#share-read")
    assert "does not allow sharing" in p.inner_text("#share-note")
    # Click outside closes it; Escape too.
    p.click(".cm-content")
    assert p.is_hidden("#share-menu")
    open_share_menu(p)
    p.keyboard.press("Escape")
    assert p.is_hidden("#share-menu")


def test_open_server_copies_the_plain_page_url(srv, pages):
    doc = new_doc()
    p = open_page(pages, srv.base_url, f"/d/{doc}", "Open")
    assert p.inner_text("#copy-link") == "Copy link"
    assert p.get_attribute("#copy-link", "aria-haspopup") is None
    assert "secret" in p.get_attribute("#copy-link", "title")
    p.click("#copy-link")
    p.wait_for_function("() => document.querySelector('#toast').textContent === 'Link copied'", timeout=5000)
    assert clipboard(p) == f"{srv.base_url}/d/{doc}"
    assert p.is_hidden("#share-menu")
    assert p.is_hidden("#share-read") and p.is_hidden("#share-edit")


def test_clipboard_refused_shows_a_selectable_field(secure_srv, pages):
    doc = new_doc()
    edit = mint_token(SECRET, [doc], "edit")
    ctx = pages.browser.new_context()
    pages.contexts.append(ctx)
    ctx.add_init_script(
        "navigator.clipboard.writeText = () => Promise.reject(new DOMException('denied', 'NotAllowedError'));"
        "document.execCommand = () => false;"
    )
    p = ctx.new_page()
    p.goto(f"{secure_srv.base_url}/d/{doc}#token={quote(edit)}")
    wait_connected(p)
    open_share_menu(p)
    p.click("#share-read")
    p.wait_for_selector("#share-fallback", state="visible", timeout=5000)
    link = p.input_value("#share-field")
    assert link.startswith(f"{secure_srv.base_url}/d/{doc}#token=")
    assert verify_token(SECRET, token_of(link)).role == "read"
    assert p.evaluate("document.activeElement.id") == "share-field"
    sel = p.evaluate("[document.activeElement.selectionStart, document.activeElement.selectionEnd]")
    assert sel == [0, len(link)], "the whole link is selected, ready for Ctrl+C"


def test_server_errors_are_shown_as_text(secure_srv, pages):
    doc = new_doc()
    edit = mint_token(SECRET, [doc], "edit")
    p = open_page(pages, secure_srv.base_url, f"/d/{doc}#token={quote(edit)}", "Errors")
    p.route(
        "**/share",
        lambda route: route.fulfill(
            status=500, content_type="application/json", body='{"message": "<img src=x id=pwned onerror=alert(1)>"}'
        ),
    )
    open_share_menu(p)
    note = p.inner_text("#share-note")
    assert "HTTP 500" in note and "<img src=x id=pwned" in note
    assert p.query_selector("#pwned") is None
    assert p.is_hidden("#share-edit") and p.is_hidden("#share-read")


def test_share_menu_at_phone_width(secure_srv, pages):
    doc = new_doc()
    edit = mint_token(SECRET, [doc], "edit")
    phone = {"width": 375, "height": 740}
    p = open_page(pages, secure_srv.base_url, f"/d/{doc}#token={quote(edit)}", "Phone", viewport=phone)
    open_share_menu(p)
    for sel in ("#share-edit", "#share-read"):
        box = p.locator(sel).bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= 375, (sel, box)
    assert p.evaluate("document.documentElement.scrollWidth") <= 375
    assert copy_from_menu(p, "read").startswith(f"{secure_srv.base_url}/d/{doc}#token=")


def test_share_menu_lists_links_and_revoking_one_closes_its_sessions(secure_srv, pages):
    """Issue 24: the Share menu lists the document's active links; "Revoke" ends every session using
    one, and that page says the link was revoked (not "invalid" or "expired")."""
    doc = new_doc()
    owner = mint_token(SECRET, [doc], "edit", name="Ada 🦊")
    w = open_page(pages, secure_srv.base_url, f"/d/{doc}#token={quote(owner)}", "Owner")
    focus_at(w, "start")
    w.keyboard.type("Grüße 🦊")
    w.wait_for_function("() => collab.client.saved", timeout=5000)
    open_share_menu(w)
    link = copy_from_menu(w, "read")
    link_id = verify_token(SECRET, token_of(link)).jti

    r = open_page(pages, "", link, "Reader", clipboard=False)
    r.wait_for_function("() => collab.view.state.doc.toString() === 'Grüße 🦊'", timeout=5000)

    open_share_menu(w)
    row = f"#share-list li[data-id='{link_id}']"
    w.wait_for_selector(row, state="visible", timeout=5000)
    assert w.inner_text(f"{row} .share-link-label").startswith("Read-only link by Ada 🦊 · ")
    assert w.locator("#share-list li").count() == 2, "this page's edit and read links, each minted once"
    w.click("#copy-link")  # closed
    open_share_menu(w)  # reopened: the same links reused, not minted again
    assert w.locator("#share-list li").count() == 2

    w.click(f"{row} .share-revoke")
    w.wait_for_function("() => document.querySelector('#toast').textContent === 'Link revoked'", timeout=5000)
    w.wait_for_selector(row, state="detached", timeout=5000)
    r.wait_for_selector("#banner", state="visible", timeout=5000)
    assert "this link was revoked" in r.inner_text("#banner")
    assert r.is_disabled("#copy-link")
    # The owner's page goes on, and reopening the revoked link is refused with the same words.
    r2 = open_page(pages, "", link, "Reader again", clipboard=False, wait=False)
    r2.wait_for_selector("#banner", state="visible", timeout=5000)
    assert "this link was revoked" in r2.inner_text("#banner")
    assert w.is_hidden("#banner")
    assert not pages.errors, pages.errors


def test_an_expired_link_says_expired_and_a_forged_one_says_invalid(secure_srv, pages):
    doc = new_doc()
    expired = mint_token(SECRET, [doc], "read", ttl_seconds=10, now=time.time() - 3600)
    forged = mint_token("f" * 40, [doc], "edit")
    for token, words in ((expired, "this link expired"), (forged, "this link is not valid")):
        p = open_page(pages, secure_srv.base_url, f"/d/{doc}#token={quote(token)}", words, clipboard=False, wait=False)
        p.wait_for_selector("#banner", state="visible", timeout=5000)
        assert words in p.inner_text("#banner"), p.inner_text("#banner")
