"""The operation turning one text into another, as a fine per-code-point
diff: how a client rebases its local edits on a snapshot after a long
absence, and how a script sets a whole text with minimal changes.
"""

from __future__ import annotations

from . import ot
from .ot import Operation

__all__ = ["diff_op"]


def diff_op(old: str, new: str) -> Operation:
    """The operation turning ``old`` into ``new`` (code points, normalized).

    Uses diff-match-patch when installed, with a common prefix/suffix diff as
    fallback (and for very large texts, where a fine diff is not worth it).
    """
    if old == new:
        return [len(old)] if old else []
    try:
        if len(old) + len(new) > 2_000_000:
            raise ImportError
        from diff_match_patch import diff_match_patch
    except ImportError:
        return ot.diff_splice(old, new)
    dmp = diff_match_patch()
    dmp.Diff_Timeout = 0.5
    op: Operation = []
    for kind, chunk in dmp.diff_main(old, new, False):
        if chunk:
            op.append(len(chunk) if kind == 0 else chunk if kind == 1 else -len(chunk))
    return ot.normalize(op)
