"""A document's life in the browser editor: an open page is told when its document is deleted.

Real server (child process), Debian's Chromium driven by Playwright; the
launch helpers come from test_browser. Skipped only when /usr/bin/chromium
(or Playwright) is missing.
"""

from __future__ import annotations

import httpx

from test_browser import browser, focus_at, new_doc, pages, srv, text_of  # noqa: F401  (fixtures)


def test_an_open_page_says_its_document_was_deleted(srv, pages):
    doc = new_doc()
    p = pages.open(f"{srv.base_url}/d/{doc}", name="Ada 🦊")
    focus_at(p, "start")
    p.keyboard.type("Grüße 🦊")
    p.wait_for_function("() => collab.client.saved", timeout=5000)
    assert httpx.delete(f"{srv.base_url}/api/docs/{doc}", timeout=10).status_code == 200
    p.wait_for_selector("#banner", state="visible", timeout=5000)
    assert "This document was deleted" in p.inner_text("#banner")
    assert text_of(p) == "Grüße 🦊", "the text stays on the page (and can be downloaded)"
    assert httpx.post(f"{srv.base_url}/api/trash/{doc}/restore", timeout=10).status_code == 200
    again = pages.open(f"{srv.base_url}/d/{doc}", name="Bea 🐝")
    again.wait_for_function("() => collab.view.state.doc.toString() === 'Grüße 🦊'", timeout=5000)
    assert not pages.errors, pages.errors


def test_home_lists_titles_and_searches_by_title_and_name(srv, pages):
    a, b = new_doc(), new_doc()
    httpx.put(f"{srv.base_url}/api/docs/{a}/text", content="# Füchse im Bau 🦊\n\ntext".encode(), timeout=10)
    httpx.put(f"{srv.base_url}/api/docs/{b}/text", content="no heading 🐝".encode(), timeout=10)
    home = pages.open(f"{srv.base_url}/", wait=False)
    home.wait_for_selector(f"#doc-rows tr:has(td.doc-id:text-is('{a}'))", timeout=5000)
    row_a = home.locator(f"#doc-rows tr:has(td.doc-id:text-is('{a}'))")
    row_b = home.locator(f"#doc-rows tr:has(td.doc-id:text-is('{b}'))")
    assert row_a.locator("td.doc-title a").inner_text() == "Füchse im Bau 🦊"
    assert row_b.locator("td.doc-title a").inner_text() == b, "no title: the name stands in"
    home.fill("#doc-search", "fuchse bau")
    assert row_a.is_visible() and row_b.is_hidden()
    home.fill("#doc-search", b)
    assert row_b.is_visible() and row_a.is_hidden()
    home.fill("#doc-search", "nothing-like-this 🙈")
    assert home.is_visible("#search-status") and row_a.is_hidden() and row_b.is_hidden()
    home.fill("#doc-search", "")
    assert row_a.is_visible() and row_b.is_visible()
    assert not pages.errors, pages.errors


def test_a_renamed_document_reopens_under_its_new_name(srv, pages):
    doc, new = new_doc(), new_doc()
    p = pages.open(f"{srv.base_url}/d/{doc}", name="Ada 🦊")
    focus_at(p, "start")
    p.keyboard.type("Grüße 🦊")
    p.wait_for_function("() => collab.client.saved", timeout=5000)
    r = httpx.post(f"{srv.base_url}/api/docs/{doc}/rename", json={"name": new}, timeout=10)
    assert r.status_code == 200, r.text
    p.wait_for_url(f"{srv.base_url}/d/{new}", timeout=5000)
    p.wait_for_function("() => collab.client.ready && collab.view.state.doc.toString() === 'Grüße 🦊'", timeout=5000)
    focus_at(p, "end")
    p.keyboard.type("!")
    p.wait_for_function("() => collab.client.saved", timeout=5000)
    assert httpx.get(f"{srv.base_url}/api/docs/{new}/text", timeout=10).text == "Grüße 🦊!"
    old = pages.open(f"{srv.base_url}/d/{doc}", name="Bea 🐝", wait=False)
    old.wait_for_url(f"{srv.base_url}/d/{new}", timeout=5000)
    assert not pages.errors, pages.errors


def test_the_tab_shows_the_first_heading(srv, pages):
    doc = new_doc()
    httpx.put(f"{srv.base_url}/api/docs/{doc}/text", content="intro\n# Füchse 🦊\n".encode(), timeout=10)
    p = pages.open(f"{srv.base_url}/d/{doc}", name="Ada 🦊")
    p.wait_for_function("() => document.title === 'Füchse 🦊 · collab'", timeout=5000)
    focus_at(p, "start")
    p.keyboard.type("# Bau 🐝\n")
    p.wait_for_function("() => document.title === 'Bau 🐝 · collab'", timeout=5000)
    p.keyboard.press("Control+a")
    p.keyboard.press("Delete")
    p.wait_for_function(f"() => document.title === '{doc} · collab'", timeout=5000)
    assert not pages.errors, pages.errors
