"""Clients coming and going: sessions that join, edit a little and leave, on documents spread over processes.

Real ``collab`` processes on one PostgreSQL and one Redis (no affinity).
Each of ``--per-doc`` clients per document, in a loop: connects to a process
picked at random, joins, makes 1 to 30 edits (one in flight, each an
insert of one code point, so a document's length is its number of edits),
and leaves. Leases move with the clients all the time. Optionally an HTTP
client replaces random documents' text meanwhile (``--http``). With
``--handoff`` the processes share a hand-over directory, as the workers of
``collab serve --workers N`` do: each new connection is passed to the
process that owns its document, while leases move as clients leave.

Reported: edits acknowledged per second, and what went wrong, if anything:
an error or a close (1011 "storage failed" is a document the server gave
up on), an op out of order, a document that reads differently on the
processes, or (without ``--http``) a total length other than the edits
acknowledged. Also each process's commits, those taken holding a
document's row lock (two processes ordering one document), and lost races.
Exits with 1 if anything went wrong. There is no baseline inside one run:
compare a commit with the one before it by running the servers of each
(``PYTHONPATH`` pointing at a ``git worktree`` of the older one).

    python benchmarks/churn_bench.py --database-url postgresql://postgres@127.0.0.1:5432/test \\
        --redis-url redis://127.0.0.1:6379/0 [--processes 2] [--docs 20] [--seconds 15] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import statistics
import sys
import tempfile
from dataclasses import dataclass, field

import websockets
from _common import read_metrics
from scaleout_bench import Server, drop_schemas


@dataclass
class Tally:
    acked: int = 0
    problems: list[str] = field(default_factory=list)


async def session(url: str, edits: int, tally: Tally) -> None:
    """Join, make ``edits`` edits one at a time (each the next when the last is acknowledged), leave."""
    async with websockets.connect(url, max_size=None, open_timeout=30) as ws:
        await ws.send(json.dumps({"type": "join"}))
        while True:
            msg = json.loads(await ws.recv())
            if msg["type"] == "welcome":
                rev, length = msg["rev"], len(msg["text"])
                break
        for _ in range(edits):
            op_id = secrets.token_hex(6)
            await ws.send(json.dumps({"type": "op", "rev": rev, "op": ["🐝", length] if length else ["🐝"],
                                      "id": op_id}))
            while True:
                msg = json.loads(await ws.recv())
                if msg["type"] == "op":
                    if msg["rev"] != rev + 1:
                        tally.problems.append(f"op of revision {msg['rev']} after {rev} ({url})")
                        return
                    rev = msg["rev"]
                    length += sum(len(c) for c in msg["op"] if isinstance(c, str))
                    length += sum(c for c in msg["op"] if isinstance(c, int) and c < 0)
                elif msg["type"] == "ack":
                    if msg.get("id") != op_id or msg["rev"] <= rev:
                        tally.problems.append(f"ack {msg} for {op_id} at revision {rev} ({url})")
                        return
                    rev, length = msg["rev"], length + 1
                    tally.acked += 1
                    break
                elif msg["type"] == "error":
                    tally.problems.append(f"error {msg} at revision {rev}, length {length} ({url})")
                    return


async def client(urls: list[str], stop: float, tally: Tally, rng: random.Random) -> None:
    loop = asyncio.get_running_loop()
    while loop.time() < stop:
        try:
            await session(rng.choice(urls), rng.randint(1, 30), tally)
        except Exception as exc:  # a close the server chose (1011: it gave up on the document)
            tally.problems.append(f"closed: {exc!r}"[:300])


async def replacer(servers: list[Server], docs: list[str], stop: float, tally: Tally, rng: random.Random) -> int:
    """Replace a random document's text over HTTP, on a random process, about 20 times a second."""
    import httpx

    n = 0
    async with httpx.AsyncClient(timeout=30) as http:
        while asyncio.get_running_loop().time() < stop:
            url = f"http://127.0.0.1:{rng.choice(servers).port}/api/docs/{rng.choice(docs)}/text"
            resp = await http.put(url, content=("🦊 " * rng.randint(0, 5)).encode())
            if resp.status_code != 200:
                tally.problems.append(f"PUT {url}: {resp.status_code} {resp.text[:100]}")
            n += 1
            await asyncio.sleep(0.05)  # pacing, not synchronisation
    return n


def counters(server: Server) -> dict[str, float]:
    names = ("collab_store_commits_total", "collab_store_exclusive_turns_total", "collab_conflicts_total")
    return {name: value for name, value in read_metrics(server.port).items() if name in names}


async def one_round(args: argparse.Namespace, r: int, tag: str) -> dict:
    sep = "&" if "?" in args.database_url else "?"
    rsep = "&" if "?" in args.redis_url else "?"
    env = {"DATABASE_URL": f"{args.database_url}{sep}schema=collab_bench_{tag}_{r}",
           "REDIS_URL": f"{args.redis_url}{rsep}prefix=collab-churn-{tag}-{r}"}
    handoff = tempfile.TemporaryDirectory() if args.handoff else None
    if handoff is not None:  # processes on one machine: connections go to their document's owner
        env["COLLAB_HANDOFF_DIR"] = handoff.name
    servers = [Server(env).start() for _ in range(args.processes)]
    tally = Tally()
    rng = random.Random(r)
    try:
        docs = [f"churn-{tag}-{r}-{i}" for i in range(args.docs)]
        loop = asyncio.get_running_loop()
        start = loop.time()
        stop = start + args.seconds
        tasks = [client([f"ws://127.0.0.1:{s.port}/ws/{d}" for s in servers], stop, tally, random.Random(rng.random()))
                 for d in docs for _ in range(args.per_doc)]
        if args.http:
            tasks.append(replacer(servers, docs, stop, tally, random.Random(rng.random())))
        await asyncio.gather(*tasks)
        elapsed = loop.time() - start
        import httpx

        total = 0
        async with httpx.AsyncClient(timeout=30) as http:
            for d in docs:
                seen = set()
                for s in servers:
                    body = (await http.get(f"http://127.0.0.1:{s.port}/api/docs/{d}")).json()
                    seen.add((body.get("rev"), body.get("text")))
                if len(seen) != 1:
                    tally.problems.append(f"{d} reads differently on the processes: {sorted(r for r, _ in seen)}")
                total += len(next(iter(seen))[1] or "")
        if not args.http and total != tally.acked:
            tally.problems.append(f"the documents hold {total} edits, {tally.acked} were acknowledged")
        per = [counters(s) for s in servers]
    finally:
        for s in servers:
            s.stop()
        if handoff is not None:
            handoff.cleanup()
    return {"ops": tally.acked / elapsed, "problems": tally.problems,
            "commits": sum(p.get("collab_store_commits_total", 0) for p in per),
            "turns": sum(p.get("collab_store_exclusive_turns_total", 0) for p in per),
            "conflicts": sum(p.get("collab_conflicts_total", 0) for p in per)}


async def bench(args: argparse.Namespace) -> int:
    tag = secrets.token_hex(4)
    results = []
    try:
        for r in range(args.rounds):
            results.append(await one_round(args, r, tag))
            res = results[-1]
            print(f"round {r + 1}: {res['ops']:.0f} edits/s acknowledged; commits {res['commits']:.0f}, "
                  f"holding the row lock {res['turns']:.0f}, lost races {res['conflicts']:.0f}; "
                  f"problems: {len(res['problems'])}", file=sys.stderr)
            for p in res["problems"][:5]:
                print(f"  {p}", file=sys.stderr)
    finally:
        await drop_schemas(args.database_url, tag, range(args.rounds))
    print(f"\n{args.processes} processes, {args.docs} documents x {args.per_doc} clients coming and going"
          f"{' and HTTP replacements' if args.http else ''}{'; connections handed to the owner' if args.handoff else ''}; "
          f"{args.seconds:g} s x {args.rounds} rounds\n")
    print("| edits/s acknowledged (median) | commits | holding the row lock | lost races | problems |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    med = statistics.median
    print(f"| {med(r['ops'] for r in results):.0f} | {med(r['commits'] for r in results):.0f} "
          f"| {med(r['turns'] for r in results):.0f} | {med(r['conflicts'] for r in results):.0f} "
          f"| {sum(len(r['problems']) for r in results)} |")
    return 1 if any(r["problems"] for r in results) else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=os.environ.get("COLLAB_TEST_DATABASE_URL", ""))
    parser.add_argument("--redis-url", default=os.environ.get("COLLAB_TEST_REDIS_URL", ""))
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--docs", type=int, default=20)
    parser.add_argument("--per-doc", type=int, default=3, help="clients per document (default 3)")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--http", action="store_true", help="also replace documents' text over HTTP")
    parser.add_argument("--handoff", action="store_true",
                        help="the processes share a hand-over directory (COLLAB_HANDOFF_DIR), as the workers of "
                             "collab serve --workers N do: each new connection goes to its document's owner")
    args = parser.parse_args()
    if not args.database_url or not args.redis_url:
        parser.error("pass --database-url and --redis-url (or set COLLAB_TEST_DATABASE_URL and COLLAB_TEST_REDIS_URL)")
    sys.exit(asyncio.run(bench(args)))


if __name__ == "__main__":
    main()
