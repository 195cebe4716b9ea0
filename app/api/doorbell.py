"""Ringing the doorbell without blocking the event loop, coalesced per facility and paced.

While one send is in flight, further rings for the same facility collapse into one: a drain task
drains everything due, so one message per burst is enough, and the sweeper covers any that fail.
Rounds of sends are at least ``min_interval_s`` apart, so a sustained burst of notifications costs a
bounded number of broker messages (publishing one costs the receiver's event loop far more than a
notification does) and adds at most that interval to a row's wait.
"""

from __future__ import annotations

import asyncio
import contextlib

from app.metrics import DOORBELL_FAILURES
from app.queue import Doorbell

MIN_INTERVAL_S = 0.2


class AsyncDoorbell:
    def __init__(self, doorbell: Doorbell, *, min_interval_s: float = MIN_INTERVAL_S) -> None:
        self._doorbell = doorbell
        self._min_interval_s = min_interval_s
        self._pending: set[str] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="doorbell")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await asyncio.to_thread(self._doorbell.close)

    def ring(self, facility_id: str) -> None:
        self._pending.add(facility_id)
        self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._pending = self._pending, set()
            for facility_id in sorted(batch):
                if not await asyncio.to_thread(self._doorbell.ring, facility_id):
                    DOORBELL_FAILURES.inc()
            await asyncio.sleep(self._min_interval_s)
