"""Operational transformation core, in the ot.js ``TextOperation`` JSON format.

An *operation* is a list of components that walks the whole document from
left to right:

* a positive ``int`` ``n`` retains (skips over) ``n`` characters,
* a non-empty ``str`` ``s`` inserts ``s`` at the current position,
* a negative ``int`` ``-n`` deletes the next ``n`` characters.

Retains plus deletes must equal the length of the document the operation is
applied to (its *base length*); retains plus inserted characters give the
length of the result (its *target length*).  A *character* is one Unicode
code point, i.e. Python ``str`` indexing, so an emoji counts as one; lone
surrogates are rejected, and no count (a component, or what an operation
spans) may exceed :data:`MAX_LENGTH`.

The *normalized* (canonical) form is the one ot.js's builder produces:
adjacent components of one kind are merged, an insert adjacent to a delete
comes first, and there are no zero-length parts.  Trailing retains are kept,
because an operation must span the whole document.

Everything here is pure (no I/O, stdlib only) and matches ot.js semantics,
including the ``transform`` tie-break: when both operations insert at the
same position, the first argument's insert goes first.
"""

from __future__ import annotations

from typing import TypeAlias

__all__ = [
    "Component",
    "Operation",
    "InvalidOperation",
    "MAX_LENGTH",
    "validate",
    "checked",
    "normalize",
    "base_length",
    "target_length",
    "is_noop",
    "apply",
    "compose",
    "transform",
    "invert",
    "transform_index",
    "transform_cursor",
    "from_splice",
    "diff_splice",
]

Component: TypeAlias = int | str
Operation: TypeAlias = list[Component]

_HINT = "(use a positive retain, a negative delete or a non-empty insert)"

#: The largest count an operation may hold, in a component or in what it
#: spans: JavaScript's largest exact integer, so every client can count it,
#: and far above any document's size limit. Bounding it here keeps every
#: later step (the base-length check, error messages, storage, JSON) on
#: numbers of a few digits, whatever a client sends.
MAX_LENGTH = 2**53 - 1


class InvalidOperation(ValueError):
    """An operation is malformed or does not fit its document.

    The message is a precise reason meant to be shown to the user (it goes
    into the protocol's ``bad_op`` error).
    """


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _json_kind(value: object) -> str:
    """Name a rejected component in JSON terms, since ops arrive as JSON."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, (list, tuple)):
        return "a nested array"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


def _surrogate_reason(i: int, s: str) -> str:
    """Describe the first lone surrogate in ``s`` (error path only)."""
    for off, ch in enumerate(s):
        if 0xD800 <= ord(ch) <= 0xDFFF:
            return (
                f"component {i}: insert contains a lone surrogate "
                f"U+{ord(ch):04X} at character {off}"
            )
    return f"component {i}: insert is not valid Unicode"  # pragma: no cover


def _too_long(i: int) -> str:
    return f"component {i}: a count larger than any document ({MAX_LENGTH} characters at most)"


def validate(op: object, doc_len: int | None = None) -> Operation:
    """Check that ``op`` is a well-formed operation and return it.

    Each component must be a non-zero ``int`` (not ``bool``) or a non-empty
    ``str`` without lone surrogates, and neither a component nor the base or
    target length may exceed :data:`MAX_LENGTH`.  If ``doc_len`` is given, the operation
    must span exactly that many characters.  Raises :class:`InvalidOperation`
    with a user-facing reason otherwise.  The same list is returned, not
    normalized; call :func:`normalize` for the canonical form.
    """
    if type(op) is not list:
        raise InvalidOperation(
            f"an operation must be an array of components, not {_json_kind(op)}"
        )
    span = target = 0
    for i, c in enumerate(op):
        t = type(c)
        if t is int:
            if c > MAX_LENGTH or c < -MAX_LENGTH:
                raise InvalidOperation(_too_long(i))
            if c > 0:
                span += c
                target += c
            elif c < 0:
                span -= c
            else:
                raise InvalidOperation(f"component {i}: 0 is not a valid component {_HINT}")
        elif t is str:
            if not c:
                raise InvalidOperation(
                    f"component {i}: the empty string is not a valid component {_HINT}"
                )
            if not c.isascii():
                try:
                    c.encode("utf-8")
                except UnicodeEncodeError:
                    raise InvalidOperation(_surrogate_reason(i, c)) from None
            target += len(c)
        elif t is float:
            if abs(c) > MAX_LENGTH:  # also infinity: how an integer too large for a double arrives
                raise InvalidOperation(_too_long(i))
            raise InvalidOperation(f"component {i}: floats are not allowed")
        elif t is bool:
            raise InvalidOperation(f"component {i}: booleans are not allowed")
        elif c is None:
            raise InvalidOperation(f"component {i}: null is not allowed")
        elif isinstance(c, (list, tuple)):
            raise InvalidOperation(f"component {i}: nested arrays are not allowed")
        else:
            raise InvalidOperation(
                f"component {i}: {_json_kind(c)} is not a valid component {_HINT}"
            )
    if span > MAX_LENGTH or target > MAX_LENGTH:
        raise InvalidOperation(
            f"operation spans {_plural(span, 'character')} and leaves {target}: "
            f"no document holds more than {MAX_LENGTH}"
        )
    if doc_len is not None and span != doc_len:
        raise InvalidOperation(
            f"operation spans {_plural(span, 'character')} but the document has {doc_len}"
        )
    return op


class _Builder:
    """Accumulates components in normalized form (ot.js's builder rules)."""

    __slots__ = ("ops",)

    def __init__(self) -> None:
        self.ops: Operation = []

    def retain(self, n: int) -> None:
        if n <= 0:
            return
        ops = self.ops
        if ops and type(ops[-1]) is int and ops[-1] > 0:
            ops[-1] += n
        else:
            ops.append(n)

    def insert(self, s: str) -> None:
        if not s:
            return
        ops = self.ops
        if ops:
            last = ops[-1]
            if type(last) is str:
                ops[-1] = last + s
                return
            if last < 0:
                # Keep inserts before deletes: merge into an insert just
                # before the delete, or swap the new insert in front of it.
                if len(ops) >= 2 and type(ops[-2]) is str:
                    ops[-2] += s
                else:
                    ops[-1] = s
                    ops.append(last)
                return
        ops.append(s)

    def delete(self, n: int) -> None:
        """Delete ``n`` characters (``n`` given as a positive count)."""
        if n <= 0:
            return
        ops = self.ops
        if ops and type(ops[-1]) is int and ops[-1] < 0:
            ops[-1] -= n
        else:
            ops.append(-n)


def _bad_component(c: object) -> InvalidOperation:
    return InvalidOperation(f"{_json_kind(c)} is not a valid component {_HINT}")


def normalize(op: Operation) -> Operation:
    """Return the canonical form of ``op`` as a new list.

    Adjacent components of one kind are merged, an insert adjacent to a
    delete is put first, zero-length parts are dropped; trailing retains are
    kept.  Idempotent, and ``apply`` gives the same result either way.
    """
    b = _Builder()
    for c in op:
        t = type(c)
        if t is int:
            if c > 0:
                b.retain(c)
            else:
                b.delete(-c)
        elif t is str:
            b.insert(c)
        else:
            raise _bad_component(c)
    return b.ops


def checked(op: object) -> tuple[Operation, int, int]:
    """``normalize(validate(op))`` with its :func:`lengths`: ``(op, base_length, target_length)``.

    One walk when ``op`` is already canonical, and ``op`` itself is returned
    (what clients send nearly always is): the server calls this for every
    operation it receives, so it is written for speed; it checks the base
    length against the document right after. Anything else, including counts
    above :data:`MAX_LENGTH`, takes the two-step path, which gives the same
    result and the same errors.
    """
    if type(op) is list:
        last = 0  # kind of the previous component: 1 retain, 2 insert, 3 delete
        base = target = 0
        for c in op:
            t = type(c)
            if t is int:
                if c > 0:
                    if last == 1:
                        break
                    last = 1
                    base += c
                    target += c
                elif c < 0:
                    if last == 3:
                        break
                    last = 3
                    base -= c
                else:
                    break
            elif t is str:
                # Inserts go before deletes, and adjacent inserts merge: either is not canonical.
                if last >= 2 or not c:
                    break
                if not c.isascii():
                    try:
                        c.encode("utf-8")
                    except UnicodeEncodeError:  # a lone surrogate: validate names it
                        break
                last = 2
                target += len(c)
            else:
                break
        else:
            if base <= MAX_LENGTH and target <= MAX_LENGTH:
                return op, base, target
    op = normalize(validate(op))
    return (op, *lengths(op))


def base_length(op: Operation) -> int:
    """Length of the document ``op`` applies to: retains plus deletes."""
    n = 0
    for c in op:
        if type(c) is int:
            n += c if c > 0 else -c
    return n


def target_length(op: Operation) -> int:
    """Length of the document after ``op``: retains plus inserted characters."""
    n = 0
    for c in op:
        if type(c) is str:
            n += len(c)
        elif c > 0:
            n += c
    return n


def lengths(op: Operation) -> tuple[int, int]:
    """``(base_length(op), target_length(op))`` in one walk over ``op``."""
    base = target = 0
    for c in op:
        if type(c) is str:
            target += len(c)
        elif c > 0:
            base += c
            target += c
        else:
            base -= c
    return base, target


def is_noop(op: Operation) -> bool:
    """True if ``op`` changes nothing: it is empty or consists of retains only."""
    return all(type(c) is int and c > 0 for c in op)


def apply(text: str, op: Operation) -> str:
    """Apply ``op`` to ``text`` and return the new text.

    Raises :class:`InvalidOperation` if the operation's base length is not
    ``len(text)``.  Built from slices joined once, since this runs on the
    server for every operation.
    """
    parts: list[str] = []
    pos = 0
    for c in op:
        t = type(c)
        if t is int:
            if c > 0:
                parts.append(text[pos : pos + c])
                pos += c
            else:
                pos -= c
        elif t is str:
            parts.append(c)
        else:
            raise _bad_component(c)
    if pos != len(text):
        raise InvalidOperation(
            f"operation spans {_plural(pos, 'character')} but the document has {len(text)}"
        )
    return "".join(parts)


def compose(a: Operation, b: Operation) -> Operation:
    """Combine ``a`` then ``b`` into one operation with the same effect.

    ``apply(apply(s, a), b) == apply(s, compose(a, b))``.  Raises
    :class:`InvalidOperation` if ``b`` does not apply to ``a``'s result.
    """
    ta, bb = target_length(a), base_length(b)
    if ta != bb:
        raise InvalidOperation(
            f"cannot compose: the first operation produces {_plural(ta, 'character')} "
            f"but the second spans {bb}"
        )
    out = _Builder()
    ia = ib = 0
    na, nb = len(a), len(b)
    x: Component | None = a[0] if na else None
    y: Component | None = b[0] if nb else None
    while x is not None or y is not None:
        if type(x) is int and x < 0:  # a deletes: untouched by b
            out.delete(-x)
            ia += 1
            x = a[ia] if ia < na else None
            continue
        if type(y) is str:  # b inserts: independent of a
            out.insert(y)
            ib += 1
            y = b[ib] if ib < nb else None
            continue
        if x is None or y is None:  # pragma: no cover - lengths were checked
            raise InvalidOperation("cannot compose: operations have different lengths")
        if type(x) is int:  # a retains
            if y > 0:  # b retains
                if x > y:
                    out.retain(y)
                    x -= y
                    ib += 1
                    y = b[ib] if ib < nb else None
                elif x == y:
                    out.retain(x)
                    ia += 1
                    ib += 1
                    x = a[ia] if ia < na else None
                    y = b[ib] if ib < nb else None
                else:
                    out.retain(x)
                    y -= x
                    ia += 1
                    x = a[ia] if ia < na else None
            else:  # b deletes
                d = -y
                if x > d:
                    out.delete(d)
                    x -= d
                    ib += 1
                    y = b[ib] if ib < nb else None
                elif x == d:
                    out.delete(d)
                    ia += 1
                    ib += 1
                    x = a[ia] if ia < na else None
                    y = b[ib] if ib < nb else None
                else:
                    out.delete(x)
                    y += x
                    ia += 1
                    x = a[ia] if ia < na else None
        else:  # a inserts
            lx = len(x)
            if y > 0:  # b retains the inserted text
                if lx > y:
                    out.insert(x[:y])
                    x = x[y:]
                    ib += 1
                    y = b[ib] if ib < nb else None
                elif lx == y:
                    out.insert(x)
                    ia += 1
                    ib += 1
                    x = a[ia] if ia < na else None
                    y = b[ib] if ib < nb else None
                else:
                    out.insert(x)
                    y -= lx
                    ia += 1
                    x = a[ia] if ia < na else None
            else:  # b deletes the inserted text: both vanish
                d = -y
                if lx > d:
                    x = x[d:]
                    ib += 1
                    y = b[ib] if ib < nb else None
                elif lx == d:
                    ia += 1
                    ib += 1
                    x = a[ia] if ia < na else None
                    y = b[ib] if ib < nb else None
                else:
                    y += lx
                    ia += 1
                    x = a[ia] if ia < na else None
    return out.ops


def _splice(op: Operation) -> tuple[int, str, int, int] | None:
    """``(pos, insert, delete, tail)`` if ``op`` is one normalized splice, else None.

    The form is ``[retain?, insert?, delete?, retain?]`` with every present
    part non-empty: what a keystroke, a paste or a selection delete produces.
    """
    n = len(op)
    if n == 3:  # the usual keystroke: [pos, "x", tail] or [pos, -1, tail]
        c, m, t = op
        if type(c) is int and type(t) is int and c > 0 and t > 0:
            if type(m) is str:
                if m:
                    return c, m, 0, t
            elif type(m) is int and m < 0:
                return c, "", -m, t
    if n > 4 or not n:
        return (0, "", 0, 0) if not n else None
    c = op[0]
    if type(c) is int and c > 0:
        pos = c
        if n == 1:
            return pos, "", 0, 0
        c = op[1]
        i = 2
    else:
        pos = 0
        i = 1
    ins = ""
    if type(c) is str:
        if not c:
            return None
        ins = c
        if i == n:
            return pos, ins, 0, 0
        c = op[i]
        i += 1
    d = 0
    if type(c) is int and c < 0:
        d = -c
        if i == n:
            return pos, ins, d, 0
        c = op[i]
        i += 1
    if i == n and type(c) is int and c > 0 and (ins or d):
        return pos, ins, d, c
    return None


def _splice_out(r1: int, s: str, d1: int, r2: int, d2: int, r3: int) -> Operation:
    """The normalized form of ``retain r1, insert s, delete d1, retain r2, delete d2, retain r3``."""
    out: Operation = []
    if r1:
        out.append(r1)
    if s:
        out.append(s)
    if not r2:
        d1 += d2
        d2 = 0
    if d1:
        out.append(-d1)
    if r2:
        if out and type(out[-1]) is int and out[-1] > 0:
            out[-1] += r2
        else:
            out.append(r2)
        if d2:
            out.append(-d2)
    if r3:
        if out and type(out[-1]) is int and out[-1] > 0:
            out[-1] += r3
        else:
            out.append(r3)
    return out


def transform(a: Operation, b: Operation) -> tuple[Operation, Operation]:
    """Transform concurrent ``a`` and ``b`` (same base) against each other.

    Returns ``(a2, b2)`` with ``apply(apply(s, a), b2) ==
    apply(apply(s, b), a2)``.  When both insert at the same position, ``a``'s
    insert goes first (ot.js tie-break); the server passes the incoming
    operation as ``a`` so the later-arriving insert is placed first.

    Input is taken as its normalized form, as ot.js's ``TextOperation.fromJSON``
    takes it: the tie-break depends on where inserts stand (see
    :func:`_transform_general`).

    Two single splices (see :func:`_splice`), which is what typing produces,
    are transformed arithmetically; anything else, or a length mismatch,
    goes through :func:`_transform_general`. Both give identical results.
    """
    sa = _splice(a)
    if sa is not None:
        sb = _splice(b)
        if sb is not None:
            pa, ia, da, ta = sa
            pb, ib, db, tb = sb
            base = pa + da + ta
            if base == pb + db + tb:
                na, nb = len(ia), len(ib)
                ea, eb = pa + da, pb + db  # ends of the deleted ranges
                if ea < pb:  # a entirely before b
                    q = pb - da + na
                    return _splice_out(pa, ia, da, 0, 0, base - db + nb - ea), _splice_out(q, ib, db, 0, 0, tb)
                if eb < pa:  # b entirely before a
                    p = pa - db + nb
                    return _splice_out(p, ia, da, 0, 0, ta), _splice_out(pb, ib, db, 0, 0, base - da + na - eb)
                # a2 applies after b: a's insert goes before b's at the same position.
                p = pa if pa <= pb else pa - (pa - pb if pa - pb < db else db) + nb
                dl = (ea if ea < pb else pb) - pa
                if dl < 0:
                    dl = 0
                dr = ea - (pa if pa > eb else eb)
                if dr < 0:
                    dr = 0
                mid = nb if pa <= pb < ea else 0
                a2 = _splice_out(p, ia, dl, mid, dr, base - db + nb - p - dl - mid - dr)
                # b2 applies after a: b's insert goes after a's at the same position.
                q = pb if pb < pa else pb - (pb - pa if pb - pa < da else da) + na
                dl = (eb if eb < pa else pa) - pb
                if dl < 0:
                    dl = 0
                dr = eb - (pb if pb > ea else ea)
                if dr < 0:
                    dr = 0
                mid = na if pb < pa < eb else 0
                b2 = _splice_out(q, ib, dl, mid, dr, base - da + na - q - dl - mid - dr)
                return a2, b2
    return _transform_general(a, b)


def _transform_general(a: Operation, b: Operation) -> tuple[Operation, Operation]:
    """:func:`transform` for any two operations: a walk over both, component by component.

    An insert written after a delete (not normalized) would place its text
    after the other operation's inserts in the deleted range, where ot.js,
    which normalizes first, places it before: reaching one, the walk starts
    again on the normalized operations. Other non-canonical forms (adjacent
    parts of one kind, empty parts) give the same, normalized, result as
    they are.
    """
    la, lb = base_length(a), base_length(b)
    if la != lb:
        raise InvalidOperation(
            f"cannot transform: the operations span {la} and {lb} characters"
        )
    pa, pb = _Builder(), _Builder()
    ia = ib = 0
    na, nb = len(a), len(b)
    x: Component | None = a[0] if na else None
    y: Component | None = b[0] if nb else None
    while x is not None or y is not None:
        if type(x) is str:
            if ia and type(prev := a[ia - 1]) is int and prev < 0:
                return _transform_general(normalize(a), normalize(b))
            pa.insert(x)
            pb.retain(len(x))
            ia += 1
            x = a[ia] if ia < na else None
            continue
        if type(y) is str:
            if ib and type(prev := b[ib - 1]) is int and prev < 0:
                return _transform_general(normalize(a), normalize(b))
            pa.retain(len(y))
            pb.insert(y)
            ib += 1
            y = b[ib] if ib < nb else None
            continue
        if x is None or y is None:  # pragma: no cover - lengths were checked
            raise InvalidOperation("cannot transform: operations have different lengths")
        if x > 0 and y > 0:  # both retain
            if x > y:
                m = y
                x -= y
                ib += 1
                y = b[ib] if ib < nb else None
            elif x == y:
                m = x
                ia += 1
                ib += 1
                x = a[ia] if ia < na else None
                y = b[ib] if ib < nb else None
            else:
                m = x
                y -= x
                ia += 1
                x = a[ia] if ia < na else None
            pa.retain(m)
            pb.retain(m)
        elif x < 0 and y < 0:  # both delete the same text: nothing left to do
            if x < y:
                x -= y
                ib += 1
                y = b[ib] if ib < nb else None
            elif x == y:
                ia += 1
                ib += 1
                x = a[ia] if ia < na else None
                y = b[ib] if ib < nb else None
            else:
                y -= x
                ia += 1
                x = a[ia] if ia < na else None
        elif x < 0:  # a deletes, b retains
            d = -x
            if d > y:
                m = y
                x += y
                ib += 1
                y = b[ib] if ib < nb else None
            elif d == y:
                m = y
                ia += 1
                ib += 1
                x = a[ia] if ia < na else None
                y = b[ib] if ib < nb else None
            else:
                m = d
                y -= d
                ia += 1
                x = a[ia] if ia < na else None
            pa.delete(m)
        else:  # a retains, b deletes
            d = -y
            if x > d:
                m = d
                x -= d
                ib += 1
                y = b[ib] if ib < nb else None
            elif x == d:
                m = d
                ia += 1
                ib += 1
                x = a[ia] if ia < na else None
                y = b[ib] if ib < nb else None
            else:
                m = x
                y += x
                ia += 1
                x = a[ia] if ia < na else None
            pb.delete(m)
    return pa.ops, pb.ops


def invert(op: Operation, text: str) -> Operation:
    """Return the operation that undoes ``op``; ``text`` is what ``op`` applies to.

    ``apply(apply(text, op), invert(op, text)) == text``.
    """
    bl = base_length(op)
    if bl != len(text):
        raise InvalidOperation(
            f"operation spans {_plural(bl, 'character')} but the document has {len(text)}"
        )
    out = _Builder()
    pos = 0
    for c in op:
        if type(c) is str:
            out.delete(len(c))
        elif c > 0:
            out.retain(c)
            pos += c
        else:
            out.insert(text[pos : pos - c])
            pos -= c
    return out.ops


def transform_index(index: int, op: Operation) -> int:
    """Move a caret position through ``op`` (ot.js ``transformIndex``).

    An insert exactly at ``index`` pushes it right; a delete pulls it left,
    never past the start of the deleted range.  ``index`` is first clamped
    to ``[0, base_length(op)]`` so the result is always inside the new text.
    """
    if index < 0:
        index = 0
    new = index
    for c in op:
        if type(c) is str:
            new += len(c)
        elif c > 0:
            index -= c
        else:
            d = -c
            new -= index if index < d else d
            index -= d
        if index < 0:
            break
    # Past the end: the walk moved ``index`` and ``new`` alike, so clamping
    # afterwards (by what is left of ``index``) equals clamping to
    # ``base_length(op)`` first, without a second walk over the op.
    if index > 0:
        new -= index
    return new


def transform_cursor(anchor: int, head: int, op: Operation) -> tuple[int, int]:
    """Move a selection ``(anchor, head)`` through ``op``; each end as :func:`transform_index`."""
    moved = transform_index(anchor, op)
    if head == anchor:  # a caret, the usual case: one walk over the op
        return moved, moved
    return moved, transform_index(head, op)


def from_splice(doc_len: int, pos: int, delete: int, insert: str) -> Operation:
    """Build the normalized operation that deletes ``delete`` characters at
    ``pos`` and inserts ``insert`` there, in a document of ``doc_len``.

    A convenience for clients and benchmarks that think in splices.
    """
    if pos < 0 or delete < 0 or pos + delete > doc_len:
        raise InvalidOperation(
            f"splice at {pos} deleting {delete} does not fit a document of {doc_len}"
        )
    b = _Builder()
    b.retain(pos)
    b.insert(insert)
    b.delete(delete)
    b.retain(doc_len - pos - delete)
    return b.ops


def _common_prefix(a: str, b: str) -> int:
    """Length of the longest common prefix (binary search over C-level slice compares)."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _common_suffix(a: str, b: str, limit: int) -> int:
    """Length of the longest common suffix, at most ``limit``."""
    la, lb = len(a), len(b)
    lo, hi = 0, limit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[la - mid :] == b[lb - mid :]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def diff_splice(old: str, new: str) -> Operation:
    """The operation turning ``old`` into ``new`` by replacing only the middle that differs.

    Keeps the common prefix and suffix, so carets outside the change stay
    put. Not a minimal diff (see diff-match-patch for that), but O(n log n)
    in C-level compares, fine for a whole-document replace.
    """
    prefix = _common_prefix(old, new)
    suffix = _common_suffix(old, new, min(len(old), len(new)) - prefix)
    return from_splice(len(old), prefix, len(old) - prefix - suffix, new[prefix : len(new) - suffix])
