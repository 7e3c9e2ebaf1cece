"""The text of an open document, behind a small interface.

:class:`DocText` is what the hub edits. Its methods are the only way the
hub touches text, so its representation can change without the hub
noticing.
"""

from __future__ import annotations

from . import ot


class DocText:
    """A document's text; :meth:`apply` edits it in place."""

    __slots__ = ("_text",)

    def __init__(self, text: str = "") -> None:
        self._text = text

    def apply(self, op: ot.Operation) -> None:
        """Apply ``op`` (its base length must be ``len(self)``)."""
        self._text = ot.apply(self._text, op)

    def __len__(self) -> int:
        return len(self._text)

    def __str__(self) -> str:
        return self._text
