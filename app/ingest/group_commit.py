"""Group commit: concurrent callers on an event loop share one Postgres transaction.

The receiver's inbox writer (``app.ingest.writer``) and the HL7 v2 listener's ADT writer
(``app.hl7v2.inbox``) both answer a sender only after its rows are committed, and both batch the rows
of concurrent senders into one transaction. This module is the part they share: the queue, the
batching, the connections, the answers.

The transactions run on the event loop itself (psycopg's ``AsyncConnection``), in a few committer
tasks (``slots``), each with its own connection, so one slow commit does not hold up the next batch.
An earlier design ran them in writer threads, so that a round trip would not wait for a turn of a busy
loop; measured with ``bench/webhook.py`` once the hook routes had become cheap, the threads cost more
than they saved: every round trip's wake-up had to win the GIL back from the loop thread, a commit of
~0.8 ms in Postgres took 10-17 ms at saturation, and acknowledgements per second varied by 1.7x from
run to run with how the threads happened to interleave. On the loop, a commit waits at most for the
callbacks already ready, which are the very requests whose rows make up the next batch.

    caller                                   committer task (one of ``slots``)
    await submit(item) ──► pending ──►       take what is pending (up to max_batch)
                                             await commit_batch(slot, items)  # the subclass's transaction
    future settled    ◄──────────────────    answers, one per item (a result or an exception)

Contract of ``commit_batch(slot, items)``: one answer per item, in order; it may raise, and then every
item of the batch gets that exception. ``await connection(slot)`` is the task's connection, reopened
when found broken.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import psycopg
import structlog
from psycopg.rows import namedtuple_row

CONNECT_TIMEOUT_S = 5
STOP_TIMEOUT_S = 10.0

Item = TypeVar("Item")
Result = TypeVar("Result")

log = structlog.get_logger("ingest.group_commit")


class WriterStopped(Exception):
    """The writer stopped (its process is shutting down) before this item's commit was known to
    succeed: the sender is told to retry (a 503, an AE), never a 500. Nothing of it was stored, except
    when ``stop`` had to cancel a commit already sent: then its outcome is unknown, and a resend of a
    committed item is a duplicate (dedup keys), never a second row."""


class BatchInterrupted(Exception):
    """Raised by ``commit_batch`` when it is cancelled after the answers of its first items are known
    (each committed in a transaction of its own): those are answered, the rest get ``WriterStopped``."""

    def __init__(self, answers: Sequence[Any]) -> None:
        super().__init__(f"cancelled after {len(answers)} answers")
        self.answers = list(answers)


@dataclass
class Job(Generic[Item, Result]):
    item: Item
    size: int  # what it counts toward max_batch (the rows it writes)
    future: asyncio.Future[Result]


class GroupCommit(Generic[Item, Result]):
    """``await submit(item)``: the item's answer once the transaction holding it committed.

    Subclasses implement ``commit_batch``. ``start``, ``stop`` and ``submit`` run on one event loop;
    after ``stop`` (and before ``start``) ``submit`` raises ``WriterStopped`` at once."""

    def __init__(
        self,
        conninfo: str,
        *,
        max_batch: int = 256,
        slots: int = 2,
        name: str = "group-commit",
        autocommit: bool = False,
    ) -> None:
        self.conninfo = conninfo
        self._autocommit = autocommit  # a batch of one statement commits in one round trip
        self.max_batch = max_batch
        self._slots = slots
        self._name = name
        self._pending: deque[Job[Item, Result]] = deque()
        self._work = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopped = True
        self._connections: dict[int, psycopg.AsyncConnection[Any]] = {}

    # -- the subclass's part -------------------------------------------------------------------------

    async def commit_batch(self, slot: int, items: list[Item]) -> Sequence[Result | BaseException]:
        """Store ``items`` in one transaction on ``await self.connection(slot)``; one answer per item."""
        raise NotImplementedError

    async def after_batch(self, slot: int) -> None:
        """Called by committer ``slot`` after each batch's answers went out (housekeeping)."""

    # -- life cycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        self._stopped = False
        self._work = asyncio.Event()  # bound to the running loop from its first wait
        self._tasks = [
            asyncio.create_task(self._run(slot), name=f"{self._name}-{slot}") for slot in range(self._slots)
        ]

    async def stop(self) -> None:
        """Refuse new items, let the committers finish the batch they hold (bounded), and answer every
        item still pending ``WriterStopped`` (nothing of it was stored: its sender retries)."""
        self._stopped = True  # first: an item arriving while the committers wind down is refused
        self._work.set()
        if self._tasks:
            _, stuck = await asyncio.wait(self._tasks, timeout=STOP_TIMEOUT_S)
            for task in stuck:  # in a commit Postgres does not answer: its items get the error
                task.cancel()
            if stuck:
                await asyncio.wait(stuck, timeout=CONNECT_TIMEOUT_S + 1)
        self._tasks = []
        connections, self._connections = list(self._connections.values()), {}
        for conn in connections:
            with contextlib.suppress(psycopg.Error, OSError):
                await conn.close()
        while self._pending:
            job = self._pending.popleft()
            if not job.future.done():
                job.future.set_exception(WriterStopped("shutting down"))

    async def submit(self, item: Item, size: int = 1) -> Result:
        if self._stopped:  # nobody would take it: the caller must not wait for its timeout
            raise WriterStopped("shutting down")
        job: Job[Item, Result] = Job(item, size, asyncio.get_running_loop().create_future())
        self._pending.append(job)
        self._work.set()
        return await job.future

    @property
    def connections(self) -> list[psycopg.AsyncConnection[Any]]:
        """The committers' connections now (tests break them to simulate a lost database)."""
        return list(self._connections.values())

    # -- the committers ------------------------------------------------------------------------------

    async def _run(self, slot: int) -> None:
        while True:
            while not self._pending:
                if self._stopped:
                    return
                self._work.clear()
                await self._work.wait()
            jobs = self._take()
            try:
                answers = await self._answers(slot, jobs)
            except asyncio.CancelledError:  # stop() gave up on this batch: its callers must hear of it
                _settle(jobs, [WriterStopped("shutting down")] * len(jobs))
                raise
            _settle(jobs, answers)
            if self._stopped and not self._pending:
                return
            try:
                await self.after_batch(slot)
            except Exception:  # housekeeping must never end a committer
                log.exception("ingest.group_commit.housekeeping_failed", writer=self._name)

    def _take(self) -> list[Job[Item, Result]]:
        """The oldest pending jobs, up to ``max_batch`` of size (at least one)."""
        first = self._pending.popleft()
        jobs, size = [first], first.size
        while self._pending and size + self._pending[0].size <= self.max_batch:
            job = self._pending.popleft()
            jobs.append(job)
            size += job.size
        return jobs

    async def _answers(self, slot: int, jobs: list[Job[Item, Result]]) -> Sequence[Result | BaseException]:
        try:
            answers = await self.commit_batch(slot, [job.item for job in jobs])
        except BatchInterrupted as exc:  # cancelled midway: what is known is answered, then as cancelled
            _settle(jobs[: len(exc.answers)], exc.answers)
            raise asyncio.CancelledError from None
        except Exception as exc:  # noqa: BLE001 - every waiting caller must learn of the failure
            return [exc] * len(jobs)
        if len(answers) != len(jobs):  # a bug in the subclass: never leave a caller waiting
            error = RuntimeError(f"{len(answers)} answers for {len(jobs)} items")
            return [error] * len(jobs)
        return answers

    # -- connections ---------------------------------------------------------------------------------

    async def connection(self, slot: int) -> psycopg.AsyncConnection[Any]:
        """Committer ``slot``'s connection, (re)opened when missing or broken."""
        conn = self._connections.get(slot)
        if conn is None or conn.closed or conn.broken:
            if conn is not None:
                with contextlib.suppress(psycopg.Error, OSError):
                    await conn.close()
            conn = await psycopg.AsyncConnection.connect(
                self.conninfo,
                connect_timeout=CONNECT_TIMEOUT_S,
                row_factory=namedtuple_row,
                autocommit=self._autocommit,
            )
            self._connections[slot] = conn
        return conn

    def connection_lost(self, slot: int) -> bool:
        conn = self._connections.get(slot)
        return conn is None or conn.closed or conn.broken

    async def drop_connection(self, slot: int) -> None:
        conn = self._connections.pop(slot, None)
        if conn is not None:
            with contextlib.suppress(psycopg.Error, OSError):
                await conn.close()


def _settle(jobs: Sequence[Job[Any, Any]], answers: Sequence[Any]) -> None:
    """Each caller's answer (a caller that gave up, e.g. timed out, is skipped)."""
    for job, answer in zip(jobs, answers, strict=True):
        if job.future.done():
            continue
        if isinstance(answer, BaseException):
            job.future.set_exception(answer)
        else:
            job.future.set_result(answer)
