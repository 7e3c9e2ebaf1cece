"""Tests for collab.ot: unit cases per function plus hypothesis properties.

Documents and inserts deliberately contain astral characters (emoji, skin
tone modifiers, musical symbols) and CJK, because a character is one code
point and an off-by-one in UTF-16 thinking would show up there.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collab import ot
from collab.ot import InvalidOperation

# ---------------------------------------------------------------- validate


def test_validate_accepts_and_returns_same_list() -> None:
    op = [2, "héllo 😀", -3, 1]
    assert ot.validate(op) is op
    assert ot.validate(op, 6) is op
    assert ot.validate([], 0) == []
    assert ot.validate(["👍🏽"], 0) == ["👍🏽"]


@pytest.mark.parametrize(
    ("op", "reason"),
    [
        ([1, 0, 2], "component 1: 0 is not a valid component (use a positive retain, a negative delete or a non-empty insert)"),
        ([1, ""], "component 1: the empty string is not a valid component"),
        ([1.5], "component 0: floats are not allowed"),
        ([2.0], "component 0: floats are not allowed"),
        ([1, True], "component 1: booleans are not allowed"),
        ([False], "component 0: booleans are not allowed"),
        ([None], "component 0: null is not allowed"),
        ([1, [1]], "component 1: nested arrays are not allowed"),
        ([{"a": 1}], "component 0: an object is not a valid component"),
        (["ok", "a\ud83d"], "component 1: insert contains a lone surrogate U+D83D at character 1"),
        (["\udc00"], "component 0: insert contains a lone surrogate U+DC00 at character 0"),
    ],
)
def test_validate_rejects_bad_components(op: list, reason: str) -> None:
    with pytest.raises(InvalidOperation) as exc:
        ot.validate(op)
    assert str(exc.value).startswith(reason)


@pytest.mark.parametrize("op", [None, "abc", 5, {"op": [1]}, (1, 2)])
def test_validate_rejects_non_lists(op: object) -> None:
    with pytest.raises(InvalidOperation, match="must be an array"):
        ot.validate(op)


BIG = 10**4300  # as many digits as Python turns into a str


@pytest.mark.parametrize(
    "op",
    [
        [ot.MAX_LENGTH + 1],
        [-(ot.MAX_LENGTH + 1)],
        ["😀", BIG],
        [BIG, BIG],  # each alone is a valid int; the sum has 4,301 digits
        [ot.MAX_LENGTH, 1],  # the sum exceeds what any document holds
        [ot.MAX_LENGTH, "🦊"],  # so does the result
        [1.8446744073709552e19],  # a JSON integer above 64 bits, as orjson reads it
        [float("inf")],  # a JSON integer above a double's range, read as a float
    ],
    ids=["component", "delete", "4300-digit", "4301-digit-sum", "span", "target", "float-above-64-bits", "infinity"],
)
def test_counts_beyond_max_length_are_refused(op: list) -> None:
    for check in (ot.validate, ot.checked):
        with pytest.raises(InvalidOperation) as info:
            check(op)
        assert "larger than any document" in str(info.value) or "no document holds more" in str(info.value)
        assert len(str(info.value)) < 200  # never the number itself


def test_max_length_itself_is_a_valid_count() -> None:
    assert ot.checked([ot.MAX_LENGTH]) == ([ot.MAX_LENGTH], ot.MAX_LENGTH, ot.MAX_LENGTH)
    assert ot.validate([ot.MAX_LENGTH - 1, "😀"]) == [ot.MAX_LENGTH - 1, "😀"]


def test_validate_wrong_length() -> None:
    with pytest.raises(InvalidOperation) as exc:
        ot.validate([2, "x", -3], 7)
    assert str(exc.value) == "operation spans 5 characters but the document has 7"
    with pytest.raises(InvalidOperation, match="spans 1 character but the document has 0"):
        ot.validate([1], 0)
    with pytest.raises(InvalidOperation, match="spans 0 characters"):
        ot.validate(["x"], 3)


def test_invalid_operation_is_value_error() -> None:
    assert issubclass(InvalidOperation, ValueError)


# ---------------------------------------------------------------- normalize & lengths


@pytest.mark.parametrize(
    ("op", "expected"),
    [
        ([], []),
        ([1, 2, 3], [6]),
        (["a", "b"], ["ab"]),
        ([-1, -2], [-3]),
        ([-1, "a"], ["a", -1]),
        ([-1, "a", -1, "b"], ["ab", -2]),
        (["a", -1, "b", 2], ["ab", -1, 2]),
        ([0, 2, "", -0], [2]),
        ([3, "x", 2], [3, "x", 2]),  # trailing retain kept
        ([1, -1, 1], [1, -1, 1]),
    ],
)
def test_normalize(op: list, expected: list) -> None:
    assert ot.normalize(op) == expected
    assert ot.normalize(expected) == expected


def test_normalize_does_not_mutate() -> None:
    op = [1, 1, -1, "a"]
    ot.normalize(op)
    assert op == [1, 1, -1, "a"]


@pytest.mark.parametrize(
    "op",
    [
        [], [5], ["a"], [-1], [3, "x", 2], [2, "😀👍🏽", -3, 1], [1, -1, 1], ["é", -2],
        [1, 2], ["a", "b"], [-1, -2], [-1, "a"], [2, -1, "中", 3], ["a", -1, "b"],
    ],
)
def test_checked_is_normalize_of_validate(op: list) -> None:
    want = ot.normalize(ot.validate(list(op)))
    got = ot.checked(op)[0]
    assert got == want
    if want == op:
        assert got is op  # canonical already: no copy
    else:
        assert got is not op


@pytest.mark.parametrize(
    "op",
    [None, "ab", (1, 2), [1, 0], [1, ""], [1.5], [True], [None], [[1]], [{"a": 1}], ["ok", "a\ud83d"], [1, "\udc00"], [-1, "\udc00"]],
)
def test_checked_raises_what_validate_raises(op: object) -> None:
    with pytest.raises(InvalidOperation) as want:
        ot.normalize(ot.validate(op))
    with pytest.raises(InvalidOperation) as got:
        ot.checked(op)
    assert str(got.value) == str(want.value)


def test_lengths_count_code_points() -> None:
    op = [2, "😀👍🏽𝄞", -3, 1]
    assert ot.base_length(op) == 6
    assert ot.target_length(op) == 3 + 4
    assert ot.base_length([]) == ot.target_length([]) == 0
    assert ot.lengths(op) == (6, 7) and ot.lengths([]) == (0, 0)


def test_is_noop() -> None:
    assert ot.is_noop([])
    assert ot.is_noop([5])
    assert ot.is_noop([2, 3])
    assert not ot.is_noop(["a"])
    assert not ot.is_noop([1, -1])


# ---------------------------------------------------------------- apply


def test_apply_basic() -> None:
    assert ot.apply("hello world", [6, -5, "there"]) == "hello there"
    assert ot.apply("", ["abc"]) == "abc"
    assert ot.apply("abc", [-3]) == ""
    assert ot.apply("abc", [3]) == "abc"
    assert ot.apply("", []) == ""


def test_apply_astral() -> None:
    assert ot.apply("a😀b", [1, -1, "👍🏽", 1]) == "a👍🏽b"
    assert ot.apply("𝄞中文", [2, "!", 1]) == "𝄞中!文"


def test_apply_wrong_length() -> None:
    with pytest.raises(InvalidOperation, match="spans 2 characters but the document has 3"):
        ot.apply("abc", [2])
    with pytest.raises(InvalidOperation):
        ot.apply("ab", [5])
    with pytest.raises(InvalidOperation):
        ot.apply("ab", [1, 1.5])


# ---------------------------------------------------------------- compose


def test_compose_basic() -> None:
    a = [3, "X", 2]  # abc|de -> abcXde
    b = [1, -3, 2]  # abcXde -> ade... delete bcX
    assert ot.compose(a, b) == [1, -2, 2]
    assert ot.apply("abcde", ot.compose(a, b)) == ot.apply(ot.apply("abcde", a), b)


def test_compose_insert_then_delete_cancels() -> None:
    assert ot.compose(["abc"], [-3]) == []
    assert ot.compose([1, "xy", 1], [1, -2, 1]) == [2]


def test_compose_length_mismatch() -> None:
    with pytest.raises(InvalidOperation, match="cannot compose"):
        ot.compose([2, "x"], [2])


# ---------------------------------------------------------------- transform


def test_transform_tie_break_first_argument_first() -> None:
    a, b = [1, "A", 1], [1, "B", 1]
    a2, b2 = ot.transform(a, b)
    assert a2 == [1, "A", 2]
    assert b2 == [2, "B", 1]
    assert ot.apply(ot.apply("xy", a), b2) == "xABy"
    assert ot.apply(ot.apply("xy", b), a2) == "xABy"
    # Swapped arguments: now b's insert goes first.
    b3, a3 = ot.transform(b, a)
    assert ot.apply(ot.apply("xy", a), b3) == "xBAy"


def test_transform_overlapping_deletes() -> None:
    d = "abcdef"
    a, b = [1, -3, 2], [2, -3, 1]
    a2, b2 = ot.transform(a, b)
    assert ot.apply(ot.apply(d, a), b2) == ot.apply(ot.apply(d, b), a2) == "af"
    assert a2 == [1, -1, 1]
    assert b2 == [1, -1, 1]


def test_transform_insert_inside_deleted_range_survives() -> None:
    d = "abcdef"
    a = [3, "X", 3]
    b = [1, -4, 1]
    a2, b2 = ot.transform(a, b)
    assert ot.apply(ot.apply(d, a), b2) == ot.apply(ot.apply(d, b), a2) == "aXf"


# ot.js's own answers (npm ``ot`` 0.0.15, ``TextOperation.transform`` of
# ``fromJSON`` of each side) for operations that are not normalized: an insert
# after a delete, adjacent retains, adjacent inserts. Recorded with "中" (one
# UTF-16 unit, as ot.js counts) and run here with an emoji in its place (one
# code point, as collab counts): the counts are the same.
OTJS_NON_NORMALIZED = [
    ([-1, "x", 1], ["y", 2], ["x", 1, -1, 1], [1, "y", 1]),
    ([1, 1, "x", -1], [2, "y", -1], [2, "x", 1], [3, "y"]),
    ([-2, "ab", "c", 1], [1, -1, "z", 1], ["abc", -1, 2], [3, "z", 1]),
    (["q", -1, "r", 2], [-1, "s", 2], ["qr", 3], [2, "s", 2]),
    (
        [-2, " aé", 3, "x", "bb", 2, "é中 ", -2],
        [-1, "b", "a", 3, "ab", 2, 2, -1],
        [" aé", 2, -1, 5, "xbb", 2, "é中 ", -1],
        [3, "ba", 2, "ab", 9],
    ),
]


def _emoji(op: list) -> list:
    return [c.replace("中", "😀") if isinstance(c, str) else c for c in op]


@pytest.mark.parametrize("a, b, a2, b2", OTJS_NON_NORMALIZED)
def test_transform_of_non_normalized_input_gives_otjs_answer(a: list, b: list, a2: list, b2: list) -> None:
    a, b, a2, b2 = map(_emoji, (a, b, a2, b2))
    raw_a, raw_b = list(a), list(b)
    assert [list(x) for x in ot.transform(a, b)] == [a2, b2]
    assert (a, b) == (raw_a, raw_b)  # the caller's lists are not changed
    # The same answer as for the normalized operations, which is what ot.js transforms.
    assert [list(x) for x in ot.transform(ot.normalize(a), ot.normalize(b))] == [a2, b2]


def test_transform_length_mismatch() -> None:
    with pytest.raises(InvalidOperation, match="cannot transform"):
        ot.transform([2], [3])


# ---------------------------------------------------------------- invert


def test_invert() -> None:
    d = "a😀bc"
    op = [1, -1, "XY", 1, -1]
    inv = ot.invert(op, d)
    assert inv == [1, "😀", -2, 1, "c"]
    assert ot.apply(ot.apply(d, op), inv) == d
    with pytest.raises(InvalidOperation):
        ot.invert([2], "abc")


# ---------------------------------------------------------------- cursors


@pytest.mark.parametrize(
    ("index", "op", "expected"),
    [
        (0, ["ab", 3], 2),  # insert exactly at the index pushes it right
        (2, [2, "xy", 1], 4),  # same, mid-document
        (3, [3, "xy"], 5),  # same, at the end
        (1, [2, "xy", 1], 1),  # insert after the index: unchanged
        (3, [1, "xy", 2], 5),  # insert before the index
        (4, [1, -2, 2], 2),  # delete before the index pulls it left
        (2, [1, -3, 1], 1),  # index inside the deleted range clamps to its start
        (1, [2, -2], 1),  # delete after the index: unchanged
        (5, [5], 5),
        (9, [2, -1, 2], 4),  # out-of-range input is clamped to the document
        (-3, ["ab", 3], 2),
    ],
)
def test_transform_index(index: int, op: list, expected: int) -> None:
    assert ot.transform_index(index, op) == expected


def test_transform_cursor() -> None:
    # Selection "bcd" in "abcde"; someone inserts "XX" at 0 and deletes "d".
    op = ["XX", 3, -1, 1]
    assert ot.transform_cursor(1, 4, op) == (3, 5)
    assert ot.transform_cursor(4, 1, op) == (5, 3)  # backwards selection
    assert ot.transform_cursor(2, 2, [-5]) == (0, 0)


# ---------------------------------------------------------------- from_splice


def test_from_splice() -> None:
    assert ot.from_splice(5, 2, 1, "xy") == [2, "xy", -1, 2]
    assert ot.from_splice(0, 0, 0, "😀") == ["😀"]
    assert ot.from_splice(3, 0, 3, "") == [-3]
    assert ot.from_splice(3, 3, 0, "z") == [3, "z"]
    assert ot.from_splice(3, 1, 0, "") == [3]
    assert ot.apply("hello", ot.from_splice(5, 1, 3, "EYY")) == "hEYYo"
    for args in [(3, 2, 2, ""), (3, -1, 0, "x"), (3, 0, -1, "")]:
        with pytest.raises(InvalidOperation):
            ot.from_splice(*args)


# ---------------------------------------------------------------- properties

ALPHABET = st.sampled_from(list("ab \n") + ["é", "中", "文", "😀", "👍", "🏽", "𝄞", "🇫", "\u200d"])
docs = st.text(ALPHABET, max_size=30)
inserts = st.text(ALPHABET, min_size=1, max_size=5)


components = st.one_of(
    st.integers(-4, 4), inserts, st.just(""), st.just("\ud800"), st.just(1.0), st.just(True), st.none(),
    st.sampled_from([ot.MAX_LENGTH, -ot.MAX_LENGTH, ot.MAX_LENGTH + 1, 2**64, 10**4300, float("inf"), 1.8e19]),
)


@given(st.lists(components, max_size=6))
def test_checked_matches_the_two_step_path(op: list) -> None:
    try:
        want: object = ot.normalize(ot.validate(list(op)))
    except InvalidOperation as exc:
        want = str(exc)
    try:
        got: object = ot.checked(op)[0]
    except InvalidOperation as exc:
        got = str(exc)
    assert got == want
    if isinstance(want, list):  # checked: the same op, with its lengths from the same walk
        assert ot.checked(op) == (want, *ot.lengths(want))


@st.composite
def ops_for(draw: st.DrawFn, doc_len: int, normal: bool = False) -> list:
    """A random valid operation spanning ``doc_len``; possibly non-normalized."""
    op: list = []
    remaining = doc_len
    while True:
        if remaining == 0 and not draw(st.booleans()):
            break
        kind = draw(st.sampled_from(["retain", "delete", "insert"] if remaining else ["insert"]))
        if kind == "insert":
            op.append(draw(inserts))
        else:
            n = remaining - draw(st.integers(0, remaining - 1))
            remaining -= n
            op.append(n if kind == "retain" else -n)
    return ot.normalize(op) if normal else op


@st.composite
def doc_and_op(draw: st.DrawFn) -> tuple[str, list]:
    d = draw(docs)
    return d, draw(ops_for(len(d)))


@st.composite
def doc_and_two_concurrent(draw: st.DrawFn) -> tuple[str, list, list]:
    d = draw(docs)
    return d, draw(ops_for(len(d))), draw(ops_for(len(d)))


@st.composite
def doc_and_two_sequential(draw: st.DrawFn) -> tuple[str, list, list]:
    d = draw(docs)
    a = draw(ops_for(len(d)))
    return d, a, draw(ops_for(ot.target_length(a)))


PROPS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPS
@given(doc_and_op())
def test_prop_generated_ops_validate_and_lengths(case: tuple[str, list]) -> None:
    d, op = case
    assert ot.validate(op, len(d)) is op
    out = ot.apply(d, op)
    assert len(out) == ot.target_length(op)
    assert ot.lengths(op) == (len(d), len(out))


@PROPS
@given(doc_and_two_concurrent())
def test_prop_tp1(case: tuple[str, list, list]) -> None:
    d, a, b = case
    a2, b2 = ot.transform(a, b)
    assert ot.apply(ot.apply(d, a), b2) == ot.apply(ot.apply(d, b), a2)
    assert ot.normalize(a2) == a2
    assert ot.normalize(b2) == b2
    # compose(a, b') == compose(b, a') as effects
    assert ot.apply(d, ot.compose(a, b2)) == ot.apply(d, ot.compose(b, a2))


@PROPS
@given(doc_and_two_concurrent())
def test_prop_transform_takes_its_input_normalized(case: tuple[str, list, list]) -> None:
    """ot.js reads every operation normalized (fromJSON), so transform must answer as for the normalized pair."""
    _, a, b = case
    assert ot.transform(a, b) == ot.transform(ot.normalize(a), ot.normalize(b))


@PROPS
@given(doc_and_two_sequential())
def test_prop_compose(case: tuple[str, list, list]) -> None:
    d, a, b = case
    c = ot.compose(a, b)
    assert ot.apply(d, c) == ot.apply(ot.apply(d, a), b)
    assert ot.normalize(c) == c


@PROPS
@given(doc_and_op())
def test_prop_invert(case: tuple[str, list]) -> None:
    d, op = case
    inv = ot.invert(op, d)
    assert ot.apply(ot.apply(d, op), inv) == d
    assert ot.normalize(inv) == inv


@PROPS
@given(doc_and_op())
def test_prop_normalize(case: tuple[str, list]) -> None:
    d, op = case
    n = ot.normalize(op)
    assert ot.normalize(n) == n
    assert ot.apply(d, n) == ot.apply(d, op)
    assert ot.base_length(n) == ot.base_length(op)
    assert ot.target_length(n) == ot.target_length(op)
    assert all(c != 0 and c != "" for c in n)
    for x, y in zip(n, n[1:]):
        kx = "i" if isinstance(x, str) else ("r" if x > 0 else "d")
        ky = "i" if isinstance(y, str) else ("r" if y > 0 else "d")
        assert kx != ky
        assert (kx, ky) != ("d", "i")


@PROPS
@given(doc_and_op(), st.integers(-3, 40), st.integers(-3, 40))
def test_prop_cursor_in_range(case: tuple[str, list], anchor: int, head: int) -> None:
    d, op = case
    out = ot.apply(d, op)
    a2, h2 = ot.transform_cursor(anchor, head, op)
    assert 0 <= a2 <= len(out)
    assert 0 <= h2 <= len(out)
    assert (a2, h2) == (ot.transform_index(anchor, op), ot.transform_index(head, op))
    caret = ot.transform_index(anchor, op)
    assert ot.transform_cursor(anchor, anchor, op) == (caret, caret)


@PROPS
@given(docs, st.data())
def test_prop_cursor_keeps_its_character(d: str, data: st.DataObject) -> None:
    """A caret before a character that survives still sits before that character."""
    if not d:
        return
    i = data.draw(st.integers(0, len(d) - 1))
    pos = data.draw(st.integers(0, len(d)))
    ins = data.draw(inserts)
    op = ot.from_splice(len(d), pos, 0, ins)
    new = ot.transform_index(i, op)
    assert ot.apply(d, op)[new] == d[i]


@PROPS
@given(docs, st.data())
def test_prop_from_splice(d: str, data: st.DataObject) -> None:
    pos = data.draw(st.integers(0, len(d)))
    n = data.draw(st.integers(0, len(d) - pos))
    ins = data.draw(st.text(ALPHABET, max_size=4))
    op = ot.from_splice(len(d), pos, n, ins)
    assert ot.normalize(op) == op
    assert ot.apply(d, op) == d[:pos] + ins + d[pos + n :]


# ------------------------------------------------- transform fast path (single splices)


def _reference_transform_index(index: int, op: list) -> int:
    """transform_index as it was before the single-walk version: clamp to the base length first."""
    index = min(max(index, 0), ot.base_length(op))
    new = index
    for c in op:
        if isinstance(c, str):
            new += len(c)
        elif c > 0:
            index -= c
        else:
            new -= min(index, -c)
            index += c
        if index < 0:
            break
    return new


@st.composite
def splice_for(draw: st.DrawFn, doc_len: int) -> list:
    """A random normalized single splice ``[retain?, insert?, delete?, retain?]`` over ``doc_len``."""
    pos = draw(st.integers(0, doc_len))
    delete = draw(st.integers(0, doc_len - pos))
    insert = draw(st.one_of(st.just(""), inserts))
    return ot.from_splice(doc_len, pos, delete, insert)


@st.composite
def doc_and_two_splices(draw: st.DrawFn) -> tuple[str, list, list]:
    d = draw(docs)
    return d, draw(splice_for(len(d))), draw(splice_for(len(d)))


def _splices(doc_len: int, inserts: tuple[str, ...]) -> list[list]:
    return [
        ot.from_splice(doc_len, pos, delete, ins)
        for pos in range(doc_len + 1)
        for delete in range(doc_len - pos + 1)
        for ins in inserts
    ]


@pytest.mark.parametrize("doc_len", [0, 1, 2, 3, 4, 5])
def test_transform_fast_path_exhaustive_small(doc_len: int) -> None:
    """Every pair of splices on a short document: same result as the general walk."""
    ops = _splices(doc_len, ("", "😀", "a👍🏽"))
    doc = "x🇫é中\n𝄞"[:doc_len]
    for a in ops:
        assert ot._splice(a) is not None
        for b in ops:
            got = ot.transform(a, b)
            assert got == ot._transform_general(a, b), (a, b)
            a2, b2 = got
            assert ot.apply(ot.apply(doc, a), b2) == ot.apply(ot.apply(doc, b), a2)


@PROPS
@given(doc_and_two_splices())
def test_prop_transform_fast_path_matches_general(case: tuple[str, list, list]) -> None:
    d, a, b = case
    assert ot._splice(a) is not None and ot._splice(b) is not None
    a2, b2 = ot.transform(a, b)
    assert (a2, b2) == ot._transform_general(a, b)
    assert (a2, b2) == (ot.normalize(a2), ot.normalize(b2))
    assert ot.apply(ot.apply(d, a), b2) == ot.apply(ot.apply(d, b), a2)


@PROPS
@given(doc_and_two_concurrent())
def test_prop_transform_equals_general_on_any_ops(case: tuple[str, list, list]) -> None:
    """Non-normalized and multi-splice ops: transform still agrees with the general walk."""
    _, a, b = case
    assert ot.transform(a, b) == ot._transform_general(a, b)
    na, nb = ot.normalize(a), ot.normalize(b)
    assert ot.transform(na, nb) == ot._transform_general(na, nb)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ([1, 2], [3]),  # two retains: not normalized, still one splice
        ([-1, "x", 2], [3]),  # delete before insert: not the splice form
        ([1, "a", 1, "b", 1], [3]),  # two inserts
        ([1, -1, 1, -1], [4]),  # two deletes
        ([2], [3]),  # length mismatch
        ([True, 1], [2]),  # a bool is not a retain
        ([2, 3, 4], [9]),  # three components, none an insert or a delete
        ([1, 0, 2], [3]),  # a zero component
        ([1, -1, 0], [2]),
    ],
)
def test_transform_fast_path_falls_back(a: list, b: list) -> None:
    try:
        expected = ot._transform_general(a, b)
    except InvalidOperation as exc:
        with pytest.raises(InvalidOperation, match=str(exc)):
            ot.transform(a, b)
        return
    assert ot.transform(a, b) == expected


def test_transform_fast_path_examples() -> None:
    # a's insert inside b's deleted range: b2 keeps it, split around it.
    assert ot.transform([2, "😀", 3], [1, -3, 1]) == ([1, "😀", 1], [1, -1, 1, -2, 1])
    # b's insert inside a's deleted range.
    assert ot.transform([1, -3, 1], [2, "😀", 3]) == ([1, -1, 1, -2, 1], [1, "😀", 1])
    # same position, both insert and delete: a's insert first, deletes overlap.
    assert ot.transform(["a", -2, 1], ["b", -1, 2]) == (["a", 1, -1, 1], [1, "b", 1])


@PROPS
@given(doc_and_op(), st.integers(-3, 40))
def test_prop_transform_index_matches_clamp_first(case: tuple[str, list], index: int) -> None:
    _, op = case
    assert ot.transform_index(index, op) == _reference_transform_index(index, op)
    assert ot.transform_index(index, ot.normalize(op)) == _reference_transform_index(index, ot.normalize(op))


@given(st.text(alphabet=["a", "b", "😀", "𝄞", "中"], max_size=12), st.text(alphabet=["a", "b", "😀", "𝄞", "中"], max_size=12))
def test_diff_splice_turns_old_into_new_keeping_prefix_and_suffix(old, new):
    op = ot.diff_splice(old, new)
    assert ot.apply(old, op) == new
    assert ot.normalize(op) == op
    inserted = sum(len(c) for c in op if isinstance(c, str))
    assert inserted <= len(new)
    if old == new:
        assert ot.is_noop(op)
