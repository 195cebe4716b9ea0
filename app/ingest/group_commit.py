"""Group commit: concurrent callers on an event loop share one Postgres transaction, run in writer threads.

The receiver's inbox writer (``app.ingest.writer``) and the HL7 v2 listener's ADT writer
(``app.hl7v2.inbox``) both answer a sender only after its rows are committed, and both batch the rows
of concurrent senders into one transaction. This module is the part they share: the queue, the
batching, the connections, the answers.

Why threads: on a busy event loop every database round trip also waits for a turn of the loop, behind
the requests being parsed meanwhile (profiled: at ~1,000 notifications/s most of a commit's time was
spent waiting for those turns, not in Postgres). A writer thread blocks on its own socket instead,
with the GIL released, so its round trips follow each other as soon as Postgres answers; the loop is
woken once per batch, to settle the callers' futures. A few threads (``threads``), each with its own
connection, so one slow commit does not hold up the next batch.

    caller (event loop)                      writer thread (one of ``threads``)
    await submit(item) ──► queue.Queue ──►   take what is queued (up to max_batch)
                                             commit_batch(slot, items)  # the subclass's transaction
    future settled    ◄── call_soon_threadsafe ◄ answers, one per item (a result or an exception)

Contract of ``commit_batch(slot, items)``: one answer per item, in order; it may raise, and then every
item of the batch gets that exception. ``connection(slot)`` is the thread's connection, reopened when
found broken.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
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
    """The writer stopped (its process is shutting down) before this item was committed: nothing was
    stored, and the sender is told to retry (a 503, an AE), never a 500."""


@dataclass
class Job(Generic[Item, Result]):
    item: Item
    size: int  # what it counts toward max_batch (the rows it writes)
    future: asyncio.Future[Result]


_STOP = object()  # tells one writer thread to end


class GroupCommit(Generic[Item, Result]):
    """``await submit(item)``: the item's answer once the transaction holding it committed.

    Subclasses implement ``commit_batch``. ``start`` and ``stop`` run on the event loop that submits;
    after ``stop`` (and before ``start``) ``submit`` raises ``WriterStopped`` at once."""

    def __init__(
        self,
        conninfo: str,
        *,
        max_batch: int = 256,
        threads: int = 2,
        name: str = "group-commit",
        autocommit: bool = False,
    ) -> None:
        self.conninfo = conninfo
        self._autocommit = autocommit  # a batch of one statement commits in one round trip
        self.max_batch = max_batch
        self._threads_wanted = threads
        self._name = name
        self._queue: queue.SimpleQueue[Job[Item, Result] | object] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped = True
        self._connections: dict[int, psycopg.Connection[Any]] = {}
        self._lock = threading.Lock()  # guards _connections between the writer threads and stop()

    # -- the subclass's part -------------------------------------------------------------------------

    def commit_batch(self, slot: int, items: list[Item]) -> Sequence[Result | BaseException]:
        """Store ``items`` in one transaction on ``self.connection(slot)``; one answer per item (runs in
        writer thread ``slot``)."""
        raise NotImplementedError

    def after_batch(self, slot: int) -> None:
        """Called in writer thread ``slot`` after each batch's answers went out (housekeeping)."""

    # -- life cycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = False
        self._threads = [
            threading.Thread(target=self._run, args=(slot,), name=f"{self._name}-{slot}", daemon=True)
            for slot in range(self._threads_wanted)
        ]
        for thread in self._threads:
            thread.start()

    async def stop(self) -> None:
        """Refuse new items, let the threads finish the batch they hold (bounded), and answer every
        item still queued ``WriterStopped`` (nothing of it was stored: its sender retries)."""
        self._stopped = True  # first: an item arriving while the threads wind down is refused, not queued
        for _ in self._threads:
            self._queue.put(_STOP)
        for thread in self._threads:
            await asyncio.to_thread(thread.join, STOP_TIMEOUT_S)
            if thread.is_alive():
                # Stuck in a commit (Postgres not answering): interrupt it; its items get the error.
                self._cancel_connections()
                await asyncio.to_thread(thread.join, CONNECT_TIMEOUT_S)
        self._threads = []
        with self._lock:
            connections, self._connections = list(self._connections.values()), {}
        for conn in connections:
            conn.close()
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(job, Job) and not job.future.done():
                job.future.set_exception(WriterStopped("shutting down"))

    async def submit(self, item: Item, size: int = 1) -> Result:
        if self._stopped:  # nobody would take it: the caller must not wait for its timeout
            raise WriterStopped("shutting down")
        job: Job[Item, Result] = Job(item, size, asyncio.get_running_loop().create_future())
        self._queue.put(job)
        return await job.future

    @property
    def connections(self) -> list[psycopg.Connection[Any]]:
        """The writer threads' connections now (tests break them to simulate a lost database)."""
        with self._lock:
            return list(self._connections.values())

    # -- the writer threads --------------------------------------------------------------------------

    def _run(self, slot: int) -> None:
        while True:
            first = self._queue.get()
            if not isinstance(first, Job):
                return
            jobs: list[Job[Item, Result]] = [first]
            size = first.size
            stop = False
            while size < self.max_batch:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if not isinstance(more, Job):
                    stop = True  # finish this batch, then end
                    break
                jobs.append(more)
                size += more.size
            answers = self._answers(slot, jobs)
            self._settle(jobs, answers)
            if stop:
                return
            try:
                self.after_batch(slot)
            except Exception:  # housekeeping must never end a writer thread
                log.exception("ingest.group_commit.housekeeping_failed", writer=self._name)

    def _answers(self, slot: int, jobs: list[Job[Item, Result]]) -> Sequence[Result | BaseException]:
        try:
            answers = self.commit_batch(slot, [job.item for job in jobs])
        except Exception as exc:  # noqa: BLE001 - every waiting caller must learn of the failure
            return [exc] * len(jobs)
        if len(answers) != len(jobs):  # a bug in the subclass: never leave a caller waiting
            error = RuntimeError(f"{len(answers)} answers for {len(jobs)} items")
            return [error] * len(jobs)
        return answers

    def _settle(self, jobs: list[Job[Item, Result]], answers: Sequence[Result | BaseException]) -> None:
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody is waiting
            loop.call_soon_threadsafe(_settle, jobs, answers)

    # -- connections ---------------------------------------------------------------------------------

    def connection(self, slot: int) -> psycopg.Connection[Any]:
        """Writer thread ``slot``'s connection, (re)opened when missing or broken."""
        with self._lock:
            conn = self._connections.get(slot)
        if conn is None or conn.closed or conn.broken:
            if conn is not None:
                conn.close()
            conn = psycopg.Connection.connect(
                self.conninfo,
                connect_timeout=CONNECT_TIMEOUT_S,
                row_factory=namedtuple_row,
                autocommit=self._autocommit,
            )
            with self._lock:
                self._connections[slot] = conn
        return conn

    def connection_lost(self, slot: int) -> bool:
        with self._lock:
            conn = self._connections.get(slot)
        return conn is None or conn.closed or conn.broken

    def drop_connection(self, slot: int) -> None:
        with self._lock:
            conn = self._connections.pop(slot, None)
        if conn is not None:
            conn.close()

    def _cancel_connections(self) -> None:
        for conn in self.connections:
            with contextlib.suppress(psycopg.Error):
                conn.cancel_safe(timeout=CONNECT_TIMEOUT_S)


def _settle(jobs: Sequence[Job[Any, Any]], answers: Sequence[Any]) -> None:
    """On the event loop: each caller's answer (a caller that gave up, e.g. timed out, is skipped)."""
    for job, answer in zip(jobs, answers, strict=True):
        if job.future.done():
            continue
        if isinstance(answer, BaseException):
            job.future.set_exception(answer)
        else:
            job.future.set_result(answer)
