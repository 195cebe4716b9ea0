"""Replays and odd ids (issue 10 item 5): a Standard Webhooks message delivered twice inside its window
is stored once, also when the copies reach different receiver processes; focus ids made of dots only
are refused at the receiver."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import text

from app.db.engine import make_async_engine
from app.ingest.writer import InboxWriter
from tests.app.api.conftest import WHSEC, Facilities, bearer, running, settings_for, shared_secret, signed
from tests.app.api.fixtures_shapes import dumps, standard_webhooks_headers
from tests.fixtures import BASE, backport_id_only

pytestmark = pytest.mark.anyio


def _signed(body: bytes, msg_id: str) -> dict[str, str]:
    headers = standard_webhooks_headers(body, WHSEC, msg_id, int(time.time()))
    return {**headers, "Content-Type": "application/fhir+json"} if body else headers


async def test_a_message_sent_twice_inside_the_window_is_stored_once(
    receiver: httpx.AsyncClient, facilities: Facilities
) -> None:
    """An empty POST has nothing to tell two deliveries apart but the message id."""
    fid = facilities.add(signed("standard-webhooks"))
    headers = _signed(b"", "msg_replayed")
    first = await receiver.post(f"/hooks/{fid}", content=b"", headers=headers)
    again = await receiver.post(f"/hooks/{fid}", content=b"", headers=headers)
    assert (first.status_code, again.status_code) == (200, 200)
    assert "replay" in again.json()["issue"][0]["diagnostics"]
    assert len(facilities.inbox(fid)) == 1
    (ledger,) = facilities.ledger(fid)
    assert ledger.notifications == 1


async def test_different_message_ids_with_the_same_body_are_both_stored(
    receiver: httpx.AsyncClient, facilities: Facilities
) -> None:
    fid = facilities.add(signed("standard-webhooks"))
    for msg_id in ("msg_a", "msg_b"):
        response = await receiver.post(f"/hooks/{fid}", content=b"", headers=_signed(b"", msg_id))
        assert response.status_code == 200
    assert len(facilities.inbox(fid)) == 2


async def test_the_same_message_id_is_per_facility(
    receiver: httpx.AsyncClient, facilities: Facilities
) -> None:
    one, two = facilities.add(signed("standard-webhooks")), facilities.add(signed("standard-webhooks"))
    for fid in (one, two):
        response = await receiver.post(f"/hooks/{fid}", content=b"", headers=_signed(b"", "msg_same"))
        assert response.status_code == 200
    assert (len(facilities.inbox(one)), len(facilities.inbox(two))) == (1, 1)


async def test_copies_racing_to_two_receiver_processes_are_stored_once(
    api_database_url: str, redis_prefix: str, facilities: Facilities
) -> None:
    """Two receivers (each its own writer and connections, as two processes have) get the same message
    at the same moment, several times over: the message id's unique row decides, in the commit."""
    fid = facilities.add(signed("standard-webhooks"))
    settings = settings_for(api_database_url, redis_prefix)
    async with running(settings) as a, running(settings) as b:
        for n in range(10):
            headers = _signed(b"", f"msg_race_{n}")
            answers = await asyncio.gather(
                *(client.post(f"/hooks/{fid}", content=b"", headers=headers) for client in (a, b, a, b))
            )
            assert {r.status_code for r in answers} == {200}
    assert len(facilities.inbox(fid)) == 10
    (ledger,) = facilities.ledger(fid)
    assert ledger.notifications == 10


async def test_message_ids_are_forgotten_once_their_window_has_closed(
    api_database_url: str, facilities: Facilities
) -> None:
    fid = facilities.add(signed("standard-webhooks"))
    now = datetime.now(UTC)
    with facilities.engine.begin() as conn:
        for digest, expires in (("a" * 64, now - timedelta(hours=1)), ("b" * 64, now + timedelta(hours=1))):
            conn.execute(
                text(
                    "INSERT INTO webhook_messages (facility_id, message_sha256, expires_at)"
                    " VALUES (:f, :m, :e)"
                ),
                {"f": fid, "m": digest, "e": expires},
            )
    engine = make_async_engine(api_database_url)
    writer = InboxWriter(engine)
    try:
        await writer.prune_messages()
    finally:
        await writer.stop()
        await engine.dispose()
    with facilities.engine.connect() as conn:
        left = conn.execute(
            text("SELECT message_sha256 FROM webhook_messages WHERE facility_id = :f"), {"f": fid}
        ).scalars()
        assert list(left) == ["b" * 64]


@pytest.mark.parametrize("focus", ["Patient/.", "Patient/..", f"{BASE}/Patient/..", "Patient/..."])
async def test_a_focus_id_of_dots_only_is_refused(
    receiver: httpx.AsyncClient, facilities: Facilities, focus: str
) -> None:
    fid = facilities.add(shared_secret())
    body = backport_id_only([(1, focus), (2, "Patient/p.2")])
    response = await receiver.post(f"/hooks/{fid}", content=dumps(body), headers=bearer())
    assert response.status_code == 200
    assert "1 stored, 0 duplicate, 1 refused" in response.json()["issue"][0]["diagnostics"]
    assert [row.focus_id for row in facilities.inbox(fid)] == ["p.2"]


@pytest.mark.parametrize("rid", ["%2E", "%2E%2E"])
async def test_a_payload_mode_path_with_a_dots_only_id_is_refused(
    receiver: httpx.AsyncClient, facilities: Facilities, rid: str
) -> None:
    fid = facilities.add(shared_secret())
    response = await receiver.delete(f"/hooks/{fid}/Patient/{rid}", headers=bearer())
    assert response.status_code == 400
    assert facilities.inbox(fid) == []
