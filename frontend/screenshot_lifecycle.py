"""Make docs/screenshot-home.png, docs/screenshot-trash.png and
docs/screenshot-share.png: the home page listing documents by title (one set
by hand) with their size, Rename and Move to trash, and the search field; its
Trash with Restore; and the editor's Share menu listing the document's links
with Revoke.

Starts a throwaway server with a secret (fresh data directory, ephemeral
port), stores a few documents, mints a few links, and captures both pages.

    python frontend/screenshot_lifecycle.py [output-directory]

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

SECRET = "screenshot-secret-" + "x" * 32
DOCS = {
    "release-plan": "# Release plan 0.3\n\nPreview, titles, a trash.\n",
    "calm-heron-piqkbg": "Ideas without a heading yet.\n",
    "team-retro": "# Retrospective, week 49\n\nWhat went well.\n",
    "onboarding": "# Onboarding checklist\n\n- [ ] accounts\n",
    "old-draft": "# Release plan 0.2 (draft)\n\nSuperseded.\n",
}


def main(out_dir: Path) -> None:
    from collab.auth import mint_token

    owner = mint_token(SECRET, ["*"], "edit", name="Ada Lovelace")
    with serving(COLLAB_SECRET=SECRET) as base:
        headers = {"Authorization": f"Bearer {owner}"}
        for doc, text in DOCS.items():
            httpx.put(f"{base}/api/docs/{doc}/text", content=text.encode(), headers=headers,
                      timeout=10).raise_for_status()
        httpx.post(f"{base}/api/docs/team-retro/title", json={"title": "Team retro, week 49"}, headers=headers,
                   timeout=10).raise_for_status()
        httpx.delete(f"{base}/api/docs/old-draft", headers=headers, timeout=10).raise_for_status()
        grace = mint_token(SECRET, ["release-plan"], "edit", name="Grace Hopper")
        for role in ("read", "edit"):
            httpx.post(f"{base}/api/docs/release-plan/share", json={"role": role},
                       headers={"Authorization": f"Bearer {grace}"}, timeout=10).raise_for_status()
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            ctx = browser.new_context(viewport={"width": 1000, "height": 560})
            ctx.add_init_script("localStorage.setItem('collab.user', "
                                "JSON.stringify({name: 'Ada Lovelace', color: '#e03131'}));")
            page = ctx.new_page()
            page.goto(f"{base}/#token={quote(owner)}")
            page.wait_for_selector("#doc-rows tr")
            page.fill("#doc-search", "re")
            page.wait_for_function("() => document.fonts.status === 'loaded'")
            page.screenshot(path=str(out_dir / "screenshot-home.png"))
            print("wrote", out_dir / "screenshot-home.png")
            page.click("#trash-btn")
            page.wait_for_selector("#trash-rows tr")
            page.screenshot(path=str(out_dir / "screenshot-trash.png"))
            print("wrote", out_dir / "screenshot-trash.png")
            page.goto(f"{base}/d/release-plan#token={quote(owner)}")
            page.wait_for_selector("#conn-status[data-state=connected]")
            page.click("#copy-link")
            page.wait_for_selector("#share-menu[data-state=ready] #share-list li")
            page.screenshot(path=str(out_dir / "screenshot-share.png"))
            print("wrote", out_dir / "screenshot-share.png")
            browser.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs")
