"""A document's title: set by hand, or else its first Markdown heading.

Pure functions, like :mod:`collab.ot`. Only the first :data:`HEAD_CHARS`
code points are looked at, so finding the heading never walks a large
document.
"""

from __future__ import annotations

import re

#: How far into a document its first heading is looked for.
HEAD_CHARS = 4096
#: The longest title kept (a set title is refused above it; a heading is cut).
MAX_TITLE = 200

_ATX = re.compile(r" {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*")
_FENCE = re.compile(r" {0,3}(```|~~~)")


def first_heading(head: str) -> str | None:
    """The text of the first ATX heading (``# Title``) in ``head``, outside code fences; ``None`` if none."""
    fenced = False
    for line in head[:HEAD_CHARS].splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if fenced:
            continue
        m = _ATX.fullmatch(line)
        if m and m.group(2).strip():
            return clean(m.group(2))
    return None


def clean(title: str) -> str:
    """``title`` on one line, without control characters, trimmed to :data:`MAX_TITLE`."""
    text = "".join(ch if ch.isprintable() else " " for ch in title)
    return " ".join(text.split())[:MAX_TITLE]


def check_title(title: object) -> str | None:
    """A title to set (``None`` or ``""``: back to the first heading); ``ValueError`` saying what is wrong."""
    if title is None:
        return None
    if not isinstance(title, str):
        raise ValueError('"title" must be a string, or null to use the first heading')
    if len(title) > MAX_TITLE:
        raise ValueError(f"a title is at most {MAX_TITLE} characters")
    try:
        title.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("a title must be valid Unicode (no lone surrogates)") from None
    return clean(title) or None
