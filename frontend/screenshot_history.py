"""Make docs/screenshot-history.png and docs/screenshot-authors.png: the
history panel showing an earlier revision with what changed since, and the
live text coloured by author.

Starts a throwaway server (fresh data directory, ephemeral port, a secret so
that each writer's token names them), writes a document in a few editing
sessions by two people, and captures the editor page.

    python frontend/screenshot_history.py [output-directory]

Needs python playwright and Debian's chromium at /usr/bin/chromium (or
COLLAB_CHROMIUM).
"""

from __future__ import annotations

import sys
from pathlib import Path
from urllib.parse import quote

import httpx
from playwright.sync_api import sync_playwright

from screenshot import ARGS, CHROMIUM, ROOT, serving

from collab.auth import mint_token

DOC = "release-plan"
SECRET = "screenshot-history-" + "s" * 32
VERSIONS = [  # each one splice (as PUT makes it), so every writer's text survives into the last
    ("Ada Lovelace", "# Release plan\n\nEveryone edits this page at once.\n\n## Checklist\n\n"
     "- [x] Preview with tables and code\n- [ ] Dark mode\n"),
    ("Grace Hopper", "# Release plan\n\nEveryone edits this page at once.\n\n## Checklist\n\n"
     "- [x] Preview with tables and code\n- [x] Dark mode that follows the system\n- [ ] History and restore\n"),
    ("Ada Lovelace", "# Release plan\n\nEveryone edits this page at once.\n\n## Checklist\n\n"
     "- [x] Preview with tables and code\n- [x] Dark mode that follows the system\n- [ ] History and restore\n"
     "\n## Owners\n\nAda: history, Grace: authorship colours\n"),
]


def main(out_dir: Path) -> None:
    with serving(COLLAB_SECRET=SECRET, COLLAB_SESSION_GAP="-1") as base:
        for name, text in VERSIONS:
            token = mint_token(SECRET, [DOC], "edit", name=name)
            httpx.put(f"{base}/api/docs/{DOC}/text", content=text.encode(),
                      headers={"Authorization": f"Bearer {token}"}, timeout=10).raise_for_status()
        viewer = mint_token(SECRET, [DOC], "edit", name="Ada Lovelace")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = open_page(browser, f"{base}/d/{DOC}#token={quote(viewer)}")
            page.click("#history-btn")
            page.locator(".history-pick[data-rev='1']").click()
            page.wait_for_selector("#history[data-state=ready][data-rev='1']")
            shot(page, out_dir / "screenshot-history.png")
            page.keyboard.press("Escape")
            page.click("#authors-btn")
            page.wait_for_function("() => document.querySelectorAll('#authors-legend .author-chip').length >= 2")
            shot(page, out_dir / "screenshot-authors.png")
            browser.close()


def open_page(browser, url: str):
    ctx = browser.new_context(viewport={"width": 1280, "height": 720})
    ctx.add_init_script("localStorage.setItem('collab.user', JSON.stringify({name: 'Ada Lovelace', color: '#e03131'}));")
    page = ctx.new_page()
    page.goto(url)
    page.wait_for_selector("#conn-status[data-state=connected]")
    return page


def shot(page, out: Path) -> None:
    page.wait_for_function("() => document.fonts.status === 'loaded'")
    page.screenshot(path=str(out))
    print("wrote", out)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs")
