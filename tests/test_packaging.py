"""requirements.txt, which PaaS buildpacks install from, is generated from
pyproject.toml and must stay in step with it.

``python tests/test_packaging.py --write`` regenerates it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = ROOT / "requirements.txt"
#: The extras a deployment gets: PostgreSQL and Redis, for several processes.
DEPLOY_EXTRAS = ("postgres", "redis")

HEADER = """\
# Generated from pyproject.toml by `python tests/test_packaging.py --write`:
# edit pyproject.toml, not this file (a test checks that the two agree).
# PaaS buildpacks (Heroku, Dokku, Render, Fly.io) install from this file:
# collab's dependencies with PostgreSQL and Redis support, then collab itself
# (the last line, `.`), which gives the `collab` command of the Procfile.
"""


def _load_pyproject() -> dict:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli", reason="Python 3.10 without tomli cannot read pyproject.toml")
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def expected_requirements() -> str:
    """requirements.txt as pyproject.toml says it must be."""
    project = _load_pyproject()["project"]
    lines = list(project["dependencies"])
    for extra in DEPLOY_EXTRAS:
        lines += [r for r in project["optional-dependencies"][extra] if r not in lines]
    return HEADER + "".join(f"{line}\n" for line in lines) + ".\n"


def test_requirements_txt_matches_pyproject():
    assert REQUIREMENTS.exists(), "requirements.txt is missing: python tests/test_packaging.py --write"
    assert REQUIREMENTS.read_text(encoding="utf-8") == expected_requirements(), (
        "requirements.txt differs from pyproject.toml: run python tests/test_packaging.py --write")


def test_every_dependency_has_a_floor_and_uvicorn_a_ceiling():
    project = _load_pyproject()["project"]
    deps = project["dependencies"] + [r for extra in DEPLOY_EXTRAS for r in project["optional-dependencies"][extra]]
    for dep in deps:
        assert ">=" in dep, f"{dep}: give the lowest tested version (.ci/floors installs it)"
    uvicorn = next(d for d in deps if d.startswith("uvicorn"))
    assert "<" in uvicorn.replace("<=", "<"), "uvicorn needs an upper bound: transport.py reads its internals"


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        raise SystemExit("usage: python tests/test_packaging.py --write")
    REQUIREMENTS.write_text(expected_requirements(), encoding="utf-8")
    print(f"wrote {REQUIREMENTS}")
