"""Keeping a client's ``op`` messages under the server's frame limit
(``welcome.max_message_bytes``; a larger frame is closed with 1009): the
limit a client uses, what it learns from a close for size, and cutting an
operation into pieces that fit.

The same rules as the browser client's ``frontend/src/split.js`` and
``client.js``, so both clients send the same pieces (checked by
``tests/conformance/client.json``).  Sizes are UTF-8 bytes of compact JSON
(``separators=(",", ":")``, non-ASCII written as is).  Pure module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from . import ot
from .clientevents import Pending, TooLarge
from .ot import Operation
from .protocol import CLOSE_TOO_BIG

__all__ = ["Split", "FrameLimit", "json_bytes", "json_string_bytes", "split_op", "dumps",
           "DEFAULT_MAX_MESSAGE_BYTES", "MIN_MESSAGE_BYTES"]

#: Frame limit used until a ``welcome`` announces the server's.
DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024
#: Never split below this, whatever closes are seen.
MIN_MESSAGE_BYTES = 1024
#: Room for digits that grow when an operation is transformed and resent.
SIZE_SLACK = 64
#: The close code a client library reports when the connection dropped without a close frame.
CLOSE_ABNORMAL = 1006

#: Room kept in the head for its trailing retain (and a comma).
TAIL_RETAIN = 20

_SHORT_ESCAPES = frozenset((8, 9, 10, 12, 13))


def dumps(value: Any) -> str:
    """Compact JSON as the clients send it (UTF-8 text, no spaces)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def json_bytes(value: Any) -> int:
    """UTF-8 bytes of :func:`dumps` (``value``)."""
    return len(dumps(value).encode("utf-8", "surrogatepass"))


def _char_cost(c: str) -> int:
    """UTF-8 bytes of one code point inside a JSON string."""
    n = ord(c)
    if n < 0x80:
        if n in (0x22, 0x5C):
            return 2
        if n >= 0x20:
            return 1
        return 2 if n in _SHORT_ESCAPES else 6
    if n < 0x800:
        return 2
    if 0xD800 <= n <= 0xDFFF:
        return 6  # a lone surrogate is written as \uXXXX
    return 3 if n < 0x10000 else 4


def _prefix(s: str, budget: float) -> tuple[int, int]:
    """The longest prefix of ``s`` whose escaped bytes fit in ``budget``: (code points, bytes)."""
    used = 0
    for i, c in enumerate(s):
        cost = _char_cost(c)
        if used + cost > budget:
            return i, used
        used += cost
    return len(s), used


def json_string_bytes(s: str) -> int:
    """UTF-8 bytes of ``s`` as a JSON string, quotes included."""
    return 2 + _prefix(s, float("inf"))[1]


@dataclass
class Split:
    """``compose(head, tail) == op``; ``tail`` is ``None`` when ``op`` fits whole.

    ``head`` applies to the same document as ``op``, ``tail`` to the result
    of ``head``; ``nbytes`` is the JSON size of ``head``.
    """

    head: Operation
    tail: Operation | None
    nbytes: int


def split_op(op: Operation, budget: int) -> Split:
    """Split ``op`` (valid) so that its JSON takes at most ``budget`` bytes.

    The head always makes progress (at least one component or one
    character), whatever the budget; cost is linear in the head's size.
    """
    head: Operation = []
    used = 2  # []
    consumed = produced = 0
    base_len = sum(abs(c) for c in op if isinstance(c, int))
    changed = False
    for k, c in enumerate(op):
        comma = 1 if head else 0
        room = budget - used - TAIL_RETAIN
        if isinstance(c, int):
            cost = len(str(c)) + comma
            if cost > room and changed:
                return _cut(op, head, used, k, None, consumed, produced, base_len)
            head.append(c)
            changed = changed or c < 0
            used += cost
            consumed += abs(c)
            produced += max(c, 0)
            continue
        cps, nbytes = _prefix(c, room - comma - 2)
        if cps == len(c):
            head.append(c)
            changed = True
            used += comma + 2 + nbytes
            produced += cps
            continue
        if cps == 0:
            if changed:
                return _cut(op, head, used, k, None, consumed, produced, base_len)
            cps = _prefix(c, 6)[0]  # progress whatever the budget: what 6 bytes hold, one character at least
        part = c[:cps]
        head.append(part)
        used += comma + json_string_bytes(part)
        return _cut(op, head, used, k + 1, c[cps:], consumed, produced + cps, base_len)
    return Split(op, None, used)


def _cut(op: Operation, head: Operation, used: int, k: int, rest: str | None,
         consumed: int, produced: int, base_len: int) -> Split:
    """Close ``head`` with a retain over the untouched rest; the tail retains
    the head's result and carries on from component ``k`` (after ``rest``)."""
    if not rest and all(isinstance(x, int) and x > 0 for x in op[k:]):
        return Split(op, None, json_bytes(op))  # only retains left: it fits after all
    h = list(head)
    if base_len - consumed > 0:
        h.append(base_len - consumed)
        used += 1 + len(str(base_len - consumed))
    t: Operation = []
    if produced > 0:
        t.append(produced)
    if rest:
        t.append(rest)
    t.extend(op[k:])
    return Split(ot.normalize(h), ot.normalize(t), used)


@dataclass
class FrameLimit:
    """The largest ``op`` message a client sends, in bytes of JSON.

    The server's announced limit (else the client's default; ``forced``
    overrides both, for debugging), lowered by connections closed for size.
    """

    client: int = DEFAULT_MAX_MESSAGE_BYTES
    forced: int | None = None
    server: int | None = None
    learned: int | None = None

    @property
    def bytes(self) -> int:
        base = self.forced or self.server or self.client
        if self.learned is not None:
            base = min(base, self.learned)
        return max(MIN_MESSAGE_BYTES, base)

    def first_piece(self, op: Operation, rev: int, op_id: str, cursor: dict | None) -> Split:
        """The part of ``op`` to send now as message ``{type, rev, op, id, cursor}``.

        ``nbytes`` is the whole message's size; ``tail`` stays for later.
        """
        overhead = json_bytes({"type": "op", "rev": rev, "op": [], "id": op_id, "cursor": cursor}) - 2
        part = split_op(op, self.bytes - overhead - SIZE_SLACK)
        return Split(part.head, part.tail, part.nbytes + overhead)

    def closed(self, code: int, pending: Pending) -> TooLarge | None:
        """The connection that carried ``pending`` closed with ``code``: was it for size?

        1009 is; so is an abnormal close (1006) twice for the same operation
        when its frame is large, since the server may reset the connection
        while the frame it refuses is still being written.  If so, the limit
        is halved below the refused frame.
        """
        too_large = code == CLOSE_TOO_BIG
        if not too_large and code == CLOSE_ABNORMAL and pending.nbytes > MIN_MESSAGE_BYTES:
            pending.suspect += 1
            too_large = pending.suspect >= 2
        if not too_large:
            return None
        pending.refusals = pending.sends  # a frame refused for size was not applied
        before = self.bytes
        self.learned = max(MIN_MESSAGE_BYTES, min(before, pending.nbytes // 2))
        return TooLarge(code, pending.nbytes, self.bytes, before <= MIN_MESSAGE_BYTES)
