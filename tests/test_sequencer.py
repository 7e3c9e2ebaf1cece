"""The sans-I/O sequencer, called directly: ordering, transforms, op ids, history and positions."""

from __future__ import annotations

import pytest

from collab import ot
from collab.protocol import Cursor, ProtocolError, Submit, User
from collab.sequencer import Sequencer
from collab.store.base import StoredOp


class Who:
    """A client with a selection, as the sequencer sees one."""

    def __init__(self, id: str = "c") -> None:
        self.id = id
        self.cursor: Cursor | None = None
        self.cursor_rev = 0
        self.transformed = 0
        self.user: User | None = None


def seq_with(*texts: str, depth: int = 100, max_chars: int = 1000) -> Sequencer:
    """A sequencer whose revisions 1.. each append one of ``texts``."""
    seq = Sequencer(0, "", [], depth, max_chars)
    for i, t in enumerate(texts):
        n = len(seq.text)
        seq.apply(Submit(i, [n, t] if n else [t], f"s{i}", None), None)
    return seq


def refused(seq: Sequencer, sub: Submit, author=None) -> str:
    with pytest.raises(ProtocolError) as exc:
        seq.apply(sub, author)
    return exc.value.code


def test_a_submit_on_the_current_revision_is_applied_as_is():
    seq = Sequencer(0, "", [], 10, 100)
    a = Who("a")
    entry = seq.apply(Submit(0, ["h😀"], "x1", Cursor(2, 2)), a)
    assert entry == StoredOp(1, ["h😀"], "a", "x1")
    assert (seq.rev, str(seq.text), seq.ids) == (1, "h😀", {"x1": 1})
    assert (a.cursor, a.cursor_rev, a.transformed) == (Cursor(2, 2), 1, 0)


def test_a_late_submit_is_transformed_through_what_came_after_its_base():
    seq = seq_with("ab", "cd")  # rev 2: "abcd"
    a = Who("a")
    entry = seq.apply(Submit(1, [1, "🙂", 1], "late", Cursor(2, 2)), a)
    assert isinstance(entry, StoredOp) and entry.rev == 3 and entry.op == ot.normalize([1, "🙂", 3])
    assert str(seq.text) == "a🙂bcd" and a.transformed == 1 and a.cursor == Cursor(2, 2)


def test_the_same_id_again_is_a_resend_and_new_content_under_it_is_refused():
    seq = seq_with("ab")
    first = seq.apply(Submit(1, [2, "x"], "id", None), None)
    assert isinstance(first, StoredOp) and first.rev == 2
    seq.apply(Submit(2, [3, "y"], "other", None), None)
    assert seq.apply(Submit(1, [2, "x"], "id", None), None) == 2  # as first sent
    assert refused(seq, Submit(1, [2, "z"], "id", None)) == "bad_op"  # other content
    assert refused(seq, Submit(2, [3, "x"], "id", None)) == "bad_op"  # based on its own revision
    assert seq.rev == 3 and str(seq.text) == "abxy"


def test_refusals_name_the_problem_and_change_nothing():
    seq = seq_with("ab", max_chars=3)
    assert refused(seq, Submit(5, [2, "x"], "r1", None)) == "bad_rev"
    assert refused(seq, Submit(1, [3, "x"], "r2", None)) == "bad_op"
    assert refused(seq, Submit(1, [2, "xy"], "r3", None)) == "too_large"
    assert (seq.rev, str(seq.text), len(seq.history)) == (1, "ab", 1)


def test_trim_keeps_the_depth_and_moves_selections_before_their_ops_go():
    seq = seq_with("a", "b", "c", depth=2)
    who = Who()
    who.cursor, who.cursor_rev = Cursor(0, 0), 0
    seq.apply(Submit(3, ["😀", 3], "front", None), None)
    seq.trim([who])
    assert seq.history_start == 2 and [e.rev for e in seq.history] == [3, 4]
    assert set(seq.ids) == {"s2", "front"}
    assert who.cursor == Cursor(4, 4) and who.cursor_rev == 4  # inserts at a caret push it on
    assert refused(seq, Submit(1, [1, "x"], "old", None)) == "stale_rev"
    assert seq.move_cursor(Cursor(0, 0), 1) is None  # no longer kept


def test_rollback_undoes_a_batch_selections_included():
    seq = seq_with("ab")
    who = Who()
    saved = seq.save([who])
    seq.apply(Submit(1, [2, "c"], "c1", Cursor(3, 3)), who)
    seq.rollback(saved)
    assert (seq.rev, str(seq.text), seq.ids, len(seq.history)) == (1, "ab", {"s0": 1}, 1)
    assert (who.cursor, who.cursor_rev) == (None, 0)


def test_rollback_after_the_history_was_trimmed_meanwhile_undoes_exactly_the_batch():
    """A batch in flight is saved before it; an earlier batch that lands meanwhile trims the history's
    start. Rolling back by the saved length of the history left ops of the undone batch in it, out of
    step with the text: later submits were checked and transformed against the wrong entries."""
    seq = seq_with("a", "b", "c", "d", depth=3)
    who = Who()
    saved = seq.save([who])
    seq.apply(Submit(4, [4, "🐝"], "lost1", None), who)
    seq.apply(Submit(5, [5, "🦊"], "lost2", None), who)
    seq.trim([who])  # the earlier batch landed: the history keeps about three ops
    assert seq.history_start > 0
    seq.rollback(saved)
    assert (seq.rev, str(seq.text)) == (4, "abcd")
    assert [e.rev for e in seq.history] == list(range(seq.history_start + 1, 5))
    assert "lost1" not in seq.ids and "lost2" not in seq.ids
    entry = seq.apply(Submit(4, [4, "🌍"], "next", None), None)
    assert (entry.rev, str(seq.text)) == (5, "abcd🌍")
    late = seq.apply(Submit(3, [3, "!"], "late", None), None)  # based before the undone batch: transformed once
    assert (late.rev, str(seq.text)) == (6, "abc!d🌍")


def test_rollback_past_a_trimmed_start_keeps_no_older_history():
    seq = seq_with("a", "b", depth=1)
    saved = seq.save([])
    for i in range(3):
        seq.apply(Submit(2 + i, [2 + i, "🐝"], f"x{i}", None), None)
    seq.trim([])
    assert seq.history_start > 2
    seq.rollback(saved)
    assert (seq.rev, str(seq.text), len(seq.history), seq.history_start) == (2, "ab", 0, 2)
    assert seq.apply(Submit(2, [2, "c"], "y", None), None).rev == 3
    assert str(seq.text) == "abc"


def test_integrate_takes_only_the_next_revision():
    seq = seq_with("ab")
    with pytest.raises(ValueError):
        seq.integrate(StoredOp(3, [2, "x"], "p", "far"))
    with pytest.raises(ValueError):
        seq.integrate(StoredOp(2, [5, "x"], "p", "wrong-length"))
    assert (seq.rev, str(seq.text)) == (1, "ab")
    seq.integrate(StoredOp(2, [2, "x"], "p", "next"))
    assert (seq.rev, str(seq.text), seq.ids["next"]) == (2, "abx", 2)


def test_selections_move_lazily_when_read():
    seq = seq_with("abc")
    who = Who()
    who.cursor, who.cursor_rev = Cursor(1, 3), 1
    seq.apply(Submit(1, ["XY", 3], "p", None), None)
    assert seq.cursor_now(who) == Cursor(3, 5) and who.cursor_rev == 2
