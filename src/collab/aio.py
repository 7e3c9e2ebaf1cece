"""Small asyncio helpers shared by the modules that own background tasks."""

from __future__ import annotations

import asyncio

RECANCEL_SECONDS = 1.0


async def cancel_and_wait(*tasks: "asyncio.Future[object] | None") -> None:
    """Cancel each task and wait until it has ended, cancelling again if it carries on.

    A cancel can be lost. Before Python 3.12, ``asyncio.wait_for`` returns its result instead of raising
    when the awaitable it wraps finishes as the cancel arrives (CPython gh-86296), and redis-py 8 sends
    every command through ``wait_for`` (its ``socket_timeout`` is 5 s by default). A watch loop that lost
    its cancel would otherwise keep a shutdown waiting for ever; a task still cleaning up after the first
    cancel gets ``RECANCEL_SECONDS`` before the next. What a task raised as it ended is its own business
    here: it is not re-raised.
    """
    for task in tasks:
        if task is None:
            continue
        while not task.done():
            task.cancel()
            await asyncio.wait([task], timeout=RECANCEL_SECONDS)
        if not task.cancelled():
            task.exception()  # retrieved, so asyncio does not log it as never retrieved
