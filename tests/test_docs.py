"""The documentation stands on its own: every relative link in a Markdown
file leads to a file inside the repository, and the wire specification is
the repository's own docs/protocol.md.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"\]\(([^)\s]+)\)")
SKIP = ("node_modules", "dist", ".git", "build", ".venv")  # .venv: a virtualenv inside the checkout


def markdown_files() -> list[Path]:
    return [p for p in ROOT.rglob("*.md") if not any(part in SKIP for part in p.relative_to(ROOT).parts)]


def test_relative_links_stay_inside_the_repository():
    broken = []
    for md in markdown_files():
        for target in LINK.findall(md.read_text(encoding="utf-8")):
            if re.match(r"^[a-z]+:", target) or target.startswith("#"):
                continue  # a web address or an anchor on the same page
            path = (md.parent / target.split("#")[0]).resolve()
            if not path.is_relative_to(ROOT) or not path.exists():
                broken.append(f"{md.relative_to(ROOT)}: {target}")
    assert not broken, "links that leave the repository or lead nowhere:\n" + "\n".join(broken)


def test_protocol_spec_is_in_the_repository():
    spec = (ROOT / "docs" / "protocol.md").read_text(encoding="utf-8")
    for needed in ["welcome", "ack", "presence", "leave", "batch", "bad_message", "bad_op", "bad_rev", "stale_rev",
                   "forbidden", "too_large", "rate_limited", "1008", "1009", "1011", "1012", "1013", "4001", "4003",
                   "4004", "/healthz", "max_message_bytes"]:
        assert needed in spec, f"docs/protocol.md does not specify {needed}"
    for md in markdown_files():
        assert "shared/PROTOCOL.md" not in md.read_text(encoding="utf-8"), f"{md.relative_to(ROOT)} points outside"


def test_every_environment_variable_is_in_the_readme():
    config = (ROOT / "src" / "collab" / "config.py").read_text(encoding="utf-8")
    names = set(re.findall(r'"((?:COLLAB_[A-Z0-9_]+)|PORT|DATABASE_URL|REDIS_URL|WEB_CONCURRENCY)"', config))
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    missing = sorted(n for n in names if f"`{n}`" not in readme)
    assert not missing, f"settings missing from the README's configuration table: {missing}"
