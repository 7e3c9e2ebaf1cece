"""Large documents in the browser editor (issue 24, "large documents"): a
keystroke costs the size of the edit, not of the document.

Checked without timing: in a 2 MB document with no blank line, a keystroke
reads only a bounded stretch of the editor's text (every `sliceString` on
CodeMirror's document tree is counted), the Markdown parse tree around the
caret is bounded (no 2 MB paragraph), and the character and word counts,
kept up to date from each change, equal a full recount after local and
remote edits with emoji; the editor's code travels gzipped and is not
downloaded again on a second visit. Speed itself is measured by
benchmarks/browser_keystroke_bench.py.
"""

from __future__ import annotations

import json

import httpx

from test_browser import (  # noqa: F401  (browser, pages and srv are fixtures)
    browser,
    new_doc,
    pages,
    srv,
    text_of,
    wait_converged,
)

LINE = "lorem ipsum dolor sit amet *consectetur* adipiscing elit sed do eiusmod tempor"

#: Wrap the document tree's sliceString (both node kinds) to add up the
#: characters read from the outside (nested calls inside the tree not counted).
COUNT_READS = """() => {
  let node = collab.view.state.doc;
  const protos = new Set([Object.getPrototypeOf(node)]);
  while (node.children) { node = node.children[0]; protos.add(Object.getPrototypeOf(node)); }
  window.__read = 0;
  let depth = 0;
  for (const proto of protos) {
    const orig = proto.sliceString;
    proto.sliceString = function (from, to = this.length, sep) {
      if (depth === 0) window.__read += Math.max(0, Math.min(to, this.length) - (from || 0));
      depth++;
      try { return orig.call(this, from, to, sep); } finally { depth--; }
    };
  }
}"""

COUNTS = "() => [document.querySelector('#char-count').textContent, document.querySelector('#word-count').textContent]"


def expected_counts(text: str) -> list[str]:
    chars, words = len(text), len(text.split())
    return [f"{chars:,} character{'' if chars == 1 else 's'}", f"{words:,} word{'' if words == 1 else 's'}"]


def wait_counts(page, text: str):
    want = expected_counts(text)
    page.wait_for_function(f"(want) => JSON.stringify(({COUNTS})()) === want", arg=json.dumps(want, separators=(",", ":")),
                           timeout=10_000)


def test_keystroke_in_2mb_document_reads_a_bounded_stretch(srv, pages):
    doc = new_doc()
    body = "\n".join(LINE for _ in range(2_000_000 // (len(LINE) + 1)))
    httpx.put(f"{srv.base_url}/api/docs/{doc}/text", content=body.encode(), timeout=30).raise_for_status()
    a = pages.open(f"{srv.base_url}/d/{doc}", name="Alice")
    b = pages.open(f"{srv.base_url}/d/{doc}", name="Bob")
    a.wait_for_function(f"() => collab.view.state.doc.length === {len(body)}", timeout=20_000)
    wait_counts(a, body)
    a.evaluate("() => { const v = collab.view; v.focus(); v.dispatch({selection: {anchor: v.state.doc.length}}); }")
    a.evaluate(COUNT_READS)
    for key in ["Space", "x", "y", "Space", "z"]:
        a.keyboard.press(key)
        a.wait_for_function("() => collab.client.saved")
    reads = a.evaluate("window.__read")
    assert reads < 50_000, f"5 keystrokes read {reads:,} characters of a 2 MB document"
    # The parse tree around the caret is bounded: no block spans the document.
    span = a.evaluate("""() => { const t = collab.syntaxTree(), end = collab.view.state.doc.length;
        let n = t.resolveInner(end, -1), widest = 0;
        for (; n && n.parent; n = n.parent) widest = Math.max(widest, n.to - n.from);
        return widest; }""")
    assert span < 10_000, f"a block of {span:,} characters around the caret"
    # Counts follow local and remote edits, emoji included (code points).
    a.keyboard.type(" 👋🏽 wave")
    b.evaluate("() => collab.view.dispatch({changes: {from: 6, insert: 'new words 🎉 here '}})")
    final = wait_converged(srv, doc, [a, b], timeout=30)
    assert final.startswith("lorem new words 🎉 here ipsum")
    assert final.endswith(" xy z 👋🏽 wave")
    wait_counts(a, final)
    wait_counts(b, final)
    # Deleting across a word boundary joins two words.
    b.evaluate("() => collab.view.dispatch({changes: {from: 5, to: 6}})")
    final = wait_converged(srv, doc, [a, b], timeout=30)
    wait_counts(a, final)
    assert text_of(a) == final
    assert not pages.errors, pages.errors


#: (name, transferred bytes, decoded bytes) of the page and everything it loaded.
SIZES = """() => [...performance.getEntriesByType('navigation'), ...performance.getEntriesByType('resource')]
  .map((e) => [e.name, e.transferSize, e.decodedBodySize])"""


def test_editor_page_loads_compressed_and_cached(srv, browser):
    """The editor's code travels gzipped, and a second visit downloads none of it again."""
    ctx = browser.new_context()
    try:
        page = ctx.new_page()
        seen: dict[str, dict] = {}
        page.on("response", lambda r: seen.__setitem__(r.url.split("?")[0].rsplit("/", 1)[-1], r.headers))
        page.goto(f"{srv.base_url}/d/{new_doc()}")
        page.wait_for_selector("#conn-status[data-state=connected]")
        for name in ("editor.js", "style.css"):
            assert seen[name].get("content-encoding") == "gzip", (name, seen[name])
            assert "immutable" in seen[name].get("cache-control", ""), (name, seen[name])
        first = {n.split("?")[0].rsplit("/", 1)[-1]: (t, d) for n, t, d in page.evaluate(SIZES)}
        transferred, decoded = first["editor.js"]
        assert 0 < transferred < decoded / 2, first["editor.js"]
        # A second visit: the hashed bundle comes from the cache, the page is revalidated (304, headers only).
        page.goto(page.url)
        page.wait_for_selector("#conn-status[data-state=connected]")
        again = {n.split("?")[0].rsplit("/", 1)[-1]: (t, d) for n, t, d in page.evaluate(SIZES)}
        assert again["editor.js"][0] == 0, again
        assert sum(t for t, _ in again.values()) < 2_000, again
    finally:
        ctx.close()
