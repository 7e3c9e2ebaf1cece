"""Titles, rename and the trash from the browser (issue 24): the editor's title
(click to edit; Enter saves, Escape cancels, empty goes back to the first
heading) reaches the tab, the other editors and the home page; Rename…
moves every open page to the new name and the old link follows; Move to
trash… leaves the list for the Trash, whose Restore brings it back; a
read-only viewer is offered none of it; the Size column is bytes of UTF-8.

Real server (child process), Debian's Chromium driven by Playwright; the
launch helpers come from test_browser. Skipped only when /usr/bin/chromium
(or Playwright) is missing.
"""

from __future__ import annotations

from urllib.parse import quote

import httpx

from test_browser import (  # noqa: F401  (browser, pages and srv are fixtures)
    SECRET,
    ServerProcess,
    browser,
    new_doc,
    pages,
    srv,
    text_of,
)


def _put(base: str, doc: str, text: str, token: str | None = None) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    httpx.put(f"{base}/api/docs/{doc}/text", content=text.encode(), headers=headers, timeout=10).raise_for_status()


def _row(home, doc: str, table: str = "doc-rows"):
    return home.locator(f"#{table} tr[data-id='{doc}']")


def _tab_is(page, title: str) -> None:
    page.wait_for_function("t => document.title === t", arg=f"{title} · collab", timeout=5000)


def test_a_title_edited_in_the_editor_reaches_the_tab_the_others_and_the_list(srv, pages):
    doc = new_doc()
    _put(srv.base_url, doc, "# Notizen 🐝\n\nGrüße 👋🏽")
    a = pages.open(f"{srv.base_url}/d/{doc}", name="Ada 🦊")
    b = pages.open(f"{srv.base_url}/d/{doc}", name="Bea 🐝")
    _tab_is(a, "Notizen 🐝")
    assert a.inner_text("#title-btn") == "Notizen 🐝" and doc in a.get_attribute("#title-btn", "title")

    a.click("#title-btn")
    a.fill("#title-input", "Füchse im Bau 🦊")
    a.keyboard.press("Enter")
    _tab_is(a, "Füchse im Bau 🦊")
    _tab_is(b, "Füchse im Bau 🦊")  # told by the server, without reloading
    assert b.inner_text("#title-btn") == "Füchse im Bau 🦊"
    assert httpx.get(f"{srv.base_url}/api/docs/{doc}/title", timeout=5).json()["title"] == "Füchse im Bau 🦊"
    home = pages.open(f"{srv.base_url}/", wait=False)
    assert _row(home, doc).locator("td.doc-title a").inner_text() == "Füchse im Bau 🦊"

    a.click("#title-btn")  # Escape leaves it as it was
    a.fill("#title-input", "not this")
    a.keyboard.press("Escape")
    assert a.is_hidden("#title-input") and a.inner_text("#title-btn") == "Füchse im Bau 🦊"
    assert httpx.get(f"{srv.base_url}/api/docs/{doc}/title", timeout=5).json()["title"] == "Füchse im Bau 🦊"

    b.click("#title-btn")  # emptied: back to the first heading, for everyone
    b.fill("#title-input", "")
    b.keyboard.press("Enter")
    _tab_is(b, "Notizen 🐝")
    _tab_is(a, "Notizen 🐝")
    assert httpx.get(f"{srv.base_url}/api/docs/{doc}/title", timeout=5).json()["title"] is None
    home.reload()
    assert _row(home, doc).locator("td.doc-title a").inner_text() == "Notizen 🐝"
    assert not pages.errors, pages.errors


def test_rename_from_the_editor_moves_every_page_and_the_old_link_follows(srv, pages):
    doc, new = new_doc(), new_doc()
    _put(srv.base_url, doc, "Grüße 🦊")
    a = pages.open(f"{srv.base_url}/d/{doc}", name="Ada 🦊")
    b = pages.open(f"{srv.base_url}/d/{doc}", name="Bea 🐝")
    a.click("#doc-menu-btn")
    a.click("#doc-rename")
    a.fill("#rename-input", doc)
    a.click("#rename-dialog-ok")
    assert "its name already" in a.inner_text("#rename-dialog-error")
    a.fill("#rename-input", "no spaces 🦊")
    a.click("#rename-dialog-ok")
    assert "letters, digits" in a.inner_text("#rename-dialog-error")
    a.fill("#rename-input", new)
    a.click("#rename-dialog-ok")
    for p in (a, b):  # the one who renamed, and the other editor (closed with 4004 "document renamed to …")
        p.wait_for_url(f"{srv.base_url}/d/{new}", timeout=5000)
        p.wait_for_function("() => collab.client.ready && collab.view.state.doc.toString() === 'Grüße 🦊'", timeout=5000)
    old = pages.open(f"{srv.base_url}/d/{doc}", name="Cem 🐙", wait=False)
    old.wait_for_url(f"{srv.base_url}/d/{new}", timeout=5000)
    old.wait_for_function("() => collab.client.ready", timeout=5000)
    assert text_of(old) == "Grüße 🦊"
    assert not pages.errors, pages.errors


def test_trash_from_the_editor_then_restore_from_the_trash_view(srv, pages):
    doc = new_doc()
    _put(srv.base_url, doc, "# Bau 🦊\nGrüße")
    a = pages.open(f"{srv.base_url}/d/{doc}", name="Ada 🦊")
    b = pages.open(f"{srv.base_url}/d/{doc}", name="Bea 🐝")
    a.click("#doc-menu-btn")
    a.click("#doc-trash")
    assert "Bau 🦊" in a.inner_text("#trash-dialog-title")
    a.click("#trash-dialog button[value=cancel]")  # cancelled: nothing happens
    assert a.is_hidden("#trash-dialog") and httpx.get(f"{srv.base_url}/api/docs/{doc}/text", timeout=5).status_code == 200
    a.click("#doc-menu-btn")
    a.click("#doc-trash")
    a.click("#trash-dialog-ok")
    a.wait_for_url(f"{srv.base_url}/?view=trash", timeout=5000)
    b.wait_for_selector("#banner", state="visible", timeout=5000)  # the other editor is told
    assert "deleted" in b.inner_text("#banner") and b.is_hidden("#doc-menu-btn")

    row = _row(a, doc, "trash-rows")
    row.wait_for(timeout=5000)
    assert a.inner_text("#docs-title") == "Trash"
    assert row.locator("td.doc-title span").inner_text() == "Bau 🦊"
    assert row.locator("td.doc-purge").inner_text() == "purged in 30 days"
    row.locator("button.row-restore").click()
    row.wait_for(state="detached", timeout=5000)
    assert "Restored Bau 🦊" in a.inner_text("#home-note")
    a.click("#trash-btn")
    assert "view=trash" not in a.url
    _row(a, doc).wait_for(timeout=5000)
    assert httpx.get(f"{srv.base_url}/api/docs/{doc}/text", timeout=5).text == "# Bau 🦊\nGrüße"
    assert not pages.errors, pages.errors


def test_home_rows_rename_and_trash_with_undo(srv, pages):
    doc, new = new_doc(), new_doc()
    _put(srv.base_url, doc, "Grüße 🦊")
    home = pages.open(f"{srv.base_url}/", wait=False)
    _row(home, doc).locator("button.row-rename").click()
    home.fill("#rename-input", new)
    home.click("#rename-dialog-ok")
    _row(home, new).wait_for(timeout=5000)
    assert _row(home, doc).count() == 0
    assert httpx.get(f"{srv.base_url}/api/docs/{doc}/text", timeout=5, follow_redirects=True).text == "Grüße 🦊"

    _row(home, new).locator("button.row-trash").click()
    home.click("#trash-dialog-ok")
    _row(home, new).wait_for(state="detached", timeout=5000)
    assert "Moved" in home.inner_text("#home-note")
    assert [d["id"] for d in httpx.get(f"{srv.base_url}/api/trash", timeout=5).json()].count(new) == 1
    home.click("#home-note-undo")  # Undo: restored, back in the list
    _row(home, new).wait_for(timeout=5000)
    assert new not in [d["id"] for d in httpx.get(f"{srv.base_url}/api/trash", timeout=5).json()]
    assert not pages.errors, pages.errors


def test_read_only_viewers_are_offered_no_changes(tmp_path, pages):
    from collab.auth import mint_token

    s = ServerProcess(str(tmp_path / "data"), env={"COLLAB_SECRET": SECRET}).start()
    try:
        doc, gone = new_doc(), new_doc()
        owner = mint_token(SECRET, ["*"], "edit")
        _put(s.base_url, doc, "# Lesen 📖\n", owner)
        _put(s.base_url, gone, "weg 🗑", owner)
        httpx.delete(f"{s.base_url}/api/docs/{gone}", headers={"Authorization": f"Bearer {owner}"},
                     timeout=5).raise_for_status()
        read = quote(mint_token(SECRET, ["*"], "read"))
        r = pages.open(f"{s.base_url}/d/{doc}#token={read}", name="Reader")
        _tab_is(r, "Lesen 📖")
        assert r.is_visible("#readonly-badge") and r.is_hidden("#doc-menu-btn")
        assert r.is_disabled("#title-btn")
        home = pages.open(f"{s.base_url}/#token={read}", wait=False)
        _row(home, doc).wait_for(timeout=5000)
        assert home.locator("#doc-rows .row-btn").count() == 0
        home.click("#trash-btn")
        _row(home, gone, "trash-rows").wait_for(timeout=5000)
        assert home.locator("#trash-rows .row-btn").count() == 0

        # An edit link for one document: its own title and menu, but a rename to a name it does not reach is refused.
        one = quote(mint_token(SECRET, [doc], "edit"))
        w = pages.open(f"{s.base_url}/d/{doc}?token={one}", name="Writer")
        w.wait_for_selector("#doc-menu-btn", state="visible", timeout=5000)
        assert w.is_enabled("#title-btn")
        w.click("#doc-menu-btn")
        w.click("#doc-rename")
        w.fill("#rename-input", new_doc())
        w.click("#rename-dialog-ok")
        w.wait_for_selector("#rename-dialog-error:not([hidden])", timeout=5000)
        assert "does not allow" in w.inner_text("#rename-dialog-error")
        assert w.url.startswith(f"{s.base_url}/d/{doc}")
        unexpected = [e for e in pages.errors if "status of 403" not in e]  # Chromium logs the refused rename
        assert not unexpected, unexpected
    finally:
        s.stop()


def test_the_size_column_is_bytes_of_utf8(srv, pages):
    small, big = new_doc(), new_doc()
    _put(srv.base_url, small, "é😀" * 12_000)  # 24,000 characters, 72,000 bytes
    _put(srv.base_url, big, "🦊" * 500_000)  # 500,000 characters, 2,000,000 bytes
    home = pages.open(srv.base_url + "/", wait=False)
    _row(home, big).wait_for(timeout=5000)
    assert home.locator("#doc-table th").nth(2).inner_text() == "Size"
    cell = _row(home, small).locator("td.doc-size")
    assert cell.inner_text() == "72.0 kB"
    assert cell.get_attribute("title") == "72,000 bytes (UTF-8), 24,000 characters"
    assert _row(home, big).locator("td.doc-size").inner_text() == "2.0 MB"
    assert not pages.errors, pages.errors
