"""The group-commit base (``app.ingest.group_commit``): concurrent callers share a transaction, the
committers overlap, and every caller gets its own answer, whatever the batch or the shutdown does."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator, Sequence

import psycopg
import pytest

from app.cli.mllp import make_url_conninfo
from app.ingest.group_commit import GroupCommit, WriterStopped

DEADLINE_S = 10.0


class Notes(GroupCommit[str, int]):
    """Stores strings in a table of its own; answers each with the batch size it was committed in.
    A string ``"bad"`` fails its batch; ``"hold"`` keeps its transaction open until ``release`` is set."""

    def __init__(self, conninfo: str, table: str, *, slots: int = 2, max_batch: int = 256) -> None:
        super().__init__(conninfo, slots=slots, max_batch=max_batch, name="notes")
        self.table = table
        self.batches: list[list[str]] = []
        self.holding = asyncio.Event()  # set once a "hold" transaction is open
        self.release = asyncio.Event()

    async def commit_batch(self, slot: int, items: list[str]) -> Sequence[int | BaseException]:
        conn = await self.connection(slot)
        self.batches.append(items)
        async with conn.transaction(), conn.cursor() as cur:
            if "bad" in items:
                raise ValueError("refused")
            await cur.executemany(f"INSERT INTO {self.table} (note) VALUES (%s)", [(i,) for i in items])
            if "hold" in items:
                self.holding.set()
                await self.release.wait()
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


def test_a_batch_commits_while_another_committer_holds_its_transaction(table: tuple[str, str]) -> None:
    """Two committers: a transaction that does not finish (a slow commit) does not hold up the callers
    who arrive after it; theirs commits on the other connection meanwhile."""

    async def scenario() -> None:
        conninfo, name = table
        writer = Notes(conninfo, name, slots=2)
        await writer.start()
        try:
            held = asyncio.ensure_future(writer.submit("hold"))
            await asyncio.wait_for(writer.holding.wait(), DEADLINE_S)  # the first committer holds it
            assert await asyncio.wait_for(writer.submit("next"), DEADLINE_S) == 1
            assert not held.done()
            writer.release.set()
            assert await asyncio.wait_for(held, DEADLINE_S) == 1
        finally:
            writer.release.set()
            await writer.stop()
        assert _count(conninfo, name) == 2

    asyncio.run(scenario())


def test_stop_answers_a_batch_it_had_to_give_up_on(
    table: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit that never finishes is cancelled by ``stop`` after its bound: its caller is told
    ``WriterStopped`` (the sender retries), never left waiting."""
    monkeypatch.setattr("app.ingest.group_commit.STOP_TIMEOUT_S", 0.2)

    async def scenario() -> None:
        conninfo, name = table
        writer = Notes(conninfo, name, slots=1)
        await writer.start()
        held = asyncio.ensure_future(writer.submit("hold"))
        await asyncio.wait_for(writer.holding.wait(), DEADLINE_S)
        await asyncio.wait_for(writer.stop(), DEADLINE_S)
        with pytest.raises(WriterStopped):
            await asyncio.wait_for(held, DEADLINE_S)
        assert _count(conninfo, name) == 0  # rolled back with its connection

    asyncio.run(scenario())


def test_concurrent_callers_share_a_batch_and_each_gets_its_answer(table: tuple[str, str]) -> None:
    async def scenario() -> None:
        conninfo, name = table
        writer = Notes(conninfo, name, slots=1)
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
        writer = Notes(conninfo, name, slots=1, max_batch=1)
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
        writer = Notes(conninfo, name, slots=1)
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
        writer = Notes(conninfo, name, slots=2)
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
        writer = Notes(conninfo, name, slots=1)
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
