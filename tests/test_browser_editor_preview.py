"""The rendered view (issue 24, "preview"): edit / split / view, Markdown
rendered (CommonMark + GFM tables, task lists, highlighted code) and
sanitized under the server's own Content-Security-Policy, live as anyone
types, scroll-synced in split mode, bounded for large documents, opened in
view mode by a read-only link; and the standalone HTML export.

Real server (child process), Debian's Chromium driven by Playwright; the
launch helpers come from test_browser.
"""

from __future__ import annotations

from pathlib import Path
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
    wait_converged,
)

RICH = """# Plan

Some **bold** and a [link](https://example.org/x) and https://example.com/auto.

- [x] done item
- [ ] open item

| Week | Goal |
| :--- | ---: |
| 49 | Preview |

```python
def f(x):
    return x
```
"""

HOSTILE = """# Hostile

<img src=x onerror="window.__xss=1">
<script>window.__xss=2</script>
[click](javascript:window.__xss=3)
<a href="javascript:window.__xss=4">raw link</a>
<iframe src="/"></iframe>
<svg><script>window.__xss=5</script></svg>
<div style="position:fixed;inset:0">overlay</div>
<form action="/api"><button>go</button></form>
"""


def put(srv, doc: str, text: str) -> None:
    httpx.put(f"{srv.base_url}/api/docs/{doc}/text", content=text.encode(), timeout=30).raise_for_status()


def renders(page) -> int:
    return int(page.get_attribute("#preview-body", "data-renders") or 0)


def test_split_view_renders_markdown_and_follows_every_typist(srv, pages):
    doc = new_doc()
    put(srv, doc, RICH)
    csp: list[str] = []
    a = pages.open(f"{srv.base_url}/d/{doc}", name="Alice")
    a.on("console", lambda m: csp.append(m.text) if "Content Security Policy" in m.text else None)
    b = pages.open(f"{srv.base_url}/d/{doc}", name="Bob")
    assert not a.is_visible("#preview")  # the editor alone by default
    a.click("#mode-split")
    a.wait_for_selector("#preview-body table")
    assert a.is_visible(".cm-content") and a.is_visible("#preview-body")
    assert a.get_attribute("#mode-split", "aria-pressed") == "true"
    body = a.locator("#preview-body")
    assert body.locator("h1").inner_text() == "Plan"
    assert body.locator("strong").inner_text() == "bold"
    assert body.locator("a[href='https://example.org/x']").get_attribute("rel") == "noopener noreferrer"
    assert body.locator("a[href='https://example.com/auto']").count() == 1  # autolinked (GFM)
    boxes = body.locator("li.task-item input[type=checkbox]")
    assert boxes.count() == 2
    assert [boxes.nth(i).is_checked() for i in range(2)] == [True, False]
    assert all(boxes.nth(i).is_disabled() for i in range(2))
    assert body.locator("th.align-left").inner_text() == "Week"
    assert body.locator("td.align-right").inner_text() == "Preview"
    assert body.locator("pre code .hljs-keyword").first.inner_text() == "def"
    # Someone else types: the preview follows (debounced, so wait for it).
    focus_at(b, "end")
    b.keyboard.type("\n## From Bob 🎉\n")
    wait_converged(srv, doc, [a, b])
    a.locator("#preview-body h2", has_text="From Bob 🎉").wait_for(timeout=5000)
    # And so does one's own typing.
    focus_at(a, "end")
    a.keyboard.type("> quoted *text*")
    a.locator("#preview-body blockquote em", has_text="text").wait_for(timeout=5000)
    # View mode: the rendered document alone.
    a.click("#mode-view")
    assert not a.is_visible(".cm-editor") and a.is_visible("#preview-body blockquote")
    a.click("#mode-edit")
    assert a.is_visible(".cm-content") and not a.is_visible("#preview")
    assert not csp, csp
    assert not pages.errors, pages.errors


def test_preview_sanitizes_raw_html_under_the_servers_csp(srv, pages):
    doc = new_doc()
    put(srv, doc, HOSTILE)
    served = httpx.get(f"{srv.base_url}/d/{doc}", timeout=5).headers.get("content-security-policy", "")
    assert "script-src 'self'" in served and "unsafe-eval" not in served
    csp: list[str] = []
    a = pages.open(f"{srv.base_url}/d/{doc}", name="Alice")
    a.on("console", lambda m: csp.append(m.text) if "Content Security Policy" in m.text else None)
    a.click("#mode-view")
    a.wait_for_selector("#preview-body h1")
    body = a.locator("#preview-body")
    assert body.locator("img").count() == 1
    assert body.locator("[onerror], script, iframe, form, button, [style]").count() == 0
    assert body.locator("a[href^='javascript' i]").count() == 0
    assert "overlay" in body.inner_text()  # the text stays, the styling does not
    for link in body.locator("a").all():
        link.click(modifiers=["Control"])  # would run a javascript: URL if one were left
    assert a.evaluate("window.__xss") is None
    # The sanitizer removed these, not the CSP: nothing was even attempted.
    assert not [m for m in csp if "script" in m.lower()], csp


def test_split_mode_scroll_is_synced_both_ways(srv, pages):
    doc = new_doc()
    text = "".join(f"## Section {i}\n\nParagraph {i} with some words in it.\n\n" for i in range(150))
    put(srv, doc, text)
    a = pages.open(f"{srv.base_url}/d/{doc}", name="Alice")
    a.click("#mode-split")
    a.wait_for_selector("#preview-body h2")
    # Scroll the editor so that "## Section 100" is at its top: the preview
    # follows to the section the editor then shows at its top.
    a.evaluate("""() => { const v = collab.view, pos = v.state.doc.line(401).from;
        v.dispatch({effects: v.constructor.scrollIntoView(pos, {y: 'start'})}); }""")
    a.wait_for_function("""() => {
        const v = collab.view, h = v.scrollDOM.getBoundingClientRect().top - v.documentTop;
        const top = v.state.doc.lineAt(v.lineBlockAtHeight(h + 2).from).text;
        const s = document.querySelector('#preview-scroll'), edge = s.getBoundingClientRect().top;
        const first = [...document.querySelectorAll('#preview-body h2')].find((e) => e.getBoundingClientRect().bottom > edge + 4);
        return top === '## Section 100' && first && first.textContent === 'Section 100'; }""", timeout=5000)
    # The user scrolls the preview (the mouse wheel over it) up to "Section 30": the editor follows.
    box = a.locator("#preview-scroll").bounding_box()
    a.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    for _ in range(100):
        if a.evaluate("""() => { const s = document.querySelector('#preview-scroll');
            const h = [...document.querySelectorAll('#preview-body h2')].find((e) => e.textContent === 'Section 30');
            return h.getBoundingClientRect().top >= s.getBoundingClientRect().top; }"""):
            break
        a.mouse.wheel(0, -300)
    a.wait_for_function("""() => { const v = collab.view, s = document.querySelector('#preview-scroll');
        const first = [...document.querySelectorAll('#preview-body h2')].find((e) => e.getBoundingClientRect().bottom > s.getBoundingClientRect().top + 4);
        const n = Number(first.textContent.replace('Section ', ''));
        const h = v.scrollDOM.getBoundingClientRect().top - v.documentTop;
        const top = v.state.doc.lineAt(v.lineBlockAtHeight(h + 2).from).number;
        // The editor's top line is in the section the preview shows first, or just before it.
        return n <= 30 && top >= 4 * (n - 1) + 1 && top <= 4 * n + 1; }""", timeout=5000)
    # (Once the wheel's scrolling has come to rest: three frames without movement.)
    a.wait_for_function("""() => new Promise((resolve) => {
        const s = document.querySelector('#preview-scroll');
        let last = s.scrollTop, still = 0;
        const tick = () => {
          if (s.scrollTop === last) still++; else { still = 0; last = s.scrollTop; }
          if (still >= 3) resolve(true); else requestAnimationFrame(tick);
        };
        requestAnimationFrame(tick); })""")
    # Typing in the editor gives the lead back to it: no tug of war between the sides.
    a.evaluate("""() => { const v = collab.view, pos = v.state.doc.line(401).from; v.focus();
        v.dispatch({selection: {anchor: pos}, effects: v.constructor.scrollIntoView(pos, {y: 'start'})}); }""")
    a.keyboard.press("End")
    a.keyboard.type(" typed")
    a.wait_for_function("""() => { const s = document.querySelector('#preview-scroll'), edge = s.getBoundingClientRect().top;
        const hs = [...document.querySelectorAll('#preview-body h2')].filter((e) => { const r = e.getBoundingClientRect();
            return r.bottom > edge && r.top < s.getBoundingClientRect().bottom; });
        return hs.some((e) => e.textContent.startsWith('Section 100')); }""", timeout=5000)


def test_large_document_preview_renders_a_bounded_excerpt(srv, pages):
    doc = new_doc()
    line = "word " * 15
    text = "\n".join(f"{line}{i}" for i in range(30_000))  # 2.3 MB, no blank line
    put(srv, doc, text)
    a = pages.open(f"{srv.base_url}/d/{doc}", name="Alice")
    a.wait_for_function(f"() => collab.view.state.doc.length === {len(text)}", timeout=20_000)
    a.click("#mode-split")
    a.wait_for_selector("#preview-note:not([hidden])")
    assert "large" in a.inner_text("#preview-note")
    rendered = len(a.inner_text("#preview-body"))
    assert 0 < rendered < 100_000, rendered
    # Going to the end: the excerpt follows the editor, and the editor stays there.
    a.evaluate("() => { const v = collab.view; v.focus(); v.dispatch({selection: {anchor: v.state.doc.length}, scrollIntoView: true}); }")
    a.wait_for_function("() => document.querySelector('#preview-note').textContent.includes('30,000 of 30,000')", timeout=10_000)
    a.locator("#preview-body p", has_text="29999").wait_for(timeout=5000)
    assert a.evaluate("collab.view.viewport.to") == len(text)
    # In view mode (no editor to scroll) the excerpt moves with Earlier / Later.
    a.click("#mode-view")
    a.click("#preview-earlier")
    a.locator("#preview-body p", has_text="29300").wait_for(timeout=5000)
    assert "29999" not in a.inner_text("#preview-body")
    a.click("#preview-later")
    a.locator("#preview-body p", has_text="29999").wait_for(timeout=5000)
    assert a.is_disabled("#preview-later")
    a.click("#mode-split")
    # Typing re-renders only after a pause, and still only an excerpt.
    before = renders(a)
    focus_at(a, "start")
    a.keyboard.type("# Top")
    a.locator("#preview-body h1", has_text="Top").wait_for(timeout=10_000)
    assert renders(a) > before
    assert len(a.inner_text("#preview-body")) < 100_000


def test_read_only_link_opens_in_view_mode(tmp_path, pages):
    from collab.auth import mint_token

    s = ServerProcess(str(tmp_path / "data"), env={"COLLAB_SECRET": SECRET}).start()
    try:
        doc = new_doc()
        put_auth = {"Authorization": f"Bearer {mint_token(SECRET, [doc], 'edit')}"}
        httpx.put(f"{s.base_url}/api/docs/{doc}/text", content=RICH.encode(), headers=put_auth, timeout=10).raise_for_status()
        read = mint_token(SECRET, [doc], "read")
        r = pages.open(f"{s.base_url}/d/{doc}#token={quote(read)}", name="Reader")
        r.wait_for_selector("#preview-body table")
        assert r.get_attribute("#mode-view", "aria-pressed") == "true"
        assert r.is_visible("#readonly-badge") and not r.is_visible(".cm-editor")
        edit = mint_token(SECRET, [doc], "edit")
        w = pages.open(f"{s.base_url}/d/{doc}?token={quote(edit)}", name="Writer")
        assert w.get_attribute("#mode-edit", "aria-pressed") == "true" and w.is_visible(".cm-content")
    finally:
        s.stop()


def test_download_as_standalone_html(srv, pages):
    doc = new_doc()
    put(srv, doc, RICH + HOSTILE)
    a = pages.open(f"{srv.base_url}/d/{doc}", name="Alice")
    a.click("#download-btn")
    with a.expect_download() as dl:
        a.click("#download-html")
    assert dl.value.suggested_filename == f"{doc}.html"
    html = Path(dl.value.path()).read_text(encoding="utf-8")
    assert html.startswith("<!doctype html>") and f"<title>{doc}</title>" in html
    assert "<table" in html and 'class="task-box"' in html and "hljs-keyword" in html
    assert "<script" not in html.lower() and "onerror" not in html and "href=\"javascript" not in html
    # It renders on its own, with nothing to fetch from the server.
    ctx = a.context.browser.new_context(offline=True)
    pages.contexts.append(ctx)
    page = ctx.new_page()
    page.set_content(html)
    assert page.locator("h1").first.inner_text() == "Plan"
    assert page.evaluate("window.__xss") is None
