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
    assert httpx.post(f"{srv.base_url}/api/docs/{doc}/restore", timeout=10).status_code == 200
    again = pages.open(f"{srv.base_url}/d/{doc}", name="Bea 🐝")
    again.wait_for_function("() => collab.view.state.doc.toString() === 'Grüße 🦊'", timeout=5000)
    assert not pages.errors, pages.errors
