"""Make docs/screenshot.png: two people editing one document side by side.

Starts a throwaway server (fresh data directory, ephemeral port), opens two
browser windows as "Ada" and "Grace", types into both, and captures them
next to each other in one image.

    python frontend/screenshot.py [output.png]

Needs python playwright and Debian's chromium at /usr/bin/chromium (or
COLLAB_CHROMIUM).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import httpx
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("COLLAB_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

DOC = "meeting-notes"
TEXT_ADA = """# Team sync — week 48

## Agenda
1. Release 0.2 status
2. Offline editing demo
3. Open questions

## Notes
- The editor now keeps typing while **offline** and syncs on reconnect.
- Carets of everyone in the document are shown live.
"""
TEXT_GRACE = "- Undo only touches *your own* edits. \n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(**settings: str) -> Iterator[str]:
    """A collab server on a free port with a fresh data folder and ``settings`` (COLLAB_* variables); its base URL."""
    port = free_port()
    with tempfile.TemporaryDirectory() as data:
        env = dict(os.environ, COLLAB_DATA_DIR=data, COLLAB_PORT=str(port), COLLAB_HOST="127.0.0.1", **settings)
        code = "from collab.config import Settings; from collab.server import run; run(Settings.from_env())"
        proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            base = f"http://127.0.0.1:{port}"
            for _ in range(200):
                try:
                    if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.05)
            yield base
        finally:
            proc.terminate()
            proc.wait(10)


def main(out: Path) -> None:
    with serving() as base:
        shoot(base, out)


def open_as(browser, base: str, name: str, color: str):
    ctx = browser.new_context(viewport={"width": 900, "height": 600}, device_scale_factor=1)
    user = json.dumps({"name": name, "color": color})
    ctx.add_init_script(f"localStorage.setItem('collab.user', {json.dumps(user)});")
    page = ctx.new_page()
    page.goto(f"{base}/d/{DOC}")
    page.wait_for_selector("#conn-status[data-state=connected]")
    return page


def shoot(base: str, out: Path) -> None:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        ada = open_as(browser, base, "Ada Lovelace", "#e03131")
        grace = open_as(browser, base, "Grace Hopper", "#1971c2")
        ada.click(".cm-content")
        ada.keyboard.insert_text(TEXT_ADA)
        grace.wait_for_function("() => collab.view.state.doc.toString().includes('Carets')")
        grace.click(".cm-content")
        grace.keyboard.press("Control+End")
        grace.keyboard.insert_text(TEXT_GRACE)
        grace.keyboard.type("- Next: share links")
        # Ada selects the word "offline" so her selection shows on Grace's screen.
        ada.wait_for_function("() => collab.view.state.doc.toString().includes('share links')")
        ada.evaluate("""() => {
            const v = collab.view, t = v.state.doc.toString(), i = t.indexOf('Offline editing');
            v.dispatch({selection: {anchor: i, head: i + 'Offline editing'.length}});
            v.focus();
        }""")
        for page in (ada, grace):
            page.wait_for_function("() => collab.client.saved && document.querySelector('.cm-remote-caret')")
        time.sleep(0.4)
        left = out.with_suffix(".ada.png")
        right = out.with_suffix(".grace.png")
        ada.screenshot(path=str(left))
        grace.screenshot(path=str(right))
        # Put both screenshots side by side with a gap, in a page of their own.
        page = browser.new_context(viewport={"width": 1840, "height": 640}).new_page()
        page.set_content(
            "<html><body style='margin:0;background:#d0d7de;display:flex;gap:20px;padding:20px;'>"
            f"<img src='data:image/png;base64,{b64(left)}' style='box-shadow:0 4px 16px rgba(0,0,0,.18);border-radius:6px'>"
            f"<img src='data:image/png;base64,{b64(right)}' style='box-shadow:0 4px 16px rgba(0,0,0,.18);border-radius:6px'>"
            "</body></html>"
        )
        page.screenshot(path=str(out))
        left.unlink()
        right.unlink()
        browser.close()


def b64(path: Path) -> str:
    import base64

    return base64.b64encode(path.read_bytes()).decode()


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "screenshot.png")
    print("wrote", sys.argv[1] if len(sys.argv) > 1 else "docs/screenshot.png")
