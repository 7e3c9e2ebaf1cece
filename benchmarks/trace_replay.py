"""Replay real editing traces through the hub's submit path, against plain str slicing.

For each trace of ``benchmarks/traces`` (or ``$COLLAB_TRACES``) this times, in
one process and one run:

* **baseline**: ``s = s[:pos] + ins + s[pos + dl:]`` for every patch;
* **hub, memory**: a :class:`collab.hub.Hub` over a ``MemoryStore``
  (persistence off), one writer and ``--watchers`` other peers joined (with
  cursors, so presence bookkeeping runs); each op goes through what the
  server does after JSON decoding: ``ot.checked`` (as ``protocol.parse``),
  ``Document.offer`` (base-length check, history, op ids, cursor
  transforms, group commit, ack and one encoded broadcast), and the peers'
  outboxes are drained;
* **hub, SQLite**: the same over a ``SqliteStore`` in a temporary directory
  (``synchronous=FULL``: every batch is fsynced before its ack).

The writer keeps up to ``--window`` ops unacknowledged (1 = a lone typist
waiting for each ack: one batch, one fsync per op; 64 = a pipeline, as the
group commit sees under load). The final text is checked against the
trace's ``endContent``.

``--large`` replays the first ``--large-limit`` patches of automerge-paper in
the middle of a 1 MB and a 10 MB starting text and reports the cost per edit
against the same replay on an empty document.

Examples::

    python benchmarks/trace_replay.py --quick
    python benchmarks/trace_replay.py --traces automerge-paper --repeat 3
    python benchmarks/trace_replay.py --large
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import TRACE_NAMES, Trace, filler, load_trace, machine, slice_replay, table  # noqa: E402

from collab import ot  # noqa: E402
from collab.doctext import DocText  # noqa: E402
from collab.hub import Hub, HubConfig, Peer  # noqa: E402
from collab.protocol import Cursor, Presence, Submit, User  # noqa: E402
from collab.store import Store, StoredOp  # noqa: E402
from collab.store.memory import MemoryStore  # noqa: E402
from collab.store.sqlite import SqliteStore  # noqa: E402

DOC = "bench"


@dataclass
class Prepared:
    """A trace turned into what clients would submit (built outside the timing)."""

    start: str
    end: str
    patches: list[tuple[int, int, str]]
    ops: list[ot.Operation]
    cursors: list[Cursor]
    ids: list[str]


def prepare(trace: Trace, prefix: str = "", suffix: str = "") -> Prepared:
    """Ops for the trace's patches, shifted past ``prefix`` and followed by ``suffix``."""
    start = prefix + trace.start + suffix
    shift = len(prefix)
    length = len(start)
    ops, cursors, ids, patches = [], [], [], []
    for i, (pos, dl, ins) in enumerate(trace.patches):
        p = pos + shift
        patches.append((p, dl, ins))
        ops.append(ot.from_splice(length, p, dl, ins))
        length += len(ins) - dl
        cursors.append(Cursor(p + len(ins), p + len(ins)))
        ids.append(f"t{i}")
    end = prefix + trace.end + suffix
    assert len(end) == length
    return Prepared(start, end, patches, ops, cursors, ids)


def time_slicing(p: Prepared) -> tuple[float, str]:
    t0 = time.perf_counter()
    text = slice_replay(p.start, p.patches)
    return time.perf_counter() - t0, text


def time_doctext(p: Prepared) -> tuple[float, str]:
    """DocText.apply alone, on the prepared ops."""
    text = DocText(p.start)
    apply = text.apply
    t0 = time.perf_counter()
    for op in p.ops:
        apply(op)
    return time.perf_counter() - t0, str(text)


async def _seed(store: Store, start: str) -> None:
    if start:
        await store.append(DOC, [StoredOp(1, [start], "seed", "seed")], len(start), (1, start))


async def hub_replay(store: Store, p: Prepared, window: int, watchers: int) -> tuple[float, str, int]:
    """Time the trace through ``Document.offer``; returns (seconds, final text, frames delivered)."""
    await _seed(store, p.start)
    config = HubConfig(max_doc_chars=max(20_000_000, 2 * len(p.end)))
    hub = Hub(store, config)
    big = 1 << 40
    writer = Peer(User("writer", "#c00"), "edit", big)
    doc = await hub.join(DOC, writer, None)
    others = []
    for k in range(watchers):
        peer = Peer(User(f"watcher{k}", "#0a0"), "edit", big)
        await hub.join(DOC, peer, None)
        await doc.presence(peer, Presence(doc.rev, Cursor(0, 0), None))
        others.append(peer)
    for peer in (writer, *others):
        peer.outbox.clear()
        peer.ready.clear()
    base = doc.rev
    ops, ids, cursors = p.ops, p.ids, p.cursors
    n = len(ops)
    checked, offer = ot.checked, doc.offer
    sent = acked = delivered = 0
    ready, take = writer.ready, writer.take
    t0 = time.perf_counter()
    while acked < n:
        while sent < n and sent - acked < window:
            op, base_len, target_len = checked(ops[sent])
            if not offer(writer, Submit(base + sent, op, ids[sent], cursors[sent], (base_len, target_len))):
                raise RuntimeError("the replay's submits never need the store")
            sent += 1
        await ready.wait()
        ready.clear()
        frames = take()
        if frames and not frames[-1].startswith('{"type":"ack"'):  # an error frame: the final text check would fail too
            raise RuntimeError(f"unexpected frame for the writer: {frames[-1][:200]}")
        acked += len(frames)
        for peer in others:
            delivered += len(peer.take())
            peer.ready.clear()
    elapsed = time.perf_counter() - t0
    if doc.rev != base + n:
        raise RuntimeError(f"{doc.rev - base} of {n} ops were applied")
    await hub.close()
    return elapsed, str(doc.text), delivered


async def with_memory(p: Prepared, window: int, watchers: int) -> tuple[float, str, int]:
    return await hub_replay(MemoryStore(), p, window, watchers)


async def with_sqlite(p: Prepared, window: int, watchers: int, synchronous: str = "FULL") -> tuple[float, str, int]:
    with tempfile.TemporaryDirectory(prefix="collab-bench-") as tmp:
        store = SqliteStore(str(Path(tmp) / "collab.sqlite3"), synchronous=synchronous)
        await store.open()
        try:
            return await hub_replay(store, p, window, watchers)
        finally:
            await store.close()


LOOP = "uvloop"


def run_async(fn: Callable[..., Awaitable[tuple[float, str, int]]], *args: object, loop: str | None = None) -> tuple[float, str, int]:
    """Run one replay on a fresh event loop: ``loop``, else the kind ``--loop`` chose."""
    gc.collect()
    if (loop or LOOP) == "uvloop":
        import uvloop

        return uvloop.run(fn(*args))
    return asyncio.run(fn(*args))


def check(name: str, got: str, want: str) -> None:
    if got != want:
        i = next((k for k, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
        raise SystemExit(f"{name}: final text differs from endContent at code point {i} (lengths {len(got)}, {len(want)})")


def bench_traces(args: argparse.Namespace) -> str:
    rows = []
    for name in args.traces:
        trace = load_trace(name).limited(args.limit)
        p = prepare(trace)
        n = len(p.ops)
        best: dict[str, float] = {}
        for _ in range(args.repeat):  # interleaved, best of: the machine is shared
            variants: list[tuple[str, Callable[[], tuple[float, str]]]] = [("slice", lambda: time_slicing(p))]
            for w in args.windows:
                variants.append((f"mem w={w}", lambda w=w: run_async(with_memory, p, w, args.watchers)[:2]))
            if args.compare_loops:  # the other loop, same run, for the in-memory path
                other = "asyncio" if LOOP == "uvloop" else "uvloop"
                for w in args.windows:
                    variants.append(
                        (f"mem w={w} {other}", lambda w=w: run_async(with_memory, p, w, args.watchers, loop=other)[:2])
                    )
            for w in args.sqlite_windows:
                variants.append((f"sqlite w={w}", lambda w=w: run_async(with_sqlite, p, w, args.watchers)[:2]))
            for w in args.sqlite_normal_windows:
                variants.append((f"sqlite-normal w={w}",
                                 lambda w=w: run_async(with_sqlite, p, w, args.watchers, "NORMAL")[:2]))
            for label, fn in variants:
                seconds, text = fn()
                check(f"{name} {label}", text, p.end)
                best[label] = min(best.get(label, float("inf")), seconds)
        base = best["slice"]
        for label, seconds in best.items():
            rows.append([name, n, label, seconds, n / seconds, seconds / n * 1e6, seconds / base])
    return table(["trace", "edits", "path", "seconds", "edits/s", "µs/edit", "× slicing"], rows)


def bench_large(args: argparse.Namespace) -> str:
    trace = load_trace("automerge-paper").limited(args.large_limit)
    rows = []
    results: dict[tuple[int, str], float] = {}
    for _ in range(args.repeat):
        for size in args.sizes:
            text = filler(size)
            p = prepare(trace, text[: size // 2], text[size // 2 :])
            n = len(p.ops)
            # Slicing a 10 MB str per edit is slow: time only the first patches.
            cut = n if size <= 100_000 else min(n, args.slice_limit)
            ps = Prepared(p.start, "", p.patches[:cut], [], [], [])
            seconds, _ = time_slicing(ps)
            results[size, "str slicing"] = min(results.get((size, "str slicing"), float("inf")), seconds / cut)
            for label, fn in (
                ("DocText.apply", lambda: time_doctext(p)),
                ("hub, memory, w=1", lambda: run_async(with_memory, p, 1, args.watchers)[:2]),
                ("hub, SQLite, w=64", lambda: run_async(with_sqlite, p, 64, args.watchers)[:2]),
            ):
                seconds, final = fn()
                check(f"{size} {label}", final, p.end)
                results[size, label] = min(results.get((size, label), float("inf")), seconds / n)
    labels = ["str slicing", "DocText.apply", "hub, memory, w=1", "hub, SQLite, w=64"]
    for label in labels:
        empty = results[args.sizes[0], label]
        for size in args.sizes:
            per = results[size, label]
            rows.append([label, f"{size:,}", per * 1e6, per / empty])
    return table(["path", "start size (code points)", "µs/edit", f"× at {args.sizes[0]:,}"], rows)


def profile_hub(args: argparse.Namespace) -> str:
    """cProfile the in-memory hub path (first trace, first window): where the time per edit goes."""
    import cProfile
    import pstats

    p = prepare(load_trace(args.traces[0]).limited(args.limit))
    profiler = cProfile.Profile()
    profiler.enable()
    seconds, text, _ = run_async(with_memory, p, args.windows[0], args.watchers)
    profiler.disable()
    check("profile", text, p.end)
    stats = pstats.Stats(profiler)
    total = sum(v[2] for v in stats.stats.values())  # type: ignore[attr-defined]
    rows = []
    for (file, line, func), (_, calls, tottime, cumtime, _) in sorted(
        stats.stats.items(), key=lambda kv: kv[1][2], reverse=True  # type: ignore[attr-defined]
    )[:25]:
        where = "/".join(Path(file).parts[-2:]) if file != "~" else "builtin"
        rows.append([f"{func} ({where}:{line})", calls, tottime / total * 100, cumtime / len(p.ops) * 1e6])
    return (
        f"cProfile of the in-memory hub path, {args.traces[0]}, {len(p.ops):,} edits, window {args.windows[0]} "
        f"({seconds / len(p.ops) * 1e6:.0f} µs/edit under the profiler)\n\n"
        + table(["function", "calls", "self %", "cumulative µs/edit"], rows)
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--traces", default="automerge-paper", help=f"comma-separated trace names, or 'all' ({', '.join(TRACE_NAMES)})")
    ap.add_argument("--limit", type=int, default=None, help="replay only the first N patches of each trace")
    ap.add_argument("--repeat", type=int, default=1, help="interleaved repetitions; the best is kept")
    ap.add_argument("--windows", default="1,64,256", help="writer windows for the in-memory hub")
    ap.add_argument("--sqlite-windows", default="64,256", help="writer windows for the SQLite hub")
    ap.add_argument("--sqlite-normal-windows", default="",
                    help="writer windows for the SQLite hub with synchronous=NORMAL (COLLAB_SQLITE_SYNC=normal), e.g. 256")
    ap.add_argument("--watchers", type=int, default=2, help="other peers joined, receiving every op")
    ap.add_argument("--large", action="store_true", help="only the large-document table")
    ap.add_argument("--sizes", default="0,1048576,10485760", help="starting text sizes for --large")
    ap.add_argument("--large-limit", type=int, default=20_000, help="patches replayed on large documents")
    ap.add_argument("--slice-limit", type=int, default=400, help="patches sliced on a large str (it is slow)")
    ap.add_argument("--loop", choices=["uvloop", "asyncio"], default=None,
                    help="event loop (default: uvloop when installed, as uvicorn's loop='auto' picks for the server)")
    ap.add_argument("--compare-loops", action="store_true", help="also run the in-memory path on the other event loop")
    ap.add_argument("--profile", action="store_true", help="cProfile the in-memory hub path instead of timing")
    ap.add_argument("--quick", action="store_true", help="automerge-paper only, first 50,000 patches (large: 5,000)")
    ap.add_argument("--gc", choices=["server", "default"], default="server",
                    help="cyclic GC settings: the server's (collab.server.tune_gc, the default) or Python's")
    args = ap.parse_args(argv)
    args.traces = list(TRACE_NAMES) if args.traces == "all" else [t for t in args.traces.split(",") if t]
    args.windows = [int(w) for w in args.windows.split(",") if w]
    args.sqlite_windows = [int(w) for w in args.sqlite_windows.split(",") if w]
    args.sqlite_normal_windows = [int(w) for w in args.sqlite_normal_windows.split(",") if w]
    args.sizes = [int(s) for s in args.sizes.split(",")]
    global LOOP
    if args.loop is None:
        try:
            import uvloop  # noqa: F401

            args.loop = "uvloop"
        except ImportError:
            args.loop = "asyncio"
    LOOP = args.loop
    if args.quick:
        args.traces = ["automerge-paper"]
        args.limit = args.limit or 50_000
        args.large_limit = min(args.large_limit, 5_000)
        args.slice_limit = min(args.slice_limit, 200)
    if args.gc == "server":
        from collab.server import tune_gc

        tune_gc()  # the hub allocates per op; the server runs it with these settings
    print(f"machine: {machine()}; event loop: {args.loop}; gc: {args.gc}")
    print(f"command: python benchmarks/trace_replay.py {' '.join(sys.argv[1:] if argv is None else argv)}\n")
    t0 = time.perf_counter()
    if args.profile:
        print(profile_hub(args))
    elif args.large:
        print(bench_large(args))
    else:
        print(bench_traces(args))
    print(f"\n(total {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
