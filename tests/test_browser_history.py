"""The editor's history (issue 23): the panel of editing sessions and a
slider, a read-only preview of a past revision with what changed since
highlighted, "Restore this version" for editors only, and the "show authors"
colouring of the live text.

Real server (child process, every commit its own editing session), Debian's
Chromium driven by Playwright; the launch helpers come from test_browser.
"""

from __future__ import annotations

from urllib.parse import quote

import httpx
import pytest

from test_browser import (  # noqa: F401  (browser and pages are fixtures)
    SECRET,
    ServerProcess,
    browser,
    focus_at,
    new_doc,
    pages,
    text_of,
    wait_converged,
)

from collab.auth import mint_token


@pytest.fixture(scope="module")
def hsrv(tmp_path_factory):
    """Every commit is its own editing session, so a few keystrokes make several."""
    s = ServerProcess(str(tmp_path_factory.mktemp("history-browser")), env={"COLLAB_SESSION_GAP": "-1"}).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def secure_hsrv(tmp_path_factory):
    s = ServerProcess(str(tmp_path_factory.mktemp("history-secure")),
                      env={"COLLAB_SECRET": SECRET, "COLLAB_SESSION_GAP": "-1"}).start()
    yield s
    s.stop()


def put(base: str, doc: str, text: str, token: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    r = httpx.put(f"{base}/api/docs/{doc}/text", content=text.encode(), headers=headers, timeout=10)
    r.raise_for_status()
    return r.json()["rev"]


def text_at(base: str, doc: str, rev: int, token: str | None = None) -> str:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    r = httpx.get(f"{base}/api/docs/{doc}/text", params={"rev": rev}, headers=headers, timeout=10)
    r.raise_for_status()
    return r.text


def preview_text(page) -> str:
    return page.evaluate("collab.history.preview.state.doc.toString()")


def shown(page, rev: int) -> None:
    page.wait_for_selector(f"#history[data-state=ready][data-rev='{rev}']", timeout=10_000)


def test_browsing_a_past_revision_shows_its_text_and_leaves_the_live_document_alone(hsrv, pages):
    doc = new_doc()
    put(hsrv.base_url, doc, "# Notes 📝\n\nfirst line\n")  # revision 1
    a = pages.open(f"{hsrv.base_url}/d/{doc}", name="Alice")
    b = pages.open(f"{hsrv.base_url}/d/{doc}", name="Bob")
    focus_at(b, "end")
    b.keyboard.type("bob 🦊")
    wait_converged(hsrv, doc, [a, b])
    focus_at(a, "end")
    a.keyboard.type(" draft ✍️")  # may still be unsent when the panel opens
    live = text_of(a)
    a.evaluate("() => { collab.history.pageSize = 2; }")  # so that paging shows with a few sessions
    a.click("#history-btn")
    shown(a, int(a.evaluate("collab.client.rev")))
    assert a.is_visible("#history") and not a.is_visible("#editor")
    a.locator(".history-pick").first.wait_for()
    # Sessions come newest first, a page at a time; "Older sessions" pages back to the first.
    assert a.locator(".history-pick").count() == 2
    while a.is_visible("#history-older"):
        n = a.locator(".history-pick").count()
        a.click("#history-older")
        a.wait_for_function(f"() => document.querySelectorAll('.history-pick').length > {n}"
                            " || document.getElementById('history-older').hidden", timeout=10_000)
    revs = [int(x) for x in a.eval_on_selector_all(".history-pick", "els => els.map((e) => e.dataset.rev)")]
    sessions = httpx.get(f"{hsrv.base_url}/api/docs/{doc}/revisions", timeout=10).json()
    assert len(revs) > 2 and revs == [s["to"] for s in sessions if s["to"] <= revs[0]], (revs, sessions)
    # The oldest session is the PUT: choosing it shows revision 1's text, and
    # marks where text was added since.
    oldest = a.locator(".history-pick").last
    assert oldest.get_attribute("data-rev") == "1"
    assert "server" in oldest.inner_text()
    oldest.click()
    shown(a, 1)
    assert preview_text(a) == text_at(hsrv.base_url, doc, 1) == "# Notes 📝\n\nfirst line\n"
    assert a.locator("#history-text .hist-ins").count() >= 1
    assert a.get_attribute(".history-pick[data-rev='1']", "aria-current") == "true"
    # The slider moves one revision at a time.
    a.focus("#history-slider")
    a.keyboard.press("ArrowRight")
    shown(a, 2)
    assert preview_text(a) == text_at(hsrv.base_url, doc, 2)
    # The live editor kept its text and edits, and still receives everyone's.
    assert text_of(a) == live
    b.keyboard.type(" 🐝")
    a.wait_for_function("() => collab.view.state.doc.toString().includes('🐝')", timeout=10_000)
    assert preview_text(a) == text_at(hsrv.base_url, doc, 2)
    # The list takes in the sessions made while it is open, newest first.
    a.wait_for_function("() => Number(document.querySelector('.history-pick').dataset.rev) === collab.client.rev",
                        timeout=10_000)
    a.keyboard.press("Escape")
    assert not a.is_visible("#history") and a.is_visible("#editor")
    final = wait_converged(hsrv, doc, [a, b])
    assert "draft ✍️" in final and "🐝" in final
    assert not pages.errors, pages.errors


def test_restore_by_an_editor_changes_the_live_text_of_another_page(hsrv, pages):
    doc = new_doc()
    put(hsrv.base_url, doc, "old 🦊 text\n")
    a = pages.open(f"{hsrv.base_url}/d/{doc}", name="Alice")
    b = pages.open(f"{hsrv.base_url}/d/{doc}", name="Bob")
    focus_at(b, "end")
    b.keyboard.type("a bad paste 💥")
    wait_converged(hsrv, doc, [a, b])
    a.click(".cm-content")
    a.keyboard.press("Control+Alt+h")  # the shortcut opens the panel
    a.locator(".history-pick[data-rev='1']").click()
    shown(a, 1)
    assert a.is_visible("#history-restore") and a.is_enabled("#history-restore")
    a.click("#history-restore")
    b.wait_for_function("() => collab.view.state.doc.toString() === 'old 🦊 text\\n'", timeout=10_000)
    assert wait_converged(hsrv, doc, [a, b]) == "old 🦊 text\n"
    assert not a.is_visible("#history")  # back to the live text
    # For the one who restored it, the restore is an edit like their own: Ctrl+Z takes it back.
    a.click(".cm-content")
    a.keyboard.press("Control+z")
    b.wait_for_function("() => collab.view.state.doc.toString().includes('💥')", timeout=10_000)
    assert wait_converged(hsrv, doc, [a, b]) == "old 🦊 text\na bad paste 💥"
    assert not pages.errors, pages.errors


def test_a_read_only_page_can_browse_history_but_not_restore(secure_hsrv, pages):
    doc = new_doc()
    edit = mint_token(SECRET, [doc], "edit", name="Ada 🌸")
    put(secure_hsrv.base_url, doc, "first 🌱\n", edit)
    put(secure_hsrv.base_url, doc, "first 🌱\nsecond 🌳\n", edit)
    read = mint_token(SECRET, [doc], "read")
    r = pages.open(f"{secure_hsrv.base_url}/d/{doc}?token={quote(read)}", name="Reader")
    r.wait_for_selector("#readonly-badge:not([hidden])")
    r.click("#history-btn")
    r.locator(".history-pick[data-rev='1']").click()
    shown(r, 1)
    assert preview_text(r) == "first 🌱\n"
    assert "Ada 🌸" in r.locator(".history-pick").first.inner_text()
    assert r.locator("#history-restore").count() == 1 and not r.is_visible("#history-restore")
    assert text_of(r) == "first 🌱\nsecond 🌳\n"
    assert not pages.errors, pages.errors


AUTHOR_TEXT = """() => {
  const out = {};
  for (const e of document.querySelectorAll('#editor .cm-content .cm-author')) {
    const m = e.className.match(/\\bauthor-(\\d+)/);
    const k = m ? m[1] : 'none';
    out[k] = (out[k] || '') + e.textContent;
  }
  return out;
}"""

LEGEND = """() => Object.fromEntries([...document.querySelectorAll('#authors-legend .author-chip')]
  .map((c) => [c.dataset.slot, c.querySelector('.author-name').textContent]))"""

SWATCHES = """() => [...document.querySelectorAll('#authors-legend .author-swatch')]
  .map((s) => getComputedStyle(s).backgroundColor)"""


def by_author(page) -> dict[str, str]:
    """Coloured text of the live editor by author name (through the legend)."""
    legend = page.evaluate(LEGEND)
    return {legend.get(slot, f"?{slot}"): text for slot, text in page.evaluate(AUTHOR_TEXT).items()}


def test_show_authors_colours_the_text_of_two_people_and_follows_their_typing(hsrv, pages):
    doc = new_doc()
    a = pages.open(f"{hsrv.base_url}/d/{doc}", name="Alice")
    b = pages.open(f"{hsrv.base_url}/d/{doc}", name="Bob", color="#e03131")
    focus_at(a, "end")
    a.keyboard.type("Alice wrote this 🌸\n")
    wait_converged(hsrv, doc, [a, b])
    focus_at(b, "end")
    b.keyboard.type("Bob wrote that 🦊")
    wait_converged(hsrv, doc, [a, b])
    assert a.locator("#editor .cm-author").count() == 0  # off by default
    a.click("#authors-btn")
    assert a.get_attribute("#authors-btn", "aria-pressed") == "true"
    a.wait_for_function("() => document.querySelectorAll('#authors-legend .author-chip').length >= 2", timeout=10_000)
    got = by_author(a)
    assert got.get("Alice", "").replace("\n", "") == "Alice wrote this 🌸", got
    assert got.get("Bob") == "Bob wrote that 🦊", got
    slots = a.evaluate(LEGEND)
    colours = a.evaluate(SWATCHES)
    assert len(set(colours)) == len(slots) >= 2, colours  # one colour each
    # Bob keeps typing: his new text takes his colour on Alice's page as it arrives.
    b.keyboard.type(" more 🐝")
    a.wait_for_function("() => collab.view.state.doc.toString().endsWith('more 🐝')", timeout=10_000)
    a.wait_for_function("""() => [...document.querySelectorAll('#editor .cm-author')]
        .some((e) => e.textContent.includes('🐝'))""", timeout=10_000)
    got = by_author(a)
    assert got.get("Bob", "").endswith("more 🐝") and "🐝" not in got.get("Alice", ""), got
    # And after the server is asked again (a moment after typing stops), the same.
    wait_converged(hsrv, doc, [a, b])
    a.evaluate("() => collab.authors.refetch()")
    assert by_author(a).get("Bob") == "Bob wrote that 🦊 more 🐝"
    # In the dark theme the colours are others (lighter, for dark paper), still one each.
    a.emulate_media(color_scheme="dark")
    dark = a.evaluate(SWATCHES)
    assert len(set(dark)) == len(dark) >= 2 and not set(dark) & set(colours), (dark, colours)
    a.click("#authors-btn")
    assert a.locator("#editor .cm-author").count() == 0 and not a.is_visible("#authors-legend")
    assert not pages.errors, pages.errors
