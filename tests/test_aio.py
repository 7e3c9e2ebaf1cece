"""cancel_and_wait: a background task stops even if it loses the cancel that should have stopped it."""

import asyncio
import sys

from collab.aio import cancel_and_wait


async def test_a_task_that_loses_its_cancel_is_cancelled_again():
    """A watch loop awaits ``asyncio.wait_for`` (as redis-py 8 does for every command it sends). When the
    awaited thing finishes just as the cancel arrives, Python before 3.12 returns its result and drops the
    cancel, so the loop goes on; waiting for it after one cancel, as every close() did, waited for ever."""
    loop = asyncio.get_running_loop()
    futures: list[asyncio.Future] = []
    waiting = asyncio.Event()
    rounds = 0

    async def watch() -> None:
        nonlocal rounds
        while True:
            futures.append(loop.create_future())
            waiting.set()
            await asyncio.wait_for(futures[-1], 60)
            rounds += 1
            waiting.clear()

    task = loop.create_task(watch())
    await waiting.wait()
    futures[-1].set_result(None)  # done as the cancel arrives
    await asyncio.wait_for(cancel_and_wait(task), 30)
    assert task.cancelled()
    assert rounds == (1 if sys.version_info < (3, 12) else 0)  # on 3.11 the first cancel was lost


async def test_what_a_task_raised_as_it_ended_is_not_raised_again():
    started = asyncio.Event()

    async def fails() -> None:
        try:
            started.set()
            await asyncio.Event().wait()
        finally:
            raise RuntimeError("cleaning up failed")

    task = asyncio.get_running_loop().create_task(fails())
    await started.wait()
    await cancel_and_wait(task, None)
    assert isinstance(task.exception(), RuntimeError)
