"""Short leases renewed while a batch is in flight: a live worker keeps its rows however slow the EHR, a
dead one gives them back within one lease (FAULTS.md: recovery in seconds, not minutes)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from app.ingest.drain import ClaimedRow, claim, drain_facility
from app.ingest.lease import LeaseKeeper
from app.settings import Settings
from devstack.processes import wait_until
from tests.conftest import make_facility
from tests.ehr_mocks import make_client
from tests.fixtures import observation

LEASE = timedelta(seconds=1)


@pytest.fixture
def facility_with_rows(engine: Engine) -> Iterator[str]:
    facility_id = f"lease-{uuid.uuid4().hex[:6]}"
    with Session(engine) as session, session.begin():
        make_facility(session, facility_id)
        for rid in ("o1", "o2"):
            session.execute(
                text(
                    "INSERT INTO inbox (facility_id, dedup_key, focus_type, focus_id)"
                    " VALUES (:f, :k, 'Observation', :i)"
                ),
                {"f": facility_id, "k": rid, "i": rid},
            )
    yield facility_id
    with engine.begin() as conn:
        for table in ("inbox", "change_feed", "resource_history", "resources", "token_events"):
            conn.execute(text(f"DELETE FROM {table} WHERE facility_id = :f"), {"f": facility_id})
        conn.execute(text("DELETE FROM facilities WHERE id = :f"), {"f": facility_id})


def _db_clock(engine: Engine) -> float:
    with engine.connect() as conn:
        return float(conn.execute(text("SELECT extract(epoch FROM clock_timestamp())")).scalar_one())


def _bundle(request: httpx.Request) -> httpx.Response:
    ids = request.url.params.get("_id", request.url.path.rsplit("/", 1)[-1]).split(",")
    if "_id" not in request.url.params:
        return httpx.Response(200, json=observation(ids[0], "1", "2026-11-24T10:00:00Z"))
    entries = [
        {"resource": observation(i, "1", "2026-11-24T10:00:00Z"), "search": {"mode": "match"}} for i in ids
    ]
    return httpx.Response(200, json={"resourceType": "Bundle", "type": "searchset", "entry": entries})


def test_rows_of_a_batch_in_flight_stay_claimed_long_past_one_lease(
    engine: Engine, facility_with_rows: str
) -> None:
    sessions = sessionmaker(engine)
    seen_by_another_worker: list[list[ClaimedRow]] = []

    def slow_ehr(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/token"):
            return httpx.Response(200, json={"access_token": "t", "expires_in": 300})
        if not seen_by_another_worker:
            # The EHR answers after three leases; meanwhile another worker looks for due rows.
            started = _db_clock(engine)
            wait_until(lambda: _db_clock(engine) > started + 3 * LEASE.total_seconds(), timeout=10)
            with sessions.begin() as session:
                seen_by_another_worker.append(claim(session, facility_with_rows, limit=10, lease=LEASE))
        return _bundle(request)

    client = make_client(httpx.MockTransport(slow_ehr), facility_id=facility_with_rows)
    report = drain_facility(sessions, lambda _: client, facility_with_rows, Settings(lease=LEASE))

    assert seen_by_another_worker == [[]]
    assert report.done == 2


def test_a_renewal_extends_only_rows_still_held_under_the_claim(
    engine: Engine, facility_with_rows: str
) -> None:
    sessions = sessionmaker(engine)
    with sessions.begin() as session:
        rows = claim(session, facility_with_rows, limit=10, lease=LEASE)
        session.execute(text("UPDATE inbox SET status = 'done' WHERE id = :i"), {"i": rows[0].id})
    keeper = LeaseKeeper(sessions, rows, LEASE)

    assert keeper.renew() == 1  # the row already done is left alone

    with sessions.begin() as session:
        again = claim(session, facility_with_rows, limit=10, lease=LEASE)  # a new owner, a new token
    assert again == []
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE inbox SET claim_token = gen_random_uuid() WHERE facility_id = :f"),
            {"f": facility_with_rows},
        )
    assert keeper.renew() == 0  # rows another claim took over are not ours to extend


def test_the_default_lease_gives_a_dead_workers_rows_back_within_seconds() -> None:
    assert Settings().lease <= timedelta(seconds=30)
