"""Keystroke-to-paint in the browser editor: a 2 MB document against a 2 KB one.

Starts a real collab server (fresh data directory, ephemeral port), stores
three documents over HTTP (2 KB of prose; 2 MB of prose with no blank line,
so Markdown sees one paragraph; 2 MB with a blank line every 4 lines), opens
each in Debian's chromium through Playwright and types at its end, one key
at a time. Each key is timed in the page from its ``keydown`` event
(``event.timeStamp``) to a task queued from the next animation frame, which
runs after that frame is painted; the next key is pressed only once the
previous one has been measured, so keys never queue behind each other, and
typing starts once the editor has parsed the whole text after loading. The
ratio to the 2 KB document, measured in the same run, is the number to
compare between machines (the issue's target: at most 1.5x).

Also reports the bytes transferred to load the editor page (document and
static assets, from the Resource Timing API), with an empty cache and on a
second visit, with gzip accepted and refused (``identity``: what every
browser got before the server compressed its files).

    python benchmarks/browser_keystroke_bench.py            # 40 keys per document
    python benchmarks/browser_keystroke_bench.py --keys 80
    python benchmarks/browser_keystroke_bench.py --split    # also with the rendered view beside

Needs python playwright and chromium at /usr/bin/chromium (or COLLAB_CHROMIUM).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

from _common import REPO, free_port, machine, median, percentile, table, wait_healthy

import httpx
from playwright.sync_api import sync_playwright

CHROMIUM = os.environ.get("COLLAB_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

WORDS = ("lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore "
         "et dolore magna aliqua *emphasis* **strong** `code` [link](https://example.org)").split()

#: In the page: time every keydown to the task after the next frame's paint.
PROBE = """() => {
  window.__keys = [];
  document.addEventListener('keydown', (e) => {
    const t0 = e.timeStamp;
    requestAnimationFrame(() => {
      const ch = new MessageChannel();
      ch.port1.onmessage = () => { window.__keys.push(performance.now() - t0); };
      ch.port2.postMessage(0);
    });
  }, true);
}"""


def prose(size: int, blank_every: int | None) -> str:
    """Deterministic Markdown-ish prose of ``size`` characters in lines of about 70."""
    lines: list[str] = []
    total = 0
    i = 0
    while total < size:
        words = [WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(11)]
        line = " ".join(words)
        lines.append(line)
        total += len(line) + 1
        i += 1
        if blank_every and i % blank_every == 0:
            lines.append("")
            total += 1
    return "\n".join(lines)[:size]


def measure(browser, base: str, doc: str, keys: int, warmup: int, split: bool = False) -> list[float]:
    ctx = browser.new_context(viewport={"width": 1200, "height": 800})
    try:
        page = ctx.new_page()
        page.goto(f"{base}/d/{doc}")
        page.wait_for_selector("#conn-status[data-state=connected]", timeout=60_000)
        page.wait_for_function("() => collab.client.rev !== null && collab.view.state.doc.length > 0", timeout=60_000)
        if split:  # the rendered view beside the editor, when the page has one
            page.click("#mode-split")
            page.wait_for_selector("#preview-body [data-line]", timeout=60_000)
        page.evaluate("() => { const v = collab.view; v.focus();"
                      " v.dispatch({selection: {anchor: v.state.doc.length}, scrollIntoView: true}); }")
        # Let the initial background parse of the whole text finish first (it
        # runs in idle slices of up to 100 ms after the page loads): the keys
        # measure the steady state. Pages without collab.parsed skip this.
        page.wait_for_function("() => !collab.parsed || collab.parsed()", timeout=120_000)
        page.evaluate(PROBE)
        text = "the quick brown fox jumps over the lazy dog and keeps typing at the end of it all "
        times: list[float] = []
        for i in range(warmup + keys):
            page.keyboard.press(text[i % len(text)] if text[i % len(text)] != " " else "Space")
            page.wait_for_function(f"() => window.__keys.length >= {i + 1}", polling="raf")
        times = page.evaluate("window.__keys")[warmup:]
        page.wait_for_function("() => collab.client.saved", timeout=60_000)
        return times
    finally:
        ctx.close()


def page_bytes(browser, base: str, doc: str, gzip: bool = True) -> dict[str, tuple[int, int]]:
    """Transferred and decoded bytes of the editor page and everything it loads, on a first visit (empty
    cache) and a second one; ``gzip=False`` asks for the files uncompressed, as the server sent them before."""
    headers = {} if gzip else {"Accept-Encoding": "identity"}
    ctx = browser.new_context(extra_http_headers=headers)
    try:
        page = ctx.new_page()
        visits = {}
        for visit in ("first visit", "second visit"):
            page.goto(f"{base}/d/{doc}")
            page.wait_for_selector("#conn-status[data-state=connected]", timeout=60_000)
            sizes = page.evaluate("""() => [...performance.getEntriesByType('navigation'),
                                            ...performance.getEntriesByType('resource')]
                                      .map((e) => [e.transferSize, e.decodedBodySize])""")
            visits[visit] = (sum(s[0] for s in sizes), sum(s[1] for s in sizes))
        return visits
    finally:
        ctx.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keys", type=int, default=40, help="measured keys per document")
    ap.add_argument("--warmup", type=int, default=5, help="keys typed first and not counted")

    ap.add_argument("--split", action="store_true", help="also type in the 2 MB document with the rendered view beside")
    args = ap.parse_args()

    docs = {
        "2 KB": ("small", prose(2_000, 4)),
        "2 MB, no blank line": ("big-flat", prose(2_000_000, None)),
        "2 MB, blank line every 4": ("big-para", prose(2_000_000, 4)),
    }
    runs = [(label, name, False) for label, (name, _) in docs.items()]
    if args.split:
        runs.append(("2 MB, no blank line, split view", "big-flat", True))
    port = free_port()
    with tempfile.TemporaryDirectory() as data:
        env = dict(os.environ, COLLAB_DATA_DIR=data, COLLAB_PORT=str(port), COLLAB_HOST="127.0.0.1")
        code = "from collab.config import Settings; from collab.server import run; run(Settings.from_env())"
        proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_healthy(proc, port)
            base = f"http://127.0.0.1:{port}"
            for name, text in docs.values():
                httpx.put(f"{base}/api/docs/{name}/text", content=text.encode(), timeout=60).raise_for_status()
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
                try:
                    results = {label: measure(browser, base, name, args.keys, args.warmup, split)
                               for label, name, split in runs}
                    sizes = {"gzip": page_bytes(browser, base, "small"),
                             "identity": page_bytes(browser, base, "small", gzip=False)}
                finally:
                    browser.close()
        finally:
            proc.terminate()
            proc.wait(10)

    base_med = median(results["2 KB"])
    base_p95 = percentile(results["2 KB"], 95)
    rows = []
    for label, times in results.items():
        med, p95 = median(times), percentile(times, 95)
        rows.append([label, len(times), med, p95, max(times), f"{med / base_med:.2f}x", f"{p95 / base_p95:.2f}x"])
    print(f"# browser keystroke-to-paint ({machine()}; chromium {CHROMIUM})\n")
    print(table(["document", "keys", "median ms", "p95 ms", "max ms", "median vs 2 KB", "p95 vs 2 KB"], rows))
    print()
    print(table(["editor page (/d/{doc} + assets)", "Accept-Encoding", "transferred bytes", "decoded bytes"],
                [[visit, enc, t, d] for enc, visits in sizes.items() for visit, (t, d) in visits.items()]))


if __name__ == "__main__":
    main()
