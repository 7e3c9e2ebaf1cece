"""Per-message cost of the protocol's hot path: protocol.parse, ot.checked and ot.transform.

Times each on typical client messages (small inserts with emoji, a
retain-insert-retain, a delete, presence) and operation pairs, as the
minimum over many short samples, which keeps other load on a shared
machine out of the figure. With ``--base COMMIT`` the same cases also run
on that commit's ``collab`` (exported with ``git archive``), interleaved in
one process, and the change is shown::

    python benchmarks/parse_bench.py
    python benchmarks/parse_bench.py --base HEAD~10
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import subprocess
import sys
import tempfile
import timeit
from pathlib import Path
from types import ModuleType
from typing import Callable

REPO = Path(__file__).resolve().parent.parent

MESSAGES = {
    "op insert emoji": '{"type":"op","rev":1234,"op":[5120,"😀",880],"id":"c3f9a1-1234","cursor":{"anchor":5121,"head":5121}}',
    "op insert ascii": '{"type":"op","rev":1234,"op":[5120,"a",880],"id":"c3f9a1-1234","cursor":{"anchor":5121,"head":5121}}',
    "op retain-insert-retain": '{"type":"op","rev":99,"op":[120,"héllo wörld 👋🏽 and more text",4000],"id":"k-99","cursor":null}',
    "op delete": '{"type":"op","rev":77,"op":[300,-1,500],"id":"k-77","cursor":{"anchor":300,"head":300}}',
    "presence": '{"type":"presence","rev":1234,"cursor":{"anchor":10,"head":42}}',
    "presence with user": '{"type":"presence","rev":1234,"cursor":{"anchor":10,"head":10},"user":{"name":"Zoë 🦊","color":"#ff8800"}}',
}
OPS = [[5120, "😀", 880], [120, "héllo wörld 👋🏽", 4000], [300, -1, 500]]
PAIRS = {
    "splice / splice": ([5120, "😀", 880], [300, -1, 5699]),
    "7 parts / splice": ([10, "a", 100, -3, 200, "🦊", 5687], [300, -1, 5699]),
    "7 parts / 5 parts": ([10, "a", 100, -3, 200, "🦊", 5687], [5, -2, 50, "xyz", 5943]),
}


def load(alias: str, root: Path) -> tuple[ModuleType, ModuleType]:
    """``collab.protocol`` and ``collab.ot`` of the checkout at ``root``, imported as package ``alias``."""
    spec = importlib.util.spec_from_file_location(
        alias, root / "collab" / "__init__.py", submodule_search_locations=[str(root / "collab")]
    )
    assert spec is not None and spec.loader is not None
    package = importlib.util.module_from_spec(spec)
    sys.modules[alias] = package
    spec.loader.exec_module(package)
    return importlib.import_module(f"{alias}.protocol"), importlib.import_module(f"{alias}.ot")


def cases(protocol: ModuleType, ot: ModuleType) -> dict[str, Callable[[], object]]:
    out: dict[str, Callable[[], object]] = {}
    for name, text in MESSAGES.items():
        out[f"parse {name}"] = lambda text=text: protocol.parse(text)
    for op in OPS:
        out[f"checked {op!r}"[:40]] = lambda op=op: ot.checked(op)
    for name, (a, b) in PAIRS.items():
        out[f"transform {name}"] = lambda a=a, b=b: ot.transform(a, b)
    return out


def best_ns(fn: Callable[[], object], number: int) -> float:
    return timeit.timeit(fn, number=number) / number * 1e9


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", help="also run this commit's collab, interleaved, and show the change")
    ap.add_argument("--samples", type=int, default=40, help="short samples per case and tree (the minimum is kept)")
    ns = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="collab-parse-bench-") as tmp:
        trees = {"now": load("collab_now", REPO)}
        if ns.base:
            archive = subprocess.run(["git", "-C", str(REPO), "archive", ns.base, "collab"], check=True,
                                     capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
            trees = {"base": load("collab_base", Path(tmp)), **trees}
        per_tree = {label: cases(*mods) for label, mods in trees.items()}
        for name in per_tree["now"]:
            best = {label: float("inf") for label in trees}
            for _ in range(ns.samples):
                for label in trees:
                    best[label] = min(best[label], best_ns(per_tree[label][name], 2000))
            line = f"{name:40s} " + "  ".join(f"{label} {best[label]:6.0f} ns" for label in trees)
            if ns.base:
                line += f"  {100 * (best['now'] / best['base'] - 1):+5.1f}%"
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
