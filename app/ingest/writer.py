"""Group commit for the receiver: concurrent requests share one transaction.

Each request hands its inbox entries to ``InboxWriter.write`` and waits; a few writer loops take
everything queued (up to ``max_batch`` entries), insert it in one statement with ON CONFLICT DO NOTHING
on the dedup key, commit, and only then wake the requests. A request is answered 2xx only after its rows
are committed; if the transaction fails every waiting request gets the error (and answers 503).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.ingest.inbox import InboxEntry

_COLUMNS = (
    "facility_id",
    "dedup_key",
    "subscription",
    "event_number",
    "focus_type",
    "focus_id",
    "interaction",
    "payload",
)

_INSERT = text(
    """
    INSERT INTO inbox (facility_id, dedup_key, subscription, event_number, focus_type, focus_id,
                       interaction, payload)
    SELECT * FROM unnest(CAST(:facility_id AS text[]), CAST(:dedup_key AS text[]),
                         CAST(:subscription AS text[]), CAST(:event_number AS bigint[]),
                         CAST(:focus_type AS text[]), CAST(:focus_id AS text[]),
                         CAST(:interaction AS text[]), CAST(:payload AS jsonb[]))
    ON CONFLICT (facility_id, dedup_key) DO NOTHING
    RETURNING facility_id, dedup_key
    """
)


@dataclass(frozen=True)
class WriteResult:
    stored: int
    duplicates: int


@dataclass
class _Job:
    entries: list[InboxEntry]
    future: asyncio.Future[WriteResult]


class InboxWriter:
    def __init__(self, engine: AsyncEngine, *, max_batch: int = 256, loops: int = 2) -> None:
        self._engine = engine
        self._max_batch = max_batch
        self._loops = loops
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._run(), name=f"inbox-writer-{i}") for i in range(self._loops)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        while not self._queue.empty():
            job = self._queue.get_nowait()
            if not job.future.done():
                job.future.set_exception(RuntimeError("receiver shutting down"))

    async def write(self, entries: list[InboxEntry]) -> WriteResult:
        if not entries:
            return WriteResult(0, 0)
        future: asyncio.Future[WriteResult] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Job(entries, future))
        return await future

    async def _run(self) -> None:
        while True:
            jobs = [await self._queue.get()]
            size = len(jobs[0].entries)
            while size < self._max_batch and not self._queue.empty():
                job = self._queue.get_nowait()
                jobs.append(job)
                size += len(job.entries)
            try:
                stored = await self._insert([e for job in jobs for e in job.entries])
            except asyncio.CancelledError:
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(RuntimeError("receiver shutting down"))
                raise
            except Exception as exc:  # noqa: BLE001 - every waiting request must learn of the failure
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            for job in jobs:
                mine = 0
                for entry in job.entries:
                    key = (entry.facility_id, entry.dedup_key)
                    if stored[key] > 0:
                        stored[key] -= 1
                        mine += 1
                if not job.future.done():
                    job.future.set_result(WriteResult(mine, len(job.entries) - mine))

    async def _insert(self, entries: list[InboxEntry]) -> Counter[tuple[str, str]]:
        params: dict[str, list[Any]] = {c: [] for c in _COLUMNS}
        for entry in entries:
            row = entry.as_row()
            for column in _COLUMNS:
                value = row[column]
                params[column].append(
                    json.dumps(value) if column == "payload" and value is not None else value
                )
        async with self._engine.begin() as conn:
            result = await conn.execute(_INSERT, params)
            return Counter((r.facility_id, r.dedup_key) for r in result)
