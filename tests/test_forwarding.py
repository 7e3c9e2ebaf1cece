"""The owner/forwarder messages (collab.forwarding): what is sent is read back as it was; anything
malformed is dropped whole, never half-read."""

from __future__ import annotations

import json

import pytest

from collab.forwarding import (
    MAX_REASON, Forwarded, Refusal, not_owner_msg, read_not_owner, read_refused, read_submit, refused_msg, submit_msg,
)
from collab.protocol import BAD_OP, Cursor, ProtocolError, Submit


def _wire(msg: dict) -> dict:
    """As another process receives it: through JSON."""
    return json.loads(json.dumps(msg))


def test_a_submit_is_read_back_as_it_was_sent():
    items = [Forwarded("c1", Submit(3, [2, "héllo 🌍", -1, 4], "op-1", Cursor(10, 10)), "Zoë 🦊"),
             Forwarded("c2", Submit(0, ["🎉"], "op-2", None))]
    doc, back = read_submit(_wire(submit_msg("notes", items)))
    assert doc == "notes"
    assert [(f.client, f.sub.rev, f.sub.op, f.sub.id, f.sub.cursor, f.name) for f in back] == [
        ("c1", 3, [2, "héllo 🌍", -1, 4], "op-1", Cursor(10, 10), "Zoë 🦊"), ("c2", 0, ["🎉"], "op-2", None, "")]
    assert back[0].sub.lengths == (7, 13) and back[1].sub.lengths == (0, 1)
    assert back[0].sub.author == "Zoë 🦊" and back[1].sub.author == ""  # the owner records it with the edit


GOOD = {"client": "c1", "rev": 0, "op": ["🌍"], "id": "op-1", "cursor": None}


@pytest.mark.parametrize("bad", [
    {"doc": "../etc", "items": [GOOD]},
    {"doc": 7, "items": [GOOD]},
    {"doc": "notes", "items": []},
    {"doc": "notes", "items": "not a list"},
    {"doc": "notes", "items": [GOOD, "not an item"]},
    {"doc": "notes", "items": [dict(GOOD, client="")]},
    {"doc": "notes", "items": [dict(GOOD, client="x" * 65)]},
    {"doc": "notes", "items": [dict(GOOD, id="\x00")]},
    {"doc": "notes", "items": [dict(GOOD, id="\ud800")]},
    {"doc": "notes", "items": [dict(GOOD, rev=-1)]},
    {"doc": "notes", "items": [dict(GOOD, rev=2**53)]},
    {"doc": "notes", "items": [dict(GOOD, rev=True)]},
    {"doc": "notes", "items": [dict(GOOD, rev="1")]},
    {"doc": "notes", "items": [dict(GOOD, op=[0])]},
    {"doc": "notes", "items": [dict(GOOD, op="🌍")]},
    {"doc": "notes", "items": [dict(GOOD, op=["\ud800"])]},
    {"doc": "notes", "items": [{k: v for k, v in GOOD.items() if k != "op"}]},
    {"doc": "notes", "items": [dict(GOOD, cursor={"anchor": -1, "head": 0})]},
    {"doc": "notes", "items": [dict(GOOD, cursor="here")]},
    {"doc": "notes", "items": [dict(GOOD, name=5)]},
    {"doc": "notes", "items": [dict(GOOD, name="x" * 65)]},
    {"doc": "notes", "items": [dict(GOOD, name="\ud800")]},
])
def test_a_malformed_submit_is_dropped_whole(bad):
    assert read_submit(dict(bad, t="submit")) is None


def test_a_refusal_is_read_back_and_a_malformed_one_dropped():
    exc = ProtocolError(BAD_OP, "operation spans 5 characters but revision 3 has 7 🌍", "op-1")
    assert read_refused(_wire(refused_msg("notes", exc))) == Refusal(
        "notes", "op-1", BAD_OP, "operation spans 5 characters but revision 3 has 7 🌍")
    long = ProtocolError(BAD_OP, "x" * (MAX_REASON + 50), "op-1")
    assert read_refused(_wire(refused_msg("notes", long))).message == "x" * MAX_REASON
    good = refused_msg("notes", exc)
    for bad in ({"code": "made_up"}, {"id": None}, {"id": ""}, {"doc": "a/b"}, {"message": 5},
                {"message": "x" * (MAX_REASON + 1)}, {"message": "\ud800"}):
        assert read_refused(dict(good, **bad)) is None, bad


def test_not_owner_names_a_document():
    assert read_not_owner(_wire(not_owner_msg("notes"))) == "notes"
    assert read_not_owner({"t": "not_owner", "doc": "../x"}) is None
    assert read_not_owner({"t": "not_owner"}) is None
