"""Sealed bundles (collab.seal): a bundle opens with its deployment's key only, and only as it was sealed."""

from __future__ import annotations

import json

import pytest

from collab.seal import MAC_BYTES, Seal, new_key

BUS = "collab:bus"
BODY = json.dumps({"m": [["d", "notes 📝", {"t": "ops", "ops": [[2, [7, "🌍 é"], "c1", "op-2", None]],
                                            "prev": "op-1", "at": 1.8e9}]],
                   "at": 1.8e9, "n": 7, "proc": "p1"}, ensure_ascii=False).encode()


def test_a_sealed_bundle_opens_to_its_body_with_the_same_key():
    seal = Seal(new_key())
    data = seal.seal(BUS, BODY)
    assert data.endswith(BODY) and len(data) == len(BODY) + MAC_BYTES
    assert seal.open(BUS, data) == BODY


@pytest.mark.parametrize("change", [
    lambda d: d.replace("🌍".encode(), "😈".encode()),  # the content
    lambda d: d.replace(b'"n": 7', b'"n": 8'),  # its number
    lambda d: d.replace(b'"p1"', b'"p2"'),  # its sender
    lambda d: d[:-1],  # cut short
    lambda d: d + b" ",  # something added
    lambda d: (b"0" if d[:1] != b"0" else b"1") + d[1:],  # the MAC
    lambda d: d[MAC_BYTES:],  # no MAC
    lambda d: d[:MAC_BYTES],  # a MAC and nothing else
    lambda d: b"",
])
def test_a_changed_bundle_does_not_open(change):
    seal = Seal(new_key())
    assert seal.open(BUS, change(seal.seal(BUS, BODY))) is None


def test_a_bundle_opens_with_its_own_deployment_s_key_only():
    assert Seal(new_key()).open(BUS, Seal(new_key()).seal(BUS, BODY)) is None


def test_a_key_too_short_or_too_long_for_blake2b_is_refused():
    for key in (b"short", b"k" * 65):
        with pytest.raises(ValueError, match="16 to 64 bytes"):
            Seal(key)


def test_a_record_opens_under_the_name_it_was_sealed_for_only():
    seal = Seal(new_key())
    value = json.dumps({"proc": "p1", "user": {"name": "Zoë 🦊", "color": "#f80"}}).encode()
    data = seal.seal("collab:peers:notes c1", value)
    assert seal.open("collab:peers:notes c1", data) == value
    assert seal.open("collab:peers:notes c2", data) is None  # copied to another client
    assert seal.open("collab:peers:other c1", data) is None  # or another document
    assert Seal(new_key()).open("collab:peers:notes c1", data) is None
    assert seal.open("collab:peers:notes c1", value) is None  # not sealed at all
    assert seal.open(BUS, data) is None and seal.open("collab:peers:notes c1", seal.seal(BUS, value)) is None
