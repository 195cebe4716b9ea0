"""The inbox writer (``app.ingest.writer``): its ledger cache, its prepared statements, its answers
when stopped midway.

The ledger cache (``_LedgerCache``): a writer commits the
subscriptions it wrote last in one round trip, and never trusts the cache past a change another writer
made. Two writers stand for two receiver processes on one subscription: whatever the interleaving,
every event is stored once, the ledger counts every notification once and opens no gap that is not
one."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import psycopg
import pytest
from prometheus_client import REGISTRY

from app.cli.mllp import make_url_conninfo
from app.db.engine import make_async_engine
from app.errors import Unstorable
from app.ingest.group_commit import WriterStopped
from app.ingest.inbox import InboxEntry, Intake
from app.ingest.ledger import LedgerObservation, NumberedEvent
from app.ingest.writer import InboxWriter, WriteResult
from tests.app.api.conftest import Facilities, shared_secret

pytestmark = pytest.mark.anyio
SUBSCRIPTION = "Subscription/cached"


def _event(fid: str, n: int) -> Intake:
    """Event number ``n`` of the subscription, as the receiver would hand it to the writer."""
    entry = InboxEntry(fid, f"evt|{SUBSCRIPTION}|{n}", SUBSCRIPTION, n, "Patient", f"p{n}", None, None)
    entry = InboxEntry(**{**entry.__dict__, "ledger_index": 0})
    observation = LedgerObservation(fid, SUBSCRIPTION, "event-notification", numbers=[NumberedEvent(n, None)])
    return Intake([entry], [], observation)


def _cache(result: str) -> float:
    return REGISTRY.get_sample_value("ehri_commit_ledger_cache_total", {"result": result}) or 0.0


async def test_a_writer_commits_the_subscription_it_wrote_last_in_one_round_trip(
    api_database_url: str, facilities: Facilities
) -> None:
    fid = facilities.add(shared_secret())
    engine = make_async_engine(api_database_url)
    writer = InboxWriter(engine, slots=1)
    hits_before, misses_before = _cache("hit"), _cache("miss")
    await writer.start()
    try:
        results = [await writer.commit(_event(fid, n)) for n in range(1, 11)]
    finally:
        await writer.stop()
        await engine.dispose()
    assert results == [WriteResult(1, 0)] * 10
    assert _cache("miss") == misses_before + 1  # the first reads the row; the nine others need not
    assert _cache("hit") == hits_before + 9
    (ledger,) = facilities.ledger(fid)
    assert (ledger.notifications, ledger.highest_event, ledger.missing) == (10, 10, [])
    assert len(facilities.inbox(fid)) == 10


async def test_two_writers_on_one_subscription_store_every_event_once_and_count_it_once(
    api_database_url: str, facilities: Facilities
) -> None:
    """Events 1..200 of one subscription, each delivered twice (as senders retry), spread at random
    over two writers committing concurrently: each writer's cache goes stale whenever the other
    wrote, and the check must catch every such time."""
    fid = facilities.add(shared_secret())
    engines = [make_async_engine(api_database_url) for _ in range(2)]
    writers = [InboxWriter(engine, slots=2) for engine in engines]
    stale_before = _cache("stale")
    deliveries = [n for n in range(1, 201) for _ in range(2)]
    random.Random(7).shuffle(deliveries)
    for writer in writers:
        await writer.start()
    try:
        # In waves, so that batches form on both writers and their transactions overlap.
        results: list[WriteResult] = []
        for wave in range(0, len(deliveries), 40):
            chunk = deliveries[wave : wave + 40]
            results += await asyncio.gather(
                *(writers[i % 2].commit(_event(fid, n)) for i, n in enumerate(chunk))
            )
    finally:
        for writer in writers:
            await writer.stop()
        for engine in engines:
            await engine.dispose()
    assert sum(r.stored for r in results) == 200
    assert sum(r.duplicates for r in results) == 200
    rows = facilities.inbox(fid)
    assert sorted(row.event_number for row in rows) == list(range(1, 201))
    (ledger,) = facilities.ledger(fid)
    assert ledger.notifications == 400  # every delivery counted once, none lost by a stale cache
    assert ledger.highest_event == 200
    assert ledger.missing == []  # every gap that reordering opened was closed
    assert ledger.epoch == 1
    assert _cache("stale") > stale_before  # the writers did go stale on each other, and were caught


async def test_values_bound_client_side_arrive_exactly_as_sent(
    api_database_url: str, facilities: Facilities
) -> None:
    """The writer's values are quoted by psycopg into its queries: a sender's quotes, backslashes,
    placeholders and statement separators are data, stored byte for byte, on both write paths."""
    fid = facilities.add(shared_secret())
    hostile = "a'b\"c\\d;e$1%(inbox)s%s\u00e9\U0001f600'); DROP TABLE inbox; --"
    engine = make_async_engine(api_database_url)
    writer = InboxWriter(engine)
    await writer.start()
    try:
        for n in (1, 2):  # the first reads the ledger row (two round trips), the second is cached
            entry = InboxEntry(fid, f"{hostile}|{n}", SUBSCRIPTION, n, "Patient", hostile[:60], None, None)
            entry = InboxEntry(**{**entry.__dict__, "ledger_index": 0})
            observation = LedgerObservation(
                fid, SUBSCRIPTION, "event-notification", status=hostile[:16], numbers=[NumberedEvent(n, None)]
            )
            assert await writer.commit(Intake([entry], [], observation)) == WriteResult(1, 0)
    finally:
        await writer.stop()
        await engine.dispose()
    rows = facilities.inbox(fid)
    assert [row.dedup_key for row in rows] == [f"{hostile}|1|e1", f"{hostile}|2|e1"]
    assert {row.focus_id for row in rows} == {hostile[:60]}
    assert facilities.ledger(fid)[0].last_status == hostile[:16]


def _other(fid: str, n: int, *, focus_type: str = "Patient") -> Intake:
    """A notification of subscription ``n`` of its own (no event numbers)."""
    entry = InboxEntry(fid, f"k{n}", None, None, focus_type, f"p{n}", None, None)
    return Intake([entry], [], LedgerObservation(fid, f"Subscription/{n}", "event-notification"))


async def test_a_stop_during_a_retry_one_at_a_time_answers_what_committed(
    api_database_url: str, facilities: Facilities, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch failed on one job's value and is retried one job at a time; the third job's transaction
    is blocked (another session holds a lock) when ``stop`` gives up: the first job, committed, is
    answered stored (not WriterStopped, which would have its sender resend it); the second its own
    refusal; the third WriterStopped, and nothing of it is stored."""
    monkeypatch.setattr("app.ingest.group_commit.STOP_TIMEOUT_S", 0.5)
    fid = facilities.add(shared_secret())
    engine = make_async_engine(api_database_url)
    writer = InboxWriter(engine, slots=1)
    blocker = await psycopg.AsyncConnection.connect(make_url_conninfo(api_database_url))
    isolated = asyncio.Event()
    transaction = writer._transaction

    async def blocked_for_the_third(slot: int, jobs: list[Any]) -> Any:
        if len(jobs) == 1 and jobs[0].intake.observation.subscription == "Subscription/3":
            await blocker.execute("LOCK TABLE inbox IN SHARE MODE")  # held until the test rolls back
            isolated.set()
        return await transaction(slot, jobs)

    monkeypatch.setattr(writer, "_transaction", blocked_for_the_third)
    await writer.start()
    try:
        pending = [
            asyncio.ensure_future(writer.commit(_other(fid, 1))),
            asyncio.ensure_future(writer.commit(_other(fid, 2, focus_type="X" * 100))),
            asyncio.ensure_future(writer.commit(_other(fid, 3))),
        ]
        await asyncio.wait_for(isolated.wait(), 10)
        await asyncio.wait_for(writer.stop(), 30)
        first, second, third = await asyncio.gather(*pending, return_exceptions=True)
    finally:
        await blocker.rollback()
        await blocker.close()
        await engine.dispose()
    assert first == WriteResult(1, 0)
    assert isinstance(second, Unstorable)
    assert isinstance(third, WriterStopped)
    assert [row.dedup_key for row in facilities.inbox(fid)] == ["k1"]


async def test_commits_go_on_after_the_session_loses_its_prepared_statements(
    api_database_url: str, facilities: Facilities
) -> None:
    """DISCARD ALL (a pooler resetting the session) and a column added to the ledger (a migration
    while receivers run) both leave the prepared statements unusable: the writer prepares them again
    and the commit succeeds, on both write paths."""
    fid = facilities.add(shared_secret())
    engine = make_async_engine(api_database_url)
    writer = InboxWriter(engine, slots=1)
    admin = await psycopg.AsyncConnection.connect(make_url_conninfo(api_database_url), autocommit=True)
    await writer.start()
    try:
        assert await writer.commit(_event(fid, 1)) == WriteResult(1, 0)
        (conn,) = writer.connections
        await conn.execute("DEALLOCATE ALL")
        assert await writer.commit(_event(fid, 2)) == WriteResult(1, 0)  # cached path
        await conn.execute("DEALLOCATE ALL")
        assert await writer.commit(_other(fid, 3)) == WriteResult(1, 0)  # a new subscription: locked path
        await admin.execute("ALTER TABLE subscription_ledger ADD COLUMN probe_extra integer")
        try:
            assert await writer.commit(_other(fid, 4)) == WriteResult(1, 0)
            assert await writer.commit(_event(fid, 3)) == WriteResult(1, 0)
        finally:
            await admin.execute("ALTER TABLE subscription_ledger DROP COLUMN probe_extra")
        assert await writer.commit(_other(fid, 5)) == WriteResult(1, 0)
    finally:
        await writer.stop()
        await admin.close()
        await engine.dispose()
    assert len(facilities.inbox(fid)) == 6
