"""Make docs/screenshot-split.png, docs/screenshot-view.png and
docs/screenshot-dark.png: the rendered view beside the editor, alone, and
the split view in the dark theme.

Starts a throwaway server (fresh data directory, ephemeral port), stores one
document, and captures the editor page in each mode.

    python frontend/screenshot_modes.py [output-directory]

Needs python playwright and Debian's chromium at /usr/bin/chromium (or
COLLAB_CHROMIUM).
"""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright

from screenshot import ARGS, CHROMIUM, ROOT, serving

DOC = "release-plan"
TEXT = """# Release plan — 0.3

Everyone edits this page at once; the **rendered view** updates as you type.
See the [protocol notes](https://example.org/protocol) for details.

## Checklist

- [x] Preview with tables, task lists and code
- [x] Dark mode that follows the system
- [ ] Titles and a trash for deleted documents

## Timeline

| Week | Goal                 | Owner |
| ---- | -------------------- | ----- |
| 49   | Preview and export   | Ada   |
| 50   | Revocable share links | Grace |
| 51   | Release              | Both  |

> Large documents stay fast: a keystroke costs the size of the edit.

```python
def transform(a, b):
    \"\"\"Rebase operation a over b.\"\"\"
    return [x for x in a if x]
```
"""


def main(out_dir: Path) -> None:
    with serving() as base:
        httpx.put(f"{base}/api/docs/{DOC}/text", content=TEXT.encode(), timeout=10).raise_for_status()
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            for mode, scheme, name in (("split", "light", "split"), ("view", "light", "view"),
                                       ("split", "dark", "dark")):
                shoot(browser, base, mode, scheme, out_dir / f"screenshot-{name}.png")
            browser.close()


def shoot(browser, base: str, mode: str, scheme: str, out: Path) -> None:
    width = 1400 if mode == "split" else 1000
    ctx = browser.new_context(viewport={"width": width, "height": 760}, color_scheme=scheme)
    ctx.add_init_script("localStorage.setItem('collab.user', JSON.stringify({name: 'Ada Lovelace', color: '#e03131'}));")
    page = ctx.new_page()
    page.goto(f"{base}/d/{DOC}")
    page.wait_for_selector("#conn-status[data-state=connected]")
    page.click(f"#mode-{mode}")
    page.wait_for_selector("#preview-body table")
    page.evaluate("() => { const v = collab.view; v.dispatch({selection: {anchor: 120}}); }")
    page.wait_for_function("() => document.fonts.status === 'loaded'")
    page.screenshot(path=str(out))
    ctx.close()
    print("wrote", out)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs")
