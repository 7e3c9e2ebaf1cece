"""Runs the browser client's Node unit tests (frontend/test/) as part of the one test command.

Their JavaScript dependencies come from the ``frontend_node_modules``
fixture (``npm ci`` on first use); without Node.js or npm the test skips and
says so.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

FRONTEND = Path(__file__).resolve().parent.parent / "frontend"


def test_node_unit_tests_pass(frontend_node_modules):
    tests = sorted(str(p.relative_to(FRONTEND)) for p in (FRONTEND / "test").glob("*.test.*js"))
    assert tests, "no JS unit tests found under frontend/test/"
    result = subprocess.run(["node", "--test", *tests], cwd=FRONTEND, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "# fail 0" in result.stdout
