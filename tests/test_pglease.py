"""Document leases on a real PostgreSQL: one holder at a time, released on release, on a lost
connection and when the holding process is killed with SIGKILL.

Needs ``COLLAB_TEST_DATABASE_URL``; skipped with the reason otherwise.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import sys
from pathlib import Path
from typing import AsyncIterator

import pytest

PG_URL = os.environ.get("COLLAB_TEST_DATABASE_URL", "")
SRC = Path(__file__).resolve().parent.parent / "src"


def _with_schema(schema: str) -> str:
    return f"{PG_URL}{'&' if '?' in PG_URL else '?'}schema={schema}"


@pytest.fixture
async def leases() -> AsyncIterator:
    """``await leases(schema=None)``: an open :class:`Leases` on a schema of this test's own (or ``schema``)."""
    if not PG_URL:
        pytest.skip("COLLAB_TEST_DATABASE_URL is not set (e.g. postgresql://postgres@127.0.0.1:5432/test)")
    try:
        import asyncpg
    except ImportError:
        pytest.skip("asyncpg is not installed (pip install 'collab[postgres]')")
    try:
        conn = await asyncpg.connect(PG_URL, timeout=5)
        await conn.close()
    except Exception as exc:
        pytest.skip(f"PostgreSQL at COLLAB_TEST_DATABASE_URL is unreachable: {exc}")
    from collab.store.pglease import Leases

    own = f"collab_lease_{secrets.token_hex(5)}"
    opened: list[Leases] = []

    async def make(schema: str | None = None) -> Leases:
        lease = Leases.from_url(_with_schema(schema or own))
        await lease.open()
        opened.append(lease)
        return lease

    make.schema = own  # type: ignore[attr-defined]
    yield make
    for lease in opened:
        await lease.close()


async def test_one_holder_at_a_time_until_it_lets_go(leases):
    a, b = await leases(), await leases()
    assert await a.acquire(["notes", "draft-1"]) == {"notes", "draft-1"}
    assert await b.acquire(["notes", "plan"]) == {"plan"}
    assert await a.acquire(["notes"]) == {"notes"}  # taken again by its holder: still one lock to let go
    await a.release(["notes", "plan"])  # "plan" is b's: untouched
    assert a.held == {"draft-1"}
    assert await b.acquire(["notes", "plan"]) == {"notes", "plan"}
    assert await a.acquire(["notes", "plan"]) == set()


async def test_deployments_in_separate_schemas_do_not_share_leases(leases):
    a = await leases()
    other = await leases(schema=f"{leases.schema}_other")
    assert await a.acquire(["notes"]) == {"notes"}
    assert await other.acquire(["notes"]) == {"notes"}


async def test_a_lost_connection_is_noticed_and_frees_the_leases(leases):
    import asyncpg

    a, b = await leases(), await leases()
    assert await a.acquire(["notes"]) == {"notes"}
    admin = await asyncpg.connect(PG_URL)
    try:
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", a._conn.get_server_pid())
    finally:
        await admin.close()
    await asyncio.wait_for(a.lost.wait(), 30)
    assert a.held == frozenset()
    assert await b.acquire(["notes"]) == {"notes"}
    assert await a.acquire(["notes", "plan"]) == {"plan"}  # connected again: it can hold leases again
    assert not a.lost.is_set()


async def test_a_holder_killed_with_sigkill_frees_its_leases(leases):
    b = await leases()
    code = (
        "import asyncio, sys\n"
        "from collab.store.pglease import Leases\n"
        "async def main():\n"
        "    lease = Leases.from_url(sys.argv[1])\n"
        "    await lease.open()\n"
        "    print(sorted(await lease.acquire(['notes', 'draft-1'])), flush=True)\n"
        "    await asyncio.sleep(3600)\n"
        "asyncio.run(main())\n"
    )
    env = dict(os.environ, PYTHONPATH=str(SRC))
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", code, _with_schema(leases.schema),
                                                stdout=asyncio.subprocess.PIPE, env=env)
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line.decode().strip() == "['draft-1', 'notes']"
        assert await b.acquire(["notes", "draft-1"]) == set()
        proc.send_signal(signal.SIGKILL)
        await proc.wait()

        async def taken() -> None:
            while await b.acquire(["notes", "draft-1"]) != {"notes", "draft-1"}:
                await asyncio.sleep(0.05)

        await asyncio.wait_for(taken(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
