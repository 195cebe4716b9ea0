"""The group-commit base (``app.ingest.group_commit``): commits run in writer threads, so a busy event
loop does not hold them up; every caller gets its own answer, whatever the batch or the shutdown does."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator, Sequence

import psycopg
import pytest

from app.cli.mllp import make_url_conninfo
from app.ingest.group_commit import GroupCommit, WriterStopped

DEADLINE_S = 10.0


class Notes(GroupCommit[str, int]):
    """Stores strings in a table of its own; answers each with the batch size it was committed in.
    A string ``"bad"`` fails its batch; ``hold`` blocks the writer thread until released."""

    def __init__(self, conninfo: str, table: str, *, threads: int = 2, max_batch: int = 256) -> None:
        super().__init__(conninfo, threads=threads, max_batch=max_batch, name="notes")
        self.table = table
        self.batches: list[list[str]] = []

    def commit_batch(self, slot: int, items: list[str]) -> Sequence[int | BaseException]:
        conn = self.connection(slot)
        self.batches.append(items)
        with conn.transaction(), conn.cursor() as cur:
            if "bad" in items:
                raise ValueError("refused")
            cur.executemany(f"INSERT INTO {self.table} (note) VALUES (%s)", [(i,) for i in items])
        return [len(items)] * len(items)


@pytest.fixture
def table(database_url: str) -> Iterator[tuple[str, str]]:
    conninfo = make_url_conninfo(database_url)
    name = f"notes_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} (note text NOT NULL)")
    yield conninfo, name
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f"DROP TABLE {name}")


def _count(conninfo: str, table: str) -> int:
    with psycopg.connect(conninfo) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    assert row is not None
    return int(row[0])


def test_a_commit_completes_while_the_event_loop_is_busy(table: tuple[str, str]) -> None:
    """The loop thread is kept busy (blocked, as by a burst of requests being parsed) right after an item
    is submitted: the row is committed meanwhile. On a loop-driven writer it could not be, since every
    round trip of its transaction would wait for the loop."""

    async def scenario() -> None:
        conninfo, name = table
        writer = Notes(conninfo, name, threads=1)
        await writer.start()
        try:
            pending = asyncio.ensure_future(writer.submit("one"))
            await asyncio.sleep(0)  # the item is queued
            deadline = time.monotonic() + DEADLINE_S
            committed = False
            while time.monotonic() < deadline and not committed:  # the loop does nothing else meanwhile
                committed = _count(conninfo, name) == 1
            assert committed, "the commit waited for the event loop"
            assert await pending == 1
        finally:
            await writer.stop()

    asyncio.run(scenario())


def test_concurrent_callers_share_a_batch_and_each_gets_its_answer(table: tuple[str, str]) -> None:
    async def scenario() -> None:
        conninfo, name = table
        writer = Notes(conninfo, name, threads=1)
        await writer.start()
        try:
            answers = await asyncio.gather(*(writer.submit(f"n{i}") for i in range(50)))
        finally:
            await writer.stop()
        assert _count(conninfo, name) == 50
        assert sum(len(b) for b in writer.batches) == 50
        assert len(writer.batches) < 50  # grouped: callers queued while a batch committed share the next
        assert all(a >= 1 for a in answers)

    asyncio.run(scenario())


def test_a_failed_batch_answers_each_caller_with_the_error(table: tuple[str, str]) -> None:
    async def scenario() -> None:
        conninfo, name = table
        writer = Notes(conninfo, name, threads=1, max_batch=1)
        await writer.start()
        try:
            results = await asyncio.gather(
                writer.submit("bad"), writer.submit("good"), return_exceptions=True
            )
        finally:
            await writer.stop()
        assert isinstance(results[0], ValueError)
        assert results[1] == 1
        assert _count(conninfo, name) == 1

    asyncio.run(scenario())


def test_a_caller_that_gave_up_does_not_disturb_the_others(table: tuple[str, str]) -> None:
    async def scenario() -> None:
        conninfo, name = table
        writer = Notes(conninfo, name, threads=1)
        await writer.start()
        try:
            impatient = asyncio.ensure_future(writer.submit("gave-up"))
            patient = asyncio.ensure_future(writer.submit("waited"))
            impatient.cancel()
            assert await patient >= 1
        finally:
            await writer.stop()

    asyncio.run(scenario())


def test_after_stop_a_submit_is_refused_at_once(table: tuple[str, str]) -> None:
    async def scenario() -> None:
        conninfo, name = table
        writer = Notes(conninfo, name, threads=2)
        await writer.start()
        await writer.stop()
        with pytest.raises(WriterStopped):
            await asyncio.wait_for(writer.submit("late"), 1.0)
        assert _count(conninfo, name) == 0

    asyncio.run(scenario())


def test_a_writer_never_started_refuses(table: tuple[str, str]) -> None:
    async def scenario() -> None:
        conninfo, name = table
        with pytest.raises(WriterStopped):
            await Notes(conninfo, name).submit("early")

    asyncio.run(scenario())


def test_a_broken_connection_is_replaced_at_the_next_batch(table: tuple[str, str]) -> None:
    async def scenario() -> None:
        conninfo, name = table
        writer = Notes(conninfo, name, threads=1)
        await writer.start()
        try:
            await writer.submit("first")
            (conn,) = writer.connections
            with psycopg.connect(conninfo, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))
            first_try = await asyncio.gather(writer.submit("lost?"), return_exceptions=True)
            second = await writer.submit("second")
        finally:
            await writer.stop()
        assert second == 1
        stored = _count(conninfo, name)
        # The batch on the dead connection failed with the error (its caller answers 503) or, had the
        # terminate not landed yet, committed: either way nothing is stored without its caller knowing.
        assert stored == (3 if first_try[0] == 1 else 2)
        if first_try[0] != 1:
            assert isinstance(first_try[0], psycopg.OperationalError)

    asyncio.run(scenario())
