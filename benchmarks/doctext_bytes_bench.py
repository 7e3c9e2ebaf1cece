"""What counting UTF-8 bytes costs DocText.apply: this checkout against an earlier commit's doctext.py.

The document list shows sizes in bytes; each edit keeps the count
(``DocText.utf8_bytes``) instead of re-encoding the text. This times
``DocText.apply`` per edit, best of three interleaved runs: the first
20,000 patches of the automerge-paper trace in the middle of an empty and
of a 10 MiB text (ASCII, and umlauts + emoji + CJK), and a one-character
insert and delete in the middle of a short (7,000 character) text.

    python benchmarks/doctext_bytes_bench.py [BASE_COMMIT]   (default: HEAD~1's doctext.py)
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import trace_replay as tr  # noqa: E402

from collab import ot  # noqa: E402
from collab.doctext import DocText  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FILLERS = (("ASCII", "abcdefghij\n"), ("umlauts, emoji, CJK", "Grüße 🦊 中文\n"))


def old_doctext(commit: str) -> type:
    source = subprocess.run(["git", "show", f"{commit}:src/collab/doctext.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "doctext_base.py"
    path.write_text(source.replace("from . import ot", "from collab import ot"))
    spec = importlib.util.spec_from_file_location("doctext_base", path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module.DocText


def per_edit(cls: type, start: str, ops: list[ot.Operation]) -> float:
    text = cls(start)
    apply = text.apply
    t0 = time.perf_counter()
    for op in ops:
        apply(op)
    return (time.perf_counter() - t0) / len(ops) * 1e6


def cases() -> list[tuple[str, str, list[ot.Operation]]]:
    trace = tr.load_trace("automerge-paper").limited(20_000)
    out = []
    for k, (label, unit) in enumerate(FILLERS):
        for size in (0, 10_485_760) if k == 0 else (10_485_760,):
            text = (unit * (size // len(unit) + 1))[:size]
            p = tr.prepare(trace, text[: size // 2], text[size // 2 :])
            out.append((f"trace, {size:,} {label if size else ''}".rstrip(), p.start, p.ops))
        start = (unit * 1000)[:7000]
        n = len(start)
        ops = [ot.from_splice(n, 3500, 0, "é"), ot.from_splice(n + 1, 3500, 1, "")] * 5000
        out.append((f"typing in 7,000 {label}", start, ops))
    return out


def main() -> None:
    base = old_doctext(sys.argv[1] if len(sys.argv) > 1 else "HEAD~1")
    print("| case | before µs/edit | after µs/edit |\n| --- | ---: | ---: |")
    for label, start, ops in cases():
        best = {"before": float("inf"), "after": float("inf")}
        for _ in range(3):
            best["before"] = min(best["before"], per_edit(base, start, ops))
            best["after"] = min(best["after"], per_edit(DocText, start, ops))
        print(f"| {label} | {best['before']:.2f} | {best['after']:.2f} |")


if __name__ == "__main__":
    main()
