"""DocText must behave exactly like ``ot.apply`` on a plain ``str``.

Tiny chunk sizes (1-5 code points) and ``small=0`` force the chunked
representation, so chunk boundaries, splits, emptied chunks and switches
between the plain and the chunked form are all hit by short texts.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collab import ot
from collab.doctext import DocText

# ASCII, BMP non-ASCII, astral (emoji) and combining characters, no lone surrogates.
ALPHABET = st.sampled_from(list("ab \n") + ["é", "中", "😀", "👍", "🏳", "\u0301", "\U0001f9d1"])
TEXT = st.text(alphabet=ALPHABET, max_size=40)


@st.composite
def op_for(draw: st.DrawFn, length: int) -> ot.Operation:
    """A random operation spanning ``length`` characters (not necessarily normalized)."""
    op: ot.Operation = []
    left = length
    while left > 0 or draw(st.booleans()):
        kind = draw(st.sampled_from(["retain", "delete", "insert"] if left else ["insert"]))
        if kind == "insert":
            op.append(draw(st.text(alphabet=ALPHABET, min_size=1, max_size=12)))
            if not left and draw(st.booleans()):
                break
        else:
            n = draw(st.integers(1, left))
            op.append(n if kind == "retain" else -n)
            left -= n
    return op


@st.composite
def text_and_ops(draw: st.DrawFn) -> tuple[str, list[ot.Operation]]:
    text = draw(TEXT)
    ops: list[ot.Operation] = []
    length = len(text)
    for _ in range(draw(st.integers(1, 8))):
        op = draw(op_for(length))
        ops.append(op)
        length = ot.target_length(op)
    return text, ops


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text_and_ops(), st.integers(1, 5), st.sampled_from([0, 3, 10, 10_000]))
def test_matches_ot_apply(case: tuple[str, list[ot.Operation]], chunk: int, small: int) -> None:
    text, ops = case
    doc = DocText(text, small=small, chunk=chunk)
    expected = text
    assert str(doc) == expected and len(doc) == len(expected)
    for op in ops:
        expected = ot.apply(expected, op)
        doc.apply(op)
        assert len(doc) == len(expected)
        assert doc.utf8_bytes == len(expected.encode()), "the byte count follows every edit"
        assert str(doc) == expected


@settings(max_examples=200, deadline=None)
@given(TEXT, st.integers(1, 4), st.data())
def test_bad_ops_raise_like_ot_apply_and_change_nothing(text: str, chunk: int, data: st.DataObject) -> None:
    doc = DocText(text, small=0, chunk=chunk)
    wrong = len(text) + data.draw(st.sampled_from([-1, 1, 5] if text else [1, 5]))
    bad: ot.Operation = ["x", wrong] if wrong > 0 else ["x", "y"]
    assert wrong != len(text)
    with pytest.raises(ot.InvalidOperation) as exc:
        ot.apply(text, bad)
    with pytest.raises(ot.InvalidOperation) as mine:
        doc.apply(bad)
    assert str(mine.value) == str(exc.value)
    assert str(doc) == text and len(doc) == len(text)
    for junk in (1.5, True, None, [1]):
        op = [junk, len(text)] if text else [junk]
        with pytest.raises(ot.InvalidOperation):
            doc.apply(op)  # type: ignore[list-item]
        assert str(doc) == text


def test_zero_and_empty_components_are_no_ops_like_ot_apply() -> None:
    doc = DocText("abcdef", small=0, chunk=2)
    op: ot.Operation = [0, "", 3, "X", 0, -1, 2]
    doc.apply(op)
    assert str(doc) == ot.apply("abcdef", op) == "abcXef"


def test_chunk_boundaries_exhaustively() -> None:
    """Every splice position and length on a text of emoji cut into 3-character chunks."""
    base = "😀a👍b中c🏳d" * 3
    for pos in range(len(base) + 1):
        for dl in range(0, min(len(base) - pos, 7) + 1):
            for ins in ("", "Z", "🧑🧑🧑🧑"):
                if not dl and not ins:
                    continue
                op = ot.from_splice(len(base), pos, dl, ins)
                doc = DocText(base, small=0, chunk=3)
                doc.apply(op)
                assert str(doc) == ot.apply(base, op), (pos, dl, ins)
                doc.apply(ot.invert(op, base))
                assert str(doc) == base


def test_large_text_default_parameters() -> None:
    """The real thresholds: a 300 KB text switches to chunks and back."""
    big = ("lorem ipsum 😀 " * 20_000)[:300_000]
    doc = DocText(big)
    assert doc._chunks is not None
    op = ot.from_splice(len(big), 150_000, 10, "héllo")
    doc.apply(op)
    expected = ot.apply(big, op)
    assert str(doc) == expected
    shrink = ot.from_splice(len(expected), 100, len(expected) - 200, "")
    doc.apply(shrink)
    expected = ot.apply(expected, shrink)
    assert str(doc) == expected and doc._chunks is None
    grow = ot.from_splice(len(expected), 50, 0, big)
    doc.apply(grow)
    assert str(doc) == ot.apply(expected, grow) and doc._chunks is not None


@settings(max_examples=150, deadline=None)
@given(text_and_ops(), st.integers(1, 4), st.sampled_from([0, 10_000]))
def test_copy_is_independent(case: tuple[str, list[ot.Operation]], chunk: int, small: int) -> None:
    text, ops = case
    doc = DocText(text, small=small, chunk=chunk)
    doc.apply(ops[0])
    saved = doc.copy()
    before = str(doc)
    for op in ops[1:]:
        doc.apply(op)
    assert str(saved) == before and len(saved) == len(before)
    expected = before
    for op in ops[1:]:  # the copy is editable on its own and ends up the same
        saved.apply(op)
        expected = ot.apply(expected, op)
    assert str(saved) == expected == str(doc)
    assert saved.utf8_bytes == len(expected.encode())


@settings(max_examples=100, deadline=None)
@given(TEXT, st.integers(1, 5), st.lists(st.tuples(st.integers(-3, 3), st.integers(0, 2), st.text(alphabet=ALPHABET, max_size=3)), max_size=60))
def test_typing_near_the_last_edit(text: str, chunk: int, moves: list[tuple[int, int, str]]) -> None:
    """Splices close to each other: the fast path inside the last edited chunk, and its edges."""
    doc = DocText(text, small=0, chunk=chunk)
    expected = text
    caret = len(text) // 2
    for step, dl, ins in moves:
        caret = max(0, min(len(expected), caret + step))
        dl = min(dl, len(expected) - caret)
        if not dl and not ins:
            continue
        op = ot.from_splice(len(expected), caret, dl, ins)
        doc.apply(op)
        expected = ot.apply(expected, op)
        assert len(doc) == len(expected)
        assert doc.utf8_bytes == len(expected.encode()), "the fast path counts bytes too"
        caret += len(ins)
    assert str(doc) == expected
