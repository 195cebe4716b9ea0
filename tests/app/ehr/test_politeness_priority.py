"""Live fetches go before background reads in the facility's shared budget (real Redis): a backfill that
keeps the budget busy never makes a notification fetch wait behind it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import redis

from app.ehr.politeness import BACKGROUND, LIVE, Priority, RedisPoliteness
from app.errors import PolitenessThrottled, YieldedToLive
from app.facilities.schemas import LimitsConfig
from tests.conftest import REDIS_URL


@pytest.fixture
def rds() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    yield client
    client.close()


def _polite(
    rds: redis.Redis, prefix: str, priority: Priority, *, max_wait_s: float = 0.3, **limits: float
) -> RedisPoliteness:
    config = LimitsConfig.model_validate(limits)
    return RedisPoliteness(rds, prefix, "fac-1", config, max_wait_s=max_wait_s, priority=priority)


def test_a_live_fetch_waits_at_most_one_token_while_background_readers_keep_the_budget_busy(
    rds: redis.Redis, redis_prefix: str
) -> None:
    limits = {"requests_per_second": 10, "burst": 1, "concurrency": 10}
    stop = threading.Event()
    taken = [0]

    def backfill() -> None:
        reader = _polite(rds, redis_prefix, BACKGROUND, max_wait_s=30, **limits)
        while not stop.is_set():
            with reader.slot():
                taken[0] += 1

    readers = [threading.Thread(target=backfill, daemon=True) for _ in range(4)]
    for reader in readers:
        reader.start()
    live = _polite(rds, redis_prefix, LIVE, max_wait_s=30, **limits)
    waits = []
    try:
        time.sleep(0.3)  # the backfill has the budget to itself: not a synchronisation
        for _ in range(6):
            started = time.monotonic()
            with live.slot():
                waits.append(time.monotonic() - started)
            time.sleep(0.15)
    finally:
        stop.set()
        for reader in readers:
            reader.join(5)
    print(
        f"\nlive waits with 4 background readers at 10/s: {[round(w, 3) for w in waits]};"
        f" background took {taken[0]}"
    )
    assert max(waits) < 0.2  # one token interval (0.1 s) plus scheduling, never behind the readers
    assert taken[0] > 0  # the backfill still progressed


def test_background_reads_leave_a_reserve_of_tokens_for_live_fetches(
    rds: redis.Redis, redis_prefix: str
) -> None:
    limits = {"requests_per_second": 0.01, "burst": 4, "concurrency": 10}
    background = _polite(rds, redis_prefix, BACKGROUND, **limits)
    for _ in range(3):
        with background.slot():
            pass
    with pytest.raises(YieldedToLive), background.slot():
        pass
    with _polite(rds, redis_prefix, LIVE, **limits).slot():  # the reserved token, at once
        pass


def test_background_reads_leave_one_request_slot_to_live_fetches(rds: redis.Redis, redis_prefix: str) -> None:
    limits = {"requests_per_second": 100, "burst": 100, "concurrency": 2}
    background = _polite(rds, redis_prefix, BACKGROUND, **limits)
    with background.slot():
        with pytest.raises(YieldedToLive), _polite(rds, redis_prefix, BACKGROUND, **limits).slot():
            pass
        with _polite(rds, redis_prefix, LIVE, **limits).slot():
            pass


def test_a_live_fetch_that_gave_up_waiting_no_longer_holds_background_reads_back(
    rds: redis.Redis, redis_prefix: str
) -> None:
    limits = {"requests_per_second": 100, "burst": 100, "concurrency": 1}
    holder = _polite(rds, redis_prefix, BACKGROUND, **limits)
    with holder.slot(), pytest.raises(PolitenessThrottled), _polite(rds, redis_prefix, LIVE, **limits).slot():
        pass
    with _polite(rds, redis_prefix, BACKGROUND, max_wait_s=0.05, **limits).slot():
        pass
