"""The receiver's doorbell: the Celery doorbell rung through a ``Pacer`` (``app.pacing``), so that the
event loop never blocks on the broker and a burst of notifications costs a bounded number of messages."""

from __future__ import annotations

import asyncio

from app.metrics import DOORBELL_FAILURES
from app.pacing import Pacer
from app.queue import Doorbell

MIN_INTERVAL_S = 0.2


class AsyncDoorbell(Pacer):
    def __init__(self, doorbell: Doorbell, *, min_interval_s: float = MIN_INTERVAL_S) -> None:
        super().__init__(doorbell.ring, min_interval_s, name="doorbell", failed=DOORBELL_FAILURES.inc)
        self._doorbell = doorbell

    async def stop(self) -> None:
        await super().stop()
        await asyncio.to_thread(self._doorbell.close)
