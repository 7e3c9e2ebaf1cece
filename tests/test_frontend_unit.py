"""Runs the browser client's Node unit tests (frontend/test/) as part of the one test command."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

FRONTEND = Path(__file__).resolve().parent.parent / "frontend"


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed: the JS unit tests need Node.js >= 18")
def test_node_unit_tests_pass():
    tests = sorted(str(p.relative_to(FRONTEND)) for p in (FRONTEND / "test").glob("*.test.*js"))
    assert tests, "no JS unit tests found under frontend/test/"
    result = subprocess.run(["node", "--test", *tests], cwd=FRONTEND, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "# fail 0" in result.stdout
