"""No message knocks over a document: each hostile frame is an error on its own connection only.

Every case runs against a real server (both WebSocket paths on SQLite, as in
``test_server``, and PostgreSQL when ``COLLAB_TEST_DATABASE_URL`` is set): the
sender gets the documented error and stays connected, another client of the
same document stays connected and can edit, a client of another document
too, the document is unchanged, and nothing is logged as an error (a
document failure logs one and closes everyone with 1011). Then the same
frames against ``protocol.parse`` alone, and a fuzz of near-valid frames.
"""

from __future__ import annotations

import json
import logging
import os
import re
import uuid
from typing import AsyncIterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collab import protocol
from conftest import http_get

FOX = "🦊 fox"
BIG = "1" + "0" * 4299  # 4,300 digits: Python turns no longer int into a str
DEEP = 1100  # past orjson's 1,024 levels and Python's recursion limit


def _op(rev: object, op: str, id: str, extra: str = "") -> str:
    """An ``op`` message as raw JSON text (so it can hold what json.dumps would not write)."""
    return f'{{"type":"op","rev":{rev},"op":{op},"id":{id}{extra}}}'


# (name, raw frame, error code, the error's id). The document is FOX at revision 1.
HOSTILE = [
    ("id-lone-surrogate", _op(1, '["x",5]', '"\\ud800"'), "bad_message", None),
    ("id-lone-surrogate-rev-string", _op('"1"', '["x",5]', '"\\ud800"'), "bad_message", None),
    ("id-lone-low-surrogate-emoji", _op(1, '["🐝",5]', '"🐝\\udc00"'), "bad_message", None),
    ("id-nul", _op(1, '["x",5]', '"a\\u0000b"'), "bad_message", None),
    ("retains-sum-4301-digits", _op(1, f"[{BIG},{BIG}]", '"big-sum"'), "bad_op", "big-sum"),
    ("retain-beyond-64-bits", _op(1, "[18446744073709551616]", '"r64"'), "bad_op", "r64"),
    ("retain-sum-beyond-max", _op(1, "[9007199254740991,9007199254740991]", '"r53"'), "bad_op", "r53"),
    ("insert-lone-surrogate", _op(1, '[5,"🐝\\ud83d"]', '"half-emoji"'), "bad_op", "half-emoji"),
    ("op-nested-too-deep", _op(1, "[" * DEEP + "]" * DEEP, '"deep"'), "bad_message", None),
    ("frame-nested-too-deep", "[" * DEEP + "]" * DEEP, "bad_message", None),
    ("object-nested-too-deep", '{"a":' * DEEP + "1" + "}" * DEEP, "bad_message", None),
    ("rev-beyond-64-bits", _op(18446744073709551616, '[5,"🐝"]', '"rev64"'), "bad_rev", "rev64"),
    ("rev-4300-digits", _op(BIG, '[5,"🐝"]', '"rev-big"'), "bad_rev", "rev-big"),
    ("rev-beyond-max", _op(9007199254740992, '[5,"🐝"]', '"rev53"'), "bad_rev", "rev53"),
    ("presence-rev-beyond-64-bits", '{"type":"presence","rev":18446744073709551616,"cursor":null}', "bad_rev", None),
    ("presence-user-lone-surrogate", '{"type":"presence","rev":1,"cursor":null,"user":{"name":"\\udfff","color":""}}',
     "bad_message", None),
    ("cursor-4300-digits", _op(1, '[5,"🐝"]', '"cur"', f',"cursor":{{"anchor":{BIG},"head":0}}'), "bad_message", "cur"),
]


PG_URL = os.environ.get("COLLAB_TEST_DATABASE_URL", "")


@pytest.fixture(params=["direct", "asgi", "postgres"])
async def server(request, server_factory) -> AsyncIterator:
    """Both WebSocket paths on SQLite, and PostgreSQL (whose text type refuses what SQLite takes)."""
    if request.param == "asgi":
        yield await server_factory(uvicorn_options={"ws": "websockets-sansio"})
    elif request.param == "direct":
        yield await server_factory()
    else:
        if not PG_URL:
            pytest.skip("COLLAB_TEST_DATABASE_URL is not set (e.g. postgresql://postgres@127.0.0.1:5432/test)")
        asyncpg = pytest.importorskip("asyncpg")
        schema = f"hostile_{uuid.uuid4().hex[:12]}"
        running = await server_factory(database_url=f"{PG_URL}{'&' if '?' in PG_URL else '?'}schema={schema}")
        try:
            yield running
        finally:
            await running.stop()
            conn = await asyncpg.connect(PG_URL, timeout=10)
            try:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            finally:
                await conn.close()


async def _scene(server, ws_open):
    """A bystander who wrote FOX, an attacker on the same document, a client on another one."""
    bystander = await ws_open(server.ws("hostile"))
    await bystander.join(user={"name": "Bea 🐝", "color": "#fc0"})
    await bystander.send({"type": "op", "rev": 0, "op": [FOX], "id": "fox"})
    assert (await bystander.recv_type("ack"))["rev"] == 1
    attacker = await ws_open(server.ws("hostile"))
    assert (await attacker.join())["text"] == FOX
    elsewhere = await ws_open(server.ws("elsewhere"))
    await elsewhere.join()
    return bystander, attacker, elsewhere


async def _still_fine(server, bystander, attacker, elsewhere) -> None:
    """Everyone is connected, the bystander can edit, and the hostile frame changed nothing."""
    await bystander.send({"type": "op", "rev": 1, "op": [len(FOX), " 🎉"], "id": "party"})
    assert await bystander.recv_type("ack") == {"type": "ack", "id": "party", "rev": 2}
    seen = await attacker.recv_type("op")
    assert (seen["rev"], seen["op"]) == (2, [len(FOX), " 🎉"])
    await elsewhere.send({"type": "op", "rev": 0, "op": ["🌍"], "id": "earth"})
    assert (await elsewhere.recv_type("ack"))["rev"] == 1
    doc = (await http_get(f"{server.base_url}/api/docs/hostile")).json()
    assert (doc["rev"], doc["text"]) == (2, FOX + " 🎉")


@pytest.mark.parametrize("frame, code, id", [case[1:] for case in HOSTILE], ids=[case[0] for case in HOSTILE])
async def test_hostile_frame_is_an_error_for_its_sender_only(server, ws_open, caplog, frame, code, id):
    caplog.set_level(logging.WARNING)
    bystander, attacker, elsewhere = await _scene(server, ws_open)
    await attacker.send(frame)
    error = await attacker.recv_type("error")
    assert error["code"] == code, error
    assert error.get("id") == id
    assert error["message"] and len(error["message"]) < 300
    await _still_fine(server, bystander, attacker, elsewhere)
    # The attacker's connection is still usable, too.
    await attacker.send({"type": "op", "rev": 2, "op": ["🐝", len(FOX) + 2], "id": "bee"})
    assert (await attacker.recv_type("ack"))["rev"] == 3
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]


@pytest.mark.parametrize("since", ["18446744073709551616", BIG, "9007199254740992", "1e400"],
                         ids=["64-bits", "4300-digits", "beyond-max", "1e400"])
async def test_since_beyond_any_revision_is_bad_rev_and_the_connection_can_join(server, ws_open, since):
    bystander, _, elsewhere = await _scene(server, ws_open)
    late = await ws_open(server.ws("hostile"))
    await late.send(f'{{"type":"join","since":{since}}}')
    error = await late.recv_type("error")
    assert error["code"] == "bad_rev", error
    welcome = await late.join(since=0)
    assert [o["op"] for o in welcome["ops"]] == [[FOX]]
    await bystander.send({"type": "op", "rev": 1, "op": [len(FOX), "🎉"], "id": "again"})
    assert (await bystander.recv_type("ack"))["rev"] == 2
    assert (await late.recv_type("op"))["op"] == [len(FOX), "🎉"]


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
async def test_insert_holding_nul_never_fails_the_document(request, server_factory, ws_open, store):
    """U+0000 is a valid character, but PostgreSQL's text type refuses it: the snapshot after it
    must still commit (or the insert be refused), never close every client with 1011."""
    options: dict = {"snapshot_every": 2}
    schema = None
    if store == "postgres":
        if not PG_URL:
            pytest.skip("COLLAB_TEST_DATABASE_URL is not set (e.g. postgresql://postgres@127.0.0.1:5432/test)")
        schema = f"hostile_{uuid.uuid4().hex[:12]}"
        options["database_url"] = f"{PG_URL}{'&' if '?' in PG_URL else '?'}schema={schema}"
    server = await server_factory(**options)
    try:
        writer = await ws_open(server.ws("nul"))
        reader = await ws_open(server.ws("nul"))
        await writer.join()
        await reader.join()
        await writer.send('{"type":"op","rev":0,"op":["🦊\\u0000🐝"],"id":"nul"}')
        answer = await writer.recv_type("ack")
        for rev in range(1, 4):  # past the snapshot cadence
            await writer.send({"type": "op", "rev": rev, "op": [rev + 2, "🎉"], "id": f"party-{rev}"})
            assert (await writer.recv_type("ack"))["rev"] == rev + 1
        await reader.send({"type": "op", "rev": 4, "op": ["👋", 6], "id": "wave"})
        assert (await reader.recv_type("ack"))["rev"] == 5
        doc = (await http_get(f"{server.base_url}/api/docs/nul")).json()
        assert answer["rev"] == 1 and doc["text"] == "👋🦊\x00🐝🎉🎉🎉"
    finally:
        await server.stop()
        if schema is not None:
            import asyncpg

            conn = await asyncpg.connect(PG_URL, timeout=10)
            try:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            finally:
                await conn.close()


# ---------------------------------------------------------------- parse alone


@pytest.mark.parametrize("frame, code, id", [case[1:] for case in HOSTILE], ids=[case[0] for case in HOSTILE])
def test_parse_refuses_each_hostile_frame_with_its_code(frame, code, id):
    with pytest.raises(protocol.ProtocolError) as info:
        protocol.parse(frame)
    assert (info.value.code, info.value.id) == (code, id)
    protocol.encode(protocol.error_msg(info.value.code, info.value.message, info.value.id))  # the answer can be sent


def _json_values():
    scalars = (
        st.none() | st.booleans() | st.floats(allow_nan=False) | st.text(max_size=8)
        | st.integers(min_value=-(2**70), max_value=2**70) | st.sampled_from([0, 1, -1, 2**53 - 1, 2**53, 2**64])
    )
    return st.recursive(
        scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
        max_leaves=12,
    )


def _frames():
    """Frames close to valid messages, each field either plausible or hostile."""
    hostile = st.sampled_from(["\ud800", "🦊\udc00", "a\x00b", _RAW_BIG, _RAW_DEEP, 2**64, 2**53, -1, 1.5])
    rev = st.integers(0, 3) | hostile | _json_values()
    ident = st.text(min_size=1, max_size=8) | hostile.map(str) | hostile | _json_values()
    component = st.integers(-(2**60), 2**60) | st.text(max_size=4) | hostile
    cursor = st.none() | st.fixed_dictionaries({"anchor": rev, "head": rev}) | _json_values()
    user = st.none() | st.fixed_dictionaries({"name": ident, "color": st.just("#0f0") | hostile}) | _json_values()
    fields = st.fixed_dictionaries(
        {"type": st.sampled_from(["op", "presence", "join"]) | st.text(max_size=3)},
        optional={"rev": rev, "since": rev, "id": ident, "op": st.lists(component, max_size=5) | _json_values(),
                  "cursor": cursor, "user": user, "batch": st.booleans()},
    )
    # ensure_ascii: lone surrogates in the generated text travel as \ud800 escapes, as a client would send them.
    return fields.map(_raw_json) | st.text(max_size=40)


_RAW_BIG, _RAW_DEEP = "<big>", "<deep>"


def _raw_json(value: dict) -> str:
    """``value`` as JSON text, with the placeholders made into what json.dumps cannot write."""
    text = json.dumps(value, ensure_ascii=True)
    return text.replace(json.dumps(_RAW_BIG), BIG).replace(json.dumps(_RAW_DEEP), "[" * DEEP + "]" * DEEP)


def _holds_only_safe_values(value: object) -> bool:
    if isinstance(value, str):
        return value == value.encode("utf-8").decode("utf-8")
    if isinstance(value, int):
        return abs(value) <= 2**53 - 1
    if isinstance(value, (list, tuple)):
        return all(_holds_only_safe_values(v) for v in value)
    return True


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_frames())
def test_parse_gives_a_message_of_safe_values_or_a_protocol_error(frame):
    """Whatever a client sends, parse raises nothing but ProtocolError, and what it returns
    holds only strings any encoder or store takes and integers of at most 53 bits."""
    try:
        msg = protocol.parse(frame)
    except protocol.ProtocolError as exc:
        assert exc.code in protocol.ERROR_CODES
        protocol.encode(protocol.error_msg(exc.code, exc.message, exc.id))
        return
    fields = [getattr(msg, name) for name in msg.__slots__]
    for value in fields:
        if isinstance(value, (protocol.Cursor, protocol.User)):
            value = [getattr(value, name) for name in value.__slots__]
        assert _holds_only_safe_values(value), (frame, msg)


def test_wire_constants_are_the_module_constants():
    wire = protocol.wire_constants()
    assert json.loads(json.dumps(wire)) == wire
    assert wire["close_codes"] == {name: getattr(protocol, f"CLOSE_{name}") for name in wire["close_codes"]}
    assert wire["close_codes"]["NO_DOCUMENT"] == 4004 and wire["close_codes"]["POLICY"] == 1008
    assert wire["error_codes"] == ["bad_message", "bad_op", "bad_rev", "stale_rev", "forbidden", "too_large", "rate_limited"]
    assert wire["doc_name_pattern"] == protocol.DOC_NAME_PATTERN


@pytest.mark.parametrize(
    "name, ok",
    [("notes", True), ("a", True), ("team-1_x.md", True), ("-a", True), ("_", True), ("a" * 128, True),
     ("a" * 129, False), ("", False), (".hidden", False), ("a/b", False), ("a\n", False), ("🦊", False),
     ("a b", False), ("..", False)],
)
def test_doc_name_rule(name, ok):
    assert protocol.valid_doc_name(name) is ok
    assert (re.compile(protocol.DOC_NAME_PATTERN).fullmatch(name) is not None) is ok
