"""Sender refusals recorded for feed health: a known facility's deliveries answered 401 (a wrong shared
secret, a missing or bad signature, a stale timestamp), counted per (facility, reason, minute) in
``webhook_refusals``.

The receiver never waits on Postgres for a refusal, and a flood of forged requests must not become a
flood of writes: ``RefusalTally.count`` only adds to a bounded in-memory tally, and a task of the
receiver's event loop writes it every ``interval_s`` in one upsert. Counts not yet written when the
process dies are lost (the log line and ``ehri_webhook_auth_failures_total`` keep them); a write that
fails keeps them for the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from datetime import UTC, datetime

import structlog
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

log = structlog.get_logger("api.hooks")

FLUSH_INTERVAL_S = 5.0
MAX_KEYS = 10_000  # facilities x reasons x minutes between two writes: far below, unless Postgres is away

_UPSERT = text(
    """
    INSERT INTO webhook_refusals AS w (facility_id, reason, minute, refusals)
    SELECT * FROM unnest(CAST(:f AS text[]), CAST(:r AS text[]), CAST(:m AS timestamptz[]),
                         CAST(:n AS bigint[]))
    ON CONFLICT (facility_id, reason, minute) DO UPDATE SET refusals = w.refusals + excluded.refusals
    """
)

Key = tuple[str, str, datetime]


class RefusalTally:
    def __init__(self, engine: AsyncEngine, *, interval_s: float = FLUSH_INTERVAL_S) -> None:
        self._engine = engine
        self._interval_s = interval_s
        self._counts: Counter[Key] = Counter()
        self._task: asyncio.Task[None] | None = None

    def count(self, facility_id: str, reason: str, at: float) -> None:
        """One refusal of ``facility_id`` for ``reason`` at ``at`` (epoch seconds)."""
        key = (facility_id, reason[:64], datetime.fromtimestamp(at // 60 * 60, UTC))
        if key in self._counts or len(self._counts) < MAX_KEYS:
            self._counts[key] += 1

    async def flush(self) -> int:
        """Write what was counted since the last write; returns how many refusals were written."""
        batch, self._counts = self._counts, Counter()
        if not batch:
            return 0
        keys = list(batch)
        params = {
            "f": [k[0] for k in keys],
            "r": [k[1] for k in keys],
            "m": [k[2] for k in keys],
            "n": [batch[k] for k in keys],
        }
        try:
            async with self._engine.begin() as conn:
                await conn.execute(_UPSERT, params)
        except (SQLAlchemyError, OSError):
            for key, n in batch.items():  # kept for the next write, within the bound
                if key in self._counts or len(self._counts) < MAX_KEYS:
                    self._counts[key] += n
            log.warning("hooks.refusals_not_recorded", refusals=sum(batch.values()))
            return 0
        return sum(batch.values())

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="refusals")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            await self.flush()
