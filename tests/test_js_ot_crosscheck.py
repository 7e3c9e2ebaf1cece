"""The browser's OT code (frontend/src/ot.js) must agree exactly with the
server's (collab/ot.py): same transform (including the insert tie-break),
compose, apply, normalize and cursor transform, in code points, emoji
included. Random cases are generated here, run through both, and compared.

The random operations are deliberately not normalized. ot.js normalizes
every operation it reads (``TextOperation.fromJSON``), so the server's
``transform`` of raw operations must equal the JavaScript ``transform`` of
their normalized forms: that is ot.js's answer.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from collab import ot

ROOT = Path(__file__).resolve().parent.parent
OT_JS = ROOT / "frontend" / "src" / "ot.js"
DIFF_JS = ROOT / "frontend" / "src" / "diff.js"
NODE = shutil.which("node")

pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed: cannot run the JavaScript OT module")

ALPHABET = ["a", "b", "c", " ", "\n", "é", "中", "😀", "🎉", "👩\u200d💻"]

RUNNER = r"""
import * as ot from %(ot)s;
let input = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (d) => { input += d; });
process.stdin.on('end', async () => {
  const cases = JSON.parse(input);
  const out = [];
  let diffOp = null;
  try { diffOp = (await import(%(diff)s)).diffOp; } catch (e) { diffOp = null; }
  for (const c of cases) {
    const r = {};
    const wrap = (f) => { try { return f(); } catch (e) { return {error: String(e.message)}; } };
    // ot.js normalizes on the way in (TextOperation.fromJSON): its transform of c.a and c.b.
    r.transform = wrap(() => ot.transform(ot.normalize(c.a), ot.normalize(c.b)));
    r.compose = wrap(() => ot.compose(c.a, c.c));
    r.apply_a = wrap(() => ot.apply(c.text, c.a));
    r.normalize = wrap(() => ot.normalize(c.raw));
    r.index = wrap(() => ot.transformIndex(c.index, c.a));
    r.invert = wrap(() => ot.invert(c.a, c.text));
    r.length = ot.cpLength(c.text);
    if (diffOp) r.diff = ot.apply(c.text, diffOp(c.text, c.other));
    out.push(r);
  }
  process.stdout.write(JSON.stringify(out));
});
"""


def _text(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, n)))


def _op(rng: random.Random, text: str) -> list:
    """A random, deliberately non-normalized operation on ``text``."""
    n = len(text)
    op: list = []
    pos = 0
    while pos < n or rng.random() < 0.3:
        r = rng.random()
        if r < 0.3:
            op.append(_text(rng, 3) or "x")
        elif pos < n:
            k = rng.randint(1, min(3, n - pos))
            op.append(k if r < 0.7 else -k)
            pos += k
        if pos >= n and rng.random() < 0.6:
            break
    return op


def _cases(seed: int, count: int) -> list[dict]:
    rng = random.Random(seed)
    cases = []
    for _ in range(count):
        text = _text(rng, 12)
        a = _op(rng, text)
        b = _op(rng, text)
        c = _op(rng, ot.apply(text, a))
        raw = _op(rng, text)
        cases.append(
            {
                "text": text,
                "a": a,
                "b": b,
                "c": c,
                "raw": raw,
                "index": rng.randint(-1, len(text) + 1),
                "other": _text(rng, 12),
            }
        )
    # Hand-picked: concurrent inserts at the same spot, emoji, empty docs.
    for text, a, b in [
        ("", ["😀"], ["🎉"]),
        ("😀😀", [1, "x", 1], [1, "y", 1]),
        ("ab", [2, "😀"], [2, "🎉"]),
        ("a😀b", [1, -1, 1], [1, -2]),
        ("a😀b", ["é", 3], [3, "é"]),
    ]:
        cases.append({"text": text, "a": a, "b": b, "c": [len(text) - sum(-x for x in a if isinstance(x, int) and x < 0) + sum(len(x) for x in a if isinstance(x, str))], "raw": a + b, "index": 1, "other": "😀"})
    return cases


def _python(case: dict) -> dict:
    def wrap(f):
        try:
            return f()
        except ot.InvalidOperation:
            return "error"

    r = {
        "transform": wrap(lambda: list(ot.transform(case["a"], case["b"]))),
        "compose": wrap(lambda: ot.compose(case["a"], case["c"])),
        "apply_a": wrap(lambda: ot.apply(case["text"], case["a"])),
        "normalize": wrap(lambda: ot.normalize(case["raw"])),
        "index": wrap(lambda: ot.transform_index(case["index"], case["a"])),
        "invert": wrap(lambda: ot.invert(case["a"], case["text"])),
        "length": len(case["text"]),
    }
    return r


def _run_js(cases: list[dict]) -> list[dict]:
    script = RUNNER % {"ot": json.dumps(OT_JS.as_uri()), "diff": json.dumps(DIFF_JS.as_uri())}
    proc = subprocess.run(
        [NODE, "--input-type=module", "-e", script],
        input=json.dumps(cases, ensure_ascii=False),
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=60,
        cwd=ROOT / "frontend",
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_js_matches_python(seed: int, frontend_node_modules) -> None:
    cases = _cases(seed, 400)
    results = _run_js(cases)
    assert len(results) == len(cases)
    for case, js in zip(cases, results):
        py = _python(case)
        for key, want in py.items():
            got = js[key]
            if want == "error":
                assert isinstance(got, dict) and "error" in got, (key, case, got)
            else:
                assert got == want, (key, case, got, want)
        if "diff" in js:
            # diffOp(text, other) applied to text gives other, emoji intact.
            assert js["diff"] == case["other"], case
