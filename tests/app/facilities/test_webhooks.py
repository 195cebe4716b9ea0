"""The receiver's facility directory: bounded whatever ids arrive in URLs, and never blind for long to a
facility added later."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import Engine, event, text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.engine import make_async_engine
from app.facilities.webhooks import FacilityDirectory, receiver_facility
from app.vendors import adapter_for
from tests.fixtures import BASE

TTL_S = 1.0
MAX_ENTRIES = 16


def _add(
    engine: Engine, facility_id: str, vendor: str = "generic", webhook: dict[str, object] | None = None
) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO facilities (id, vendor, base_url, auth, webhook) "
                "VALUES (:id, :vendor, :base, '{}'::jsonb, CAST(:webhook AS jsonb))"
            ),
            {"id": facility_id, "vendor": vendor, "base": BASE, "webhook": json.dumps(webhook or {})},
        )


def _remove(engine: Engine, *ids: str) -> None:
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM facilities WHERE id = ANY(:ids)"), {"ids": list(ids)})


def test_a_flood_of_random_ids_stays_bounded_and_a_later_facility_is_found(
    engine: Engine, database_url: str
) -> None:
    known, late = f"known-{uuid.uuid4().hex[:8]}", f"late-{uuid.uuid4().hex[:8]}"
    _add(engine, known)

    async def scenario() -> None:
        async_engine = make_async_engine(database_url, pool_size=2)
        directory = FacilityDirectory(async_engine, ttl_s=TTL_S, max_entries=MAX_ENTRIES)
        try:
            assert await directory.get(known) is not None
            assert await directory.get(late) is None  # asked before it exists: negatively cached
            for _ in range(10 * MAX_ENTRIES):
                assert await directory.get(uuid.uuid4().hex) is None
            assert len(directory) <= 2 * MAX_ENTRIES
            # The flood filled the unknown side only: the real facility is still answered from the
            # cache (its row is gone now, so only the cache can answer it).
            _remove(engine, known)
            assert await directory.get(known) is not None
            _add(engine, late)
            await asyncio.sleep(TTL_S)
            assert await directory.get(late) is not None
            assert await directory.get(known) is None  # and a removed facility is forgotten
        finally:
            await async_engine.dispose()

    try:
        asyncio.run(scenario())
    finally:
        _remove(engine, known, late)


def _count_lookups(async_engine: AsyncEngine) -> list[str]:
    """The facility lookups the directory sends (their statements), as they are sent."""
    sent: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "FROM facilities" in statement:
            sent.append(statement)

    event.listen(async_engine.sync_engine, "before_cursor_execute", record)
    return sent


Scenario = Callable[[FacilityDirectory, str, list[str]], Awaitable[None]]


def _run_with_directory(engine: Engine, database_url: str, scenario: Scenario) -> None:
    """``scenario(directory, facility_id, lookups)`` for a facility of its own, the lookups counted."""
    facility = f"dir-{uuid.uuid4().hex[:8]}"
    _add(engine, facility)

    async def run() -> None:
        async_engine = make_async_engine(database_url, pool_size=2)
        lookups = _count_lookups(async_engine)
        try:
            await scenario(FacilityDirectory(async_engine, ttl_s=TTL_S), facility, lookups)
        finally:
            await async_engine.dispose()

    try:
        asyncio.run(run())
    finally:
        _remove(engine, facility)


def test_concurrent_misses_of_one_facility_share_one_lookup(engine: Engine, database_url: str) -> None:
    async def scenario(directory: FacilityDirectory, facility: str, lookups: list[str]) -> None:
        found = await asyncio.gather(*(directory.get(facility) for _ in range(50)))
        assert all(f is not None and f.id == facility for f in found)
        assert len(lookups) == 1

    _run_with_directory(engine, database_url, scenario)


def test_a_facility_in_use_is_reloaded_before_it_expires(engine: Engine, database_url: str) -> None:
    """Used after most of its TTL, the entry is answered at once and reloaded in the background: a
    request after the original expiry finds the reloaded entry (no lookup of its own to wait for), and
    a change made meanwhile is in it."""

    async def scenario(directory: FacilityDirectory, facility: str, lookups: list[str]) -> None:
        first = await directory.get(facility)
        assert first is not None
        assert first.vendor == "generic"
        with engine.begin() as conn:
            conn.execute(text("UPDATE facilities SET vendor = 'hapi' WHERE id = :id"), {"id": facility})
        await asyncio.sleep(TTL_S * 0.85)
        assert await directory.get(facility) is first  # answered from the cache, reload started
        deadline = asyncio.get_running_loop().time() + 10
        while len(lookups) < 2 or directory._loading:  # the reload has run
            assert asyncio.get_running_loop().time() < deadline, "no reload started"
            await asyncio.sleep(0.01)
        await asyncio.sleep(TTL_S * 0.3)  # past the first load's expiry
        reloaded = await directory.get(facility)
        assert reloaded is not None
        assert reloaded.vendor == "hapi"
        assert len(lookups) == 2  # no third lookup: the reloaded entry answered

    _run_with_directory(engine, database_url, scenario)


def test_event_identity_comes_from_the_adapter_unless_the_facility_overrides_it(engine: Engine) -> None:
    athena, overridden = f"ath-{uuid.uuid4().hex[:8]}", f"ovr-{uuid.uuid4().hex[:8]}"
    webhook: dict[str, object] = {"header": "Authorization", "secret": {"env": "PATH"}}
    _add(engine, athena, "athena", webhook)
    _add(engine, overridden, "athena", {**webhook, "event_identity": "number"})
    try:
        with engine.connect() as conn:
            rows = {
                r.id: r for r in conn.execute(text("SELECT * FROM facilities WHERE id IN (:a, :b)"),
                                              {"a": athena, "b": overridden})
            }  # fmt: skip
        assert receiver_facility(rows[athena]).event_identity == "event-id"
        assert receiver_facility(rows[overridden]).event_identity == "number"
        assert receiver_facility(rows[athena]).adapter.vendor == adapter_for("athena").vendor
    finally:
        _remove(engine, athena, overridden)
