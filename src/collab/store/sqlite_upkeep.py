"""The SQLite store's history upkeep: steps of :meth:`SqliteHistory.maintain_step` taken between commits.

A step packs one interval of old ops and stores a checkpoint's authorship
(see :mod:`collab.store.sqlite_history`) on the store's thread, in its own
transaction, while appends queue as they do behind a commit: no commit is
unsettled meanwhile, so the step's own fsync (``synchronous=FULL`` on that
connection) never races one. Steps start once no commit came for
``MAINTAIN_IDLE`` seconds and go on while no append arrives; a store never
idle still takes one every ``MAINTAIN_COMMITS`` commits.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from typing import Any

log = logging.getLogger("collab.store")


class SqliteUpkeep:
    """Mixed into :class:`~collab.store.sqlite.SqliteStore`, whose commit pipeline state it shares."""

    #: Seconds without a commit after which the store's thread maintains the history.
    MAINTAIN_IDLE = 1.0
    #: A store never idle that long still takes a maintenance step every this many commits.
    MAINTAIN_COMMITS = 1000

    auto_maintain: bool
    _maint_work: bool
    _maint_commits: int
    _maint_timer: asyncio.TimerHandle | None
    _upkept_waiters: list[asyncio.Future[None]]
    _committing: bool
    _started: int
    _settled: int
    _failed: str | None
    _loop: asyncio.AbstractEventLoop | None
    _executor: Any

    def _init_upkeep(self, maintain: bool) -> None:
        #: Whether the store maintains its history by itself (else only :meth:`maintain` does).
        self.auto_maintain = maintain
        #: Maintenance may have work (a checkpoint was written since a step last found none).
        self._maint_work = True
        self._maint_commits = 0
        self._maint_timer = None
        self._upkept_waiters = []

    def _committed_for_upkeep(self, batch: list[Any]) -> bool:
        """Count a commit of ``batch``; whether a maintenance step is due now (a store that is never idle)."""
        self._maint_commits += 1
        if any(a.snapshot is not None for a in batch):
            self._maint_work = True
        return self._maint_work and self.auto_maintain and self._maint_commits >= self.MAINTAIN_COMMITS

    def _stop_upkeep(self) -> None:
        if self._maint_timer is not None:
            self._maint_timer.cancel()
            self._maint_timer = None
    _pending: list
    _write: Any
    _history: Any

    def _schedule_maintenance(self) -> None:
        """Take a maintenance step once no commit has started for :attr:`MAINTAIN_IDLE` seconds."""
        if not self.auto_maintain or not self._maint_work or self._maint_timer is not None or self._failed is not None:
            return
        assert self._loop is not None
        self._maint_timer = self._loop.call_later(self.MAINTAIN_IDLE, self._maintenance_due, self._started)

    def _maintenance_due(self, started: int) -> None:
        self._maint_timer = None
        if self._committing:  # the commit's end schedules it again
            return
        if self._started != started or self._executor is None:
            self._schedule_maintenance()
            return
        self._committing = True
        self._maintenance_step()

    def _maintenance_step(self) -> None:
        """One step on the store's thread while appends queue (as behind a commit), then the next
        step at once if none queued meanwhile, else the queued commit."""
        assert self._committing and self._settled == self._started and self._failed is None
        self._maint_commits = 0
        self._on_thread(self._maintained, self._maintain_sync)

    def _maintain_sync(self) -> int | None:
        return self._history.maintain_step(self._thread_db())

    def _maintained(self, work: concurrent.futures.Future) -> None:
        error = work.exception()
        if error is not None:
            log.warning("maintaining the history failed (%s); trying again after the next checkpoint", error)
            self._maint_work = False
        elif work.result() is None:
            self._maint_work = False
            waiters, self._upkept_waiters = self._upkept_waiters, []
            for w in waiters:
                if not w.done():
                    w.set_result(None)
        else:
            assert self._write is not None
            self._write.wal_bytes += 4096 + 32 * work.result()
        if self._maint_work and not self._pending and self._executor is not None:
            self._maintenance_step()
        else:
            self._commit_pending()

    async def upkept(self) -> None:
        """Return once the store's own maintenance steps found nothing left to do (for tests)."""
        while self.auto_maintain and self._maint_work and self._failed is None:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._upkept_waiters.append(waiter)
            await waiter

    async def maintain(self) -> int:
        """Maintain the history to the end now: how many ops were packed (tests and benchmarks;
        the store takes these steps by itself when idle)."""
        total = 0
        while True:
            await self._idle()
            self._raise_if_failed()
            self._committing = True
            try:
                got = await self._run(self._maintain_sync)
            finally:
                self._commit_pending()
            if got is None:
                self._maint_work = False
                return total
            total += got

