"""The browser's copy of the wire constants (frontend/src/protocol.js) must
match their one source, collab/protocol.py: every close code by name, every
error code, and the document-name rule (checked on names both accept and
refuse)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from collab import protocol

PROTOCOL_JS = Path(__file__).resolve().parent.parent / "frontend" / "src" / "protocol.js"

pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed: cannot load protocol.js")

NAMES = ["notes", "a", "A.b_c-d", "x" * 128, "x" * 129, ".hidden", "", "a/b", "a b", "é", "-dash", "_u", "a\n", "😀"]

RUNNER = r"""
import * as p from %s;
const names = JSON.parse(process.argv[1]);
process.stdout.write(JSON.stringify({
  close_codes: p.CLOSE_CODES,
  error_codes: p.ERROR_CODES,
  doc_name_pattern: p.DOC_NAME_PATTERN,
  accepted: names.filter((n) => p.DOC_NAME_RE.test(n)),
}));
"""


def load_js() -> dict:
    run = subprocess.run(["node", "--input-type=module", "-e", RUNNER % json.dumps(PROTOCOL_JS.as_uri()),
                          json.dumps(NAMES)], capture_output=True, text=True, encoding="utf-8",
                         timeout=60, check=True)
    return json.loads(run.stdout)


def test_javascript_constants_match_collab_protocol() -> None:
    js = load_js()
    py = protocol.wire_constants()
    assert js["close_codes"] == py["close_codes"]
    assert sorted(js["error_codes"].values()) == sorted(py["error_codes"])
    assert all(name == code.upper() for name, code in js["error_codes"].items())
    assert js["doc_name_pattern"] == py["doc_name_pattern"]


def test_javascript_document_name_rule_accepts_what_python_accepts() -> None:
    assert load_js()["accepted"] == [n for n in NAMES if protocol.valid_doc_name(n)]
