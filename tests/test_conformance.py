"""The client conformance suite, replayed against the Python client.

``tests/conformance/client.json`` holds transcripts: server messages in,
client messages and the resulting state out.  This file drives
:class:`collab.clientstate.ClientState` through them directly (sans-I/O);
``frontend/test/conformance.test.js`` drives the browser's ``SyncClient``
through the same file, so both clients pass the same cases.  The file's
``format`` entry describes the steps and expectations.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from collab import ot
from collab.clientevents import ReconnectNeeded, Refused, RetryLater, ServerError, TooLarge
from collab.clientstate import ClientState
from collab.opsplit import json_bytes

DATA = json.loads((Path(__file__).parent / "conformance" / "client.json").read_text("utf-8"))


def subset(expected: Any, actual: Any) -> bool:
    """``expected`` matches ``actual`` where every key of an expected object is equal in ``actual``."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(k in actual and subset(v, actual[k]) for k, v in expected.items())
    return expected == actual


def signal(ev: object) -> str | None:
    """The transcript's name for a client event (``None``: not part of the contract)."""
    if isinstance(ev, Refused):
        return f"refused:{ev.code}"
    if isinstance(ev, ServerError):
        return f"error:{ev.code}"
    if isinstance(ev, ReconnectNeeded):
        return "reconnect"
    if isinstance(ev, RetryLater):
        return "retry"
    if isinstance(ev, TooLarge):
        return "too_large"
    return None


def cursor_json(cursor: tuple[int, int] | None) -> dict | None:
    return None if cursor is None else {"anchor": cursor[0], "head": cursor[1]}


class Replay:
    """One :class:`ClientState` fed the steps of one case."""

    def __init__(self, case: dict) -> None:
        self.state = ClientState(case.get("user"), id_prefix="x")
        self.sent: list[dict] = []
        self.signals: list[str] = []

    def do(self, step: dict) -> None:
        s = self.state
        if "connect" in step:
            s.connection_made()
        elif "disconnect" in step:
            s.connection_lost(step["disconnect"])
        elif "receive" in step:
            s.receive(json.loads(json.dumps(step["receive"])))
        elif "edit" in step:
            s.edit(step["edit"])
        elif "insert" in step:
            ins = step["insert"]
            s.edit(ot.from_splice(len(s.text), ins["at"], 0, ins["text"] * ins.get("times", 1)))
        elif "cursor" in step:
            c = step["cursor"]
            s.set_cursor(None if c is None else (c["anchor"], c["head"]))
        elif "resend" in step:
            s.resend()
        else:
            raise AssertionError(f"unknown step {step}")
        limit = s.max_message_bytes
        for m in s.messages_to_send():
            m = json.loads(json.dumps(m))  # as on the wire
            if m["type"] == "op":
                assert json_bytes(m) <= limit, f"an op message of {json_bytes(m)} bytes, over the limit {limit}"
            self.sent.append(m)
        self.signals += [name for name in map(signal, s.events_received()) if name]

    def check(self, step: dict, where: str) -> None:
        s = self.state
        sent, self.sent = self.sent, []
        signals, self.signals = self.signals, []
        expected = step.get("send", [])
        assert len(sent) == len(expected) and all(map(subset, expected, sent)), \
            f"{where}: sent {sent}, expected {expected}"
        assert signals == step.get("signals", []), f"{where}: signals {signals}"
        if "text" in step:
            assert s.text == step["text"], where
        if "rev" in step:
            assert s.rev == step["rev"], where
        if "saved" in step:
            assert s.saved == step["saved"], where
        if "limit" in step:
            assert s.max_message_bytes == step["limit"], where
        for cid, cursor in step.get("cursors", {}).items():
            peer = s.peers.get(cid)
            assert cursor_json(peer.cursor if peer else None) == cursor, f"{where}: cursor of {cid}"
        pending = ot.apply(s.server_text, s.inflight.op) if s.inflight else s.server_text
        assert s.text == (ot.apply(pending, s.buffer) if s.buffer else pending), f"{where}: text != server + pending"


@pytest.mark.parametrize("case", DATA["cases"], ids=[c["name"] for c in DATA["cases"]])
def test_conformance(case: dict) -> None:
    replay = Replay(case)
    for i, step in enumerate(case["steps"]):
        replay.do(step)
        replay.check(step, f"{case['name']}, step {i + 1}")


def test_case_names_are_unique() -> None:
    names = [c["name"] for c in DATA["cases"]]
    assert len(names) == len(set(names))


SPLIT_RUNNER = r"""
import { splitOp } from %s;
let input = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (d) => { input += d; });
process.stdin.on('end', () => {
  const out = [];
  for (const { op, budget } of JSON.parse(input)) {
    const pieces = [];
    let rest = op;
    for (;;) {
      const { head, tail, bytes } = splitOp(rest, budget);
      pieces.push([head, bytes]);
      if (!tail) break;
      rest = tail;
    }
    out.push(pieces);
  }
  process.stdout.write(JSON.stringify(out));
});
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed: cannot run frontend/src/split.js")
def test_split_op_cuts_exactly_where_the_browser_does() -> None:
    """Random operations (escapes, emoji, deletes) cut under random budgets: same pieces, same sizes."""
    from collab.opsplit import split_op

    rnd = random.Random(21)
    alphabet = ["a", " ", '"', "\\", "\n", "\x01", "\u2028", "é", "中", "😀", "🎉"]
    cases = []
    for _ in range(300):
        text = "".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 40)))
        op: list = [len(text)] if text else []
        for _ in range(rnd.randint(1, 4)):
            pos = rnd.randint(0, len(text))
            ins = "".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 80)))
            step = ot.from_splice(len(text), pos, rnd.randint(0, min(3, len(text) - pos)), ins)
            op = ot.compose(op, step) if op else step
            text = ot.apply(text, step)
        cases.append({"op": ot.normalize(op), "budget": rnd.randint(1, 200)})
    split_js = (Path(__file__).resolve().parent.parent / "frontend" / "src" / "split.js").as_uri()
    run = subprocess.run(["node", "--input-type=module", "-e", SPLIT_RUNNER % json.dumps(split_js)],
                         input=json.dumps(cases, ensure_ascii=False), capture_output=True, text=True,
                         encoding="utf-8", timeout=60, check=True)
    for case, js_pieces in zip(cases, json.loads(run.stdout), strict=True):
        pieces, rest = [], case["op"]
        while True:
            part = split_op(rest, case["budget"])
            pieces.append([part.head, part.nbytes])
            if part.tail is None:
                break
            rest = part.tail
        assert pieces == js_pieces, case
