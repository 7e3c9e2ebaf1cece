"""Sealed messages (collab.seal): what a seal vouches for, and every way one fails to open."""

from __future__ import annotations

import json
import math

import pytest

from collab.seal import MAX_AGE, Seal, new_key

OPS = [[2, [7, "🌍 é"], "c1", "op-2", {"anchor": 9, "head": 9}], [3, [10, "!"], "c1", "op-3", None]]
NOW = 1_800_000_000.25


def sealed(seal: Seal, doc: str = "notes 📝", prev: str = "op-1", at: float = NOW) -> dict:
    """A message sealed by ``seal``, as another process receives it (through JSON)."""
    msg = seal.seal({"t": "ops", "ops": json.loads(json.dumps(OPS))}, doc, prev, at)
    return json.loads(json.dumps(msg, ensure_ascii=False))


def test_a_sealed_message_opens_with_the_same_key_and_says_what_it_follows():
    seal = Seal(new_key())
    opened = seal.open(sealed(seal), "notes 📝", NOW + 1)
    assert opened is not None and (opened.prev, opened.at) == ("op-1", NOW)


@pytest.mark.parametrize("change", [
    lambda m: m["ops"][0][1].__setitem__(1, "😈 é"),  # the content
    lambda m: m["ops"][0].__setitem__(0, 3),  # a revision
    lambda m: m["ops"][1].__setitem__(3, "op-x"),  # an id
    lambda m: m["ops"][0][4].__setitem__("head", 8),  # a cursor
    lambda m: m["ops"].pop(),  # an op left out
    lambda m: m.__setitem__("prev", "op-0"),  # another history
    lambda m: m.__setitem__("at", NOW - 1),  # another time
    lambda m: m.__setitem__("mac", m["mac"][:-1] + ("0" if m["mac"][-1] != "0" else "1")),
    lambda m: m.pop("mac"),
    lambda m: m.__setitem__("mac", 7),
    lambda m: m.__setitem__("at", int(NOW)),  # not a float as sealed
    lambda m: m.__setitem__("prev", None),
    lambda m: m.__setitem__("ops", "not a list"),
])
def test_a_changed_message_does_not_open(change):
    seal = Seal(new_key())
    msg = sealed(seal)
    change(msg)
    assert seal.open(msg, "notes 📝", NOW) is None


def test_a_seal_opens_for_its_own_document_and_key_only():
    seal = Seal(new_key())
    assert seal.open(sealed(seal), "notes", NOW) is None
    assert Seal(new_key()).open(sealed(seal), "notes 📝", NOW) is None


def test_a_stale_or_future_seal_does_not_open():
    seal = Seal(new_key())
    assert seal.open(sealed(seal), "notes 📝", NOW + MAX_AGE - 1) is not None
    assert seal.open(sealed(seal), "notes 📝", NOW + MAX_AGE + 1) is None
    assert seal.open(sealed(seal), "notes 📝", NOW - MAX_AGE - 1) is None
    for at in (math.inf, math.nan):
        msg = sealed(seal)
        msg["at"] = at
        assert seal.open(msg, "notes 📝", NOW) is None


def test_a_message_that_cannot_come_from_a_process_does_not_open():
    seal = Seal(new_key())
    msg = sealed(seal)
    msg["ops"] = [[2, [7, "x"], "c", "i", {"a": object()}]]  # not JSON at all
    assert seal.open(msg, "notes 📝", NOW) is None


def test_a_key_too_short_or_too_long_for_blake2b_is_refused():
    for key in (b"short", b"k" * 65):
        with pytest.raises(ValueError, match="16 to 64 bytes"):
            Seal(key)


SUBMIT = {"t": "submit", "doc": "notes 📝", "items": [
    {"client": "c1", "rev": 4, "op": [3, "🌍 é", -1], "id": "op-9", "cursor": None, "name": "Zoë 🦊"}]}


def sent(seal: Seal, sender: str = "p1", to: str = "p2", at: float = NOW) -> dict:
    """A message to one process sealed by ``seal``, as its receiver gets it (through JSON, ``proc`` stamped)."""
    msg = seal.seal_to(json.loads(json.dumps(SUBMIT)), sender, to, at)
    return dict(json.loads(json.dumps(msg, ensure_ascii=False)), proc=sender)


def test_a_message_to_one_process_opens_for_that_process_from_its_sender_only():
    seal = Seal(new_key())
    assert seal.open_from(sent(seal), "p1", "p2", NOW + 1)
    assert not seal.open_from(sent(seal), "p3", "p2", NOW)  # someone posing as p1
    assert not seal.open_from(sent(seal), "p1", "p3", NOW)  # sent to another process
    assert not Seal(new_key()).open_from(sent(seal), "p1", "p2", NOW)  # another deployment
    assert not seal.open_from(sent(seal), "p1", "p2", NOW + MAX_AGE + 1)
    assert not seal.open_from(sent(seal), "p1", "p2", NOW - MAX_AGE - 1)


@pytest.mark.parametrize("change", [
    lambda m: m["items"][0].__setitem__("op", [3, "😈 é", -1]),  # the edit
    lambda m: m["items"][0].__setitem__("client", "c2"),  # its author
    lambda m: m.__setitem__("doc", "notes"),  # its document
    lambda m: m.__setitem__("t", "refused"),  # the kind of message
    lambda m: m.__setitem__("extra", 1),  # a field added
    lambda m: m.pop("items"),  # a field left out
    lambda m: m.__setitem__("at", NOW - 1),
    lambda m: m.__setitem__("at", int(NOW)),
    lambda m: m.__setitem__("at", math.nan),
    lambda m: m.__setitem__("mac", m["mac"][:-1] + ("0" if m["mac"][-1] != "0" else "1")),
    lambda m: m.pop("mac"),
    lambda m: m.__setitem__("mac", None),
    lambda m: m["items"][0].__setitem__("cursor", {"a": object()}),  # not JSON at all
])
def test_a_changed_message_to_one_process_does_not_open(change):
    seal = Seal(new_key())
    msg = sent(seal)
    change(msg)
    assert not seal.open_from(msg, "p1", "p2", NOW)


def test_an_announcement_seal_does_not_open_as_a_message_to_one_process():
    seal = Seal(new_key())
    msg = sealed(seal)
    assert not seal.open_from(dict(msg, proc="p1"), "p1", "p2", NOW)
