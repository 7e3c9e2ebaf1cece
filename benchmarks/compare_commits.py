"""Run one benchmark against an earlier commit and the working tree, interleaved, in one command.

A restructuring must not make the hot paths slower. This exports ``--base``
(a commit) with ``git archive`` into a temporary folder and runs the same
benchmark script of each tree with the same arguments, alternating between
them for ``--rounds`` rounds, so both see the same machine at the same
time. Each tree's script imports its own ``collab`` (``benchmarks/_common.py``
puts its checkout first on ``sys.path``, and ``load.py`` starts servers from
it), so the before and after numbers come from the before and after code.

Examples::

    python benchmarks/compare_commits.py --base HEAD~5 -- trace_replay.py --quick
    python benchmarks/compare_commits.py --base 6fcd9c4 --rounds 2 -- load.py --scenario saturate --quick --stores memory
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO, traces_dir  # noqa: E402


def export(rev: str, into: Path) -> Path:
    """The tree of ``rev`` unpacked into ``into`` (nothing in the repository changes)."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def run(tree: Path, script: str, args: list[str]) -> str:
    """One run of ``tree``'s ``benchmarks/script`` with ``args``; its output."""
    path = tree / "benchmarks" / script
    if not path.is_file():
        raise SystemExit(f"{path} does not exist in that tree: name a script both commits have")
    env = {**os.environ, "COLLAB_TRACES": str(traces_dir())}  # an older tree may not hold the traces
    proc = subprocess.run([sys.executable, str(path), *args], cwd=str(tree), env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        return f"(exit {proc.returncode})\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return proc.stdout


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="the commit to compare against (e.g. HEAD~3, a hash)")
    ap.add_argument("--rounds", type=int, default=1, help="alternating rounds (base, then working tree, each round)")
    ap.add_argument("script", help="a script in benchmarks/, e.g. trace_replay.py")
    ap.add_argument("args", nargs=argparse.REMAINDER, help="its arguments (after --)")
    ns = ap.parse_args(argv)
    args = [a for a in ns.args if a != "--"]
    with tempfile.TemporaryDirectory(prefix="collab-base-") as tmp:
        base = export(ns.base, Path(tmp))
        for i in range(1, ns.rounds + 1):
            for label, tree in ((f"base {ns.base}", base), ("working tree", REPO)):
                print(f"\n===== round {i}: {label}: {ns.script} {' '.join(args)}", flush=True)
                print(run(tree, ns.script, args), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
