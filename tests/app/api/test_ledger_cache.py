"""The inbox writer's ledger cache (``app.ingest.writer._LedgerCache``): a writer commits the
subscriptions it wrote last in one round trip, and never trusts the cache past a change another writer
made. Two writers stand for two receiver processes on one subscription: whatever the interleaving,
every event is stored once, the ledger counts every notification once and opens no gap that is not
one."""

from __future__ import annotations

import asyncio
import random

import pytest
from prometheus_client import REGISTRY

from app.db.engine import make_async_engine
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
