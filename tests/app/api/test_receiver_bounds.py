"""What the receiver answers when its own parts cannot: a facility lookup that hangs, a writer that has
stopped. A sender is told to retry (503 with Retry-After), never left hanging and never given a 500."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from app.api.main import create_app
from app.facilities.webhooks import ReceiverFacility
from tests.app.api.conftest import Facilities, bearer, settings_for, shared_secret
from tests.app.api.fixtures_shapes import dumps
from tests.fixtures import backport_id_only

pytestmark = pytest.mark.anyio

BODY = dumps(backport_id_only([(1, "Patient/p1")]))


class HangingDirectory:
    async def get(self, facility_id: str) -> ReceiverFacility | None:
        await asyncio.Event().wait()  # a Postgres that stops answering, rather than refusing
        return None


async def test_a_facility_lookup_that_hangs_is_a_503_within_the_commit_timeout(
    api_database_url: str, redis_prefix: str
) -> None:
    app = create_app(settings_for(api_database_url, redis_prefix))
    async with app.router.lifespan_context(app):
        receiver = app.state.receiver
        receiver.facilities = HangingDirectory()
        receiver.commit_timeout_s = 0.2
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://receiver.test") as client:
            response = await asyncio.wait_for(client.post("/hooks/fac-x", content=BODY, headers=bearer()), 5)
    assert response.status_code == 503
    assert "retry-after" in response.headers


async def test_a_commit_after_the_writer_stopped_is_a_503_not_a_500(
    api_database_url: str, redis_prefix: str, facilities: Facilities
) -> None:
    fid = facilities.add(shared_secret())
    app = create_app(settings_for(api_database_url, redis_prefix))
    async with app.router.lifespan_context(app):
        await app.state.writer.stop()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://receiver.test") as client:
            response = await asyncio.wait_for(client.post(f"/hooks/{fid}", content=BODY, headers=bearer()), 5)
    assert response.status_code == 503, response.text
    assert "retry-after" in response.headers
