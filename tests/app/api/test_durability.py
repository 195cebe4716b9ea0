"""Rule 1: no 2xx without a committed row. Postgres unreachable → 503 (never 2xx); Redis unreachable → 200
(the row is committed; the sweeper rings the doorbell later)."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from prometheus_client import REGISTRY
from sqlalchemy.engine import make_url

from devstack.database import create_database, drop_database
from devstack.processes import free_port, wait_until
from tests.app.api.conftest import Facilities, bearer, running, settings_for, shared_secret
from tests.app.api.fixtures_shapes import dumps
from tests.conftest import BASE_DATABASE_URL
from tests.fixtures import backport_id_only

pytestmark = pytest.mark.anyio
BODY = dumps(backport_id_only([(1, "Patient/p1")]))


async def test_postgres_unreachable_is_503_with_retry_after(redis_prefix: str) -> None:
    closed = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nowhere"
    async with running(settings_for(closed, redis_prefix)) as client:
        for path in ("/hooks/fac-1", "/hooks/fac-1/Patient/p1"):
            response = await client.request(
                "POST" if path == "/hooks/fac-1" else "PUT", path, content=BODY, headers=bearer()
            )
            assert response.status_code == 503
            assert response.headers["retry-after"] == "5"
            assert response.json()["resourceType"] == "OperationOutcome"
        assert (await client.get("/readyz")).status_code == 503


async def test_postgres_lost_after_the_facility_was_cached_is_503_not_2xx(
    redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The facility lookup is cached; the commit itself must fail loudly when the database goes away."""
    monkeypatch.setenv("EHRI_TEST_HOOK_SECRET", "s3cret-current")
    url = make_url(BASE_DATABASE_URL).set(database=f"ehri_gone_{uuid.uuid4().hex[:8]}")
    database_url = url.render_as_string(hide_password=False)
    await asyncio.to_thread(create_database, database_url)
    from sqlalchemy import create_engine

    engine = create_engine(database_url)
    try:
        facilities = Facilities(engine, [])
        fid = facilities.add(shared_secret())
    finally:
        engine.dispose()
    try:
        async with running(settings_for(database_url, redis_prefix)) as client:
            ok = await client.post(f"/hooks/{fid}", content=BODY, headers=bearer())
            assert ok.status_code == 200
            await asyncio.to_thread(drop_database, database_url)  # terminates every connection
            again = dumps(backport_id_only([(2, "Patient/p2")]))
            response = await client.post(f"/hooks/{fid}", content=again, headers=bearer())
            assert response.status_code == 503
            assert response.json()["issue"][0]["code"] == "transient"
    finally:
        await asyncio.to_thread(drop_database, database_url)


def _doorbell_failures() -> float:
    """``ehri_doorbell_failures_total`` through the registry's public sample API (0 until registered)."""
    return REGISTRY.get_sample_value("ehri_doorbell_failures_total") or 0.0


async def test_redis_unreachable_still_commits_and_answers_200(
    api_database_url: str, redis_prefix: str, facilities: Facilities
) -> None:
    fid = facilities.add(shared_secret())
    settings = settings_for(api_database_url, redis_prefix, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    failures_before = _doorbell_failures()
    async with running(settings) as client:
        started = time.perf_counter()
        response = await client.post(f"/hooks/{fid}", content=BODY, headers=bearer())
        elapsed = time.perf_counter() - started
        assert response.status_code == 200
        assert elapsed < 1.0  # the doorbell never blocks the answer
        assert len(facilities.inbox(fid)) == 1
        await asyncio.to_thread(
            wait_until,
            lambda: _doorbell_failures() > failures_before,
            timeout=10,
            what="the doorbell failure to be counted",
        )
    assert _doorbell_failures() > failures_before


async def test_a_connection_killed_while_idle_is_replaced_without_failing_the_sender(
    api_database_url: str, redis_prefix: str, facilities: Facilities
) -> None:
    """Postgres restarted (or a backend was killed) between batches: the writer's next transaction
    finds its connection dead and retries once on a fresh one; the insert is idempotent."""
    from sqlalchemy import text

    fid = facilities.add(shared_secret())
    async with running(settings_for(api_database_url, redis_prefix)) as client:
        for number in (1, 2):  # one batch per writer loop: both hold a connection now
            body = dumps(backport_id_only([(number, f"Patient/p{number}")]))
            assert (await client.post(f"/hooks/{fid}", content=body, headers=bearer())).status_code == 200
        with facilities.engine.connect() as conn:
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
        facilities.engine.dispose()
        for number in (3, 4, 5):
            body = dumps(backport_id_only([(number, f"Patient/p{number}")]))
            assert (await client.post(f"/hooks/{fid}", content=body, headers=bearer())).status_code == 200
    assert len(facilities.inbox(fid)) == 5
