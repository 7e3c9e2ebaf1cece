"""Background chores of the app: read or prune the store every so many seconds, whatever happens.

A chore that fails (the store is away) logs one line and runs again at its
next time; only cancelling stops it. Used by the trash and the revocations.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

from .aio import cancel_and_wait


class Chores:
    """Periodic tasks started together and stopped together."""

    def __init__(self, log: logging.Logger) -> None:
        self.log = log
        self._tasks: list[asyncio.Task[None]] = []

    def every(self, seconds: float, fn: Callable[[], Awaitable[object]], what: str, name: str) -> None:
        """Run ``fn`` every ``seconds`` (first after one period); ``what`` names it in the retry warning."""
        self._tasks.append(asyncio.create_task(self._loop(seconds, fn, what), name=name))

    async def _loop(self, seconds: float, fn: Callable[[], Awaitable[object]], what: str) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await fn()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the store is away: next time
                self.log.warning("%s failed (%s); retrying", what, exc)

    async def close(self) -> None:
        """Cancel every chore and wait for it to end."""
        await cancel_and_wait(*self._tasks)
        self._tasks = []
