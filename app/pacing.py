"""Ringing a doorbell from an event loop without blocking it, coalesced per facility and paced.

While one round of sends is in flight, further rings for the same facility collapse into one: a task
drains everything due, so one message per burst is enough, and the sweeper covers any that fail. Rounds
are at least ``interval_s`` apart, so a sustained burst costs a bounded number of broker messages
(publishing one costs an event loop far more than a notification does) and adds at most that interval
to a row's wait. Used by the webhook receiver (``app.api.doorbell``) and the MLLP listener.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable


class Pacer:
    """``ring(facility_id)`` runs in a thread (publishing blocks); when it returns ``False`` (the broker
    refused), ``failed`` is called, e.g. to count it. A failure is never raised: the sweeper rings again
    from Postgres."""

    def __init__(
        self,
        ring: Callable[[str], object],
        interval_s: float,
        *,
        name: str = "doorbell",
        failed: Callable[[], object] | None = None,
    ) -> None:
        self._ring_one = ring
        self._interval_s = interval_s
        self._name = name
        self._failed = failed
        self._pending: set[str] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self._name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def ring(self, facility_id: str) -> None:
        self._pending.add(facility_id)
        self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._pending = self._pending, set()
            for facility_id in sorted(batch):
                if await asyncio.to_thread(self._ring_one, facility_id) is False and self._failed:
                    self._failed()
            await asyncio.sleep(self._interval_s)
