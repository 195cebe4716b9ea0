"""What the drain takes for a deletion and what it lets a payload do (issue 9 items 1, 3, 10, 11), through
the real drain and real Postgres; the EHR is an httpx.MockTransport whose answers a test changes."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from app.db.models import Facility
from app.ingest.drain import DrainReport, claim, process_batch
from app.ingest.pipeline.references import ReferenceCache
from app.ingest.pipeline.service import Pipeline
from app.settings import Settings
from app.vendors.base import DefaultAdapter
from tests.conftest import make_facility
from tests.ehr_mocks import make_client
from tests.fixtures import observation

LEASE = timedelta(minutes=5)
V1 = observation("o1", "1", "2026-11-24T10:00:00Z", value=1.0)
V2 = observation("o1", "2", "2026-11-24T10:05:00Z", value=2.0)


class EHR:
    """Answers reads of Observation/o1 with ``self.answer`` and counts them."""

    def __init__(self) -> None:
        self.answer: httpx.Response = httpx.Response(200, json=V1)
        self.reads = 0

    def transport(self) -> httpx.MockTransport:
        def handler(request: httpx.Request) -> httpx.Response:
            if request.url.path.endswith("/token"):
                return httpx.Response(200, json={"access_token": "t", "expires_in": 300})
            self.reads += 1
            return httpx.Response(self.answer.status_code, content=self.answer.content)

        return httpx.MockTransport(handler)


@pytest.fixture
def ehr() -> EHR:
    return EHR()


@pytest.fixture
def facility(db: Session) -> Facility:
    return make_facility(db)


@pytest.fixture
def settings() -> Settings:
    return Settings(max_attempts=4, retry_base=timedelta(seconds=1))


def _enqueue(
    db: Session,
    key: str,
    *,
    interaction: str | None = None,
    payload: Any = None,
    notified_version: str | None = None,
    notified_at: str | None = None,
) -> None:
    db.execute(
        text(
            "INSERT INTO inbox (facility_id, dedup_key, focus_type, focus_id, interaction, payload,"
            " notified_version, notified_at)"
            " VALUES ('fac-1', :k, 'Observation', 'o1', :i, CAST(:p AS jsonb), :v, CAST(:t AS timestamptz))"
        ),
        {
            "k": key,
            "i": interaction,
            "p": json.dumps(payload) if payload is not None else None,
            "v": notified_version,
            "t": notified_at,
        },
    )


def _drain(db: Session, facility: Facility, ehr: EHR, settings: Settings, **kw: Any) -> DrainReport:
    db.execute(
        text("UPDATE inbox SET next_attempt_at = now() - interval '1 second' WHERE status = 'pending'")
    )
    rows = claim(db, "fac-1", limit=10, lease=LEASE)
    return process_batch(db, facility, make_client(ehr.transport(), attempts=1), rows, settings, **kw)


def _resource(db: Session) -> tuple[bool, str | None, str | None]:
    row = db.execute(
        text("SELECT deleted, deletion, version_id FROM resources WHERE resource_id = 'o1'")
    ).one()
    return row.deleted, row.deletion, row.version_id


def _rows(db: Session) -> list[tuple[str, str, str | None]]:
    return [tuple(r) for r in db.execute(text("SELECT dedup_key, status, reason FROM inbox ORDER BY id"))]


def _live(db: Session, facility: Facility, ehr: EHR, settings: Settings) -> None:
    _enqueue(db, "create")
    _drain(db, facility, ehr, settings)
    assert _resource(db) == (False, None, "1")


GONE = httpx.Response(410, json={"resourceType": "OperationOutcome"})
NOT_FOUND = httpx.Response(404, json={"resourceType": "OperationOutcome"})


# -- item 3: a 404 is not yet a deletion ---------------------------------------------------------------


def test_a_410_is_a_deletion_at_once_and_says_so(
    db: Session, facility: Facility, ehr: EHR, settings: Settings
) -> None:
    _live(db, facility, ehr, settings)
    ehr.answer = GONE
    _enqueue(db, "update")
    _drain(db, facility, ehr, settings)
    assert _resource(db) == (True, "gone", "1")


def test_a_404_is_read_again_after_a_back_off_before_it_is_a_deletion(
    db: Session, facility: Facility, ehr: EHR, settings: Settings
) -> None:
    _live(db, facility, ehr, settings)
    ehr.answer = NOT_FOUND
    _enqueue(db, "update")
    _drain(db, facility, ehr, settings)
    assert _resource(db) == (False, None, "1")  # still live: replication lag or access filtering
    assert _rows(db)[-1] == ("update", "pending", "not_found_unconfirmed")
    _drain(db, facility, ehr, settings)
    assert _resource(db) == (True, "not_found_confirmed", "1")
    assert _rows(db)[-1] == ("update", "done", None)


def test_a_404_that_was_lag_leaves_the_resource_live(
    db: Session, facility: Facility, ehr: EHR, settings: Settings
) -> None:
    _live(db, facility, ehr, settings)
    ehr.answer = NOT_FOUND
    _enqueue(db, "update")
    _drain(db, facility, ehr, settings)
    ehr.answer = httpx.Response(200, json=V2)  # the replica caught up
    _drain(db, facility, ehr, settings)
    assert _resource(db) == (False, None, "2")


def test_a_404_for_an_announced_delete_is_the_deletion(
    db: Session, facility: Facility, ehr: EHR, settings: Settings
) -> None:
    _live(db, facility, ehr, settings)
    ehr.answer = NOT_FOUND
    _enqueue(db, "delete", interaction="delete")
    _drain(db, facility, ehr, settings)
    assert _resource(db) == (True, "not_found_announced", "1")


def test_a_vendor_whose_404_is_final_tombstones_at_once(
    db: Session, facility: Facility, ehr: EHR, settings: Settings
) -> None:
    class FinalNotFound(DefaultAdapter):
        not_found_is_final = True

    _live(db, facility, ehr, settings)
    ehr.answer = NOT_FOUND
    _enqueue(db, "update")
    client = make_client(ehr.transport(), attempts=1)
    pipeline = Pipeline(client, FinalNotFound(), ReferenceCache(), concurrency=1)
    _drain(db, facility, ehr, settings, pipeline=pipeline)
    assert _resource(db) == (True, "not_found", "1")


# -- item 1: a late payload must not resurrect a deletion ----------------------------------------------


def test_a_late_payload_of_the_create_is_verified_by_a_read_and_the_deletion_stays(
    db: Session, facility: Facility, ehr: EHR, settings: Settings
) -> None:
    """Create, delete, then the create's full-resource payload arrives (Medplum, HAPI: unordered)."""
    _live(db, facility, ehr, settings)
    ehr.answer = GONE
    _enqueue(db, "delete", interaction="delete")
    _drain(db, facility, ehr, settings)
    reads = ehr.reads
    _enqueue(db, "late-create", interaction="create", payload=V1)
    _drain(db, facility, ehr, settings)
    assert ehr.reads == reads + 1  # read, not taken on the payload's word
    assert _resource(db) == (True, "gone", "1")
    assert _rows(db)[-1] == ("late-create", "done", None)


def test_a_payload_over_a_tombstone_that_does_exist_again_is_applied_from_the_read(
    db: Session, facility: Facility, ehr: EHR, settings: Settings
) -> None:
    _live(db, facility, ehr, settings)
    ehr.answer = GONE
    _enqueue(db, "delete", interaction="delete")
    _drain(db, facility, ehr, settings)
    ehr.answer = httpx.Response(200, json=V2)  # re-created
    _enqueue(db, "re-create", interaction="create", payload=V2)
    _drain(db, facility, ehr, settings)
    assert _resource(db) == (False, None, "2")


def test_a_payload_received_after_a_deletion_seen_in_the_same_batch_is_read_next_time(
    db: Session, facility: Facility, ehr: EHR, settings: Settings
) -> None:
    """The store itself refuses the revival (a tombstone committed after the drain looked): the row is
    backed off and read on its next attempt."""
    _live(db, facility, ehr, settings)
    ehr.answer = GONE
    _enqueue(db, "delete", interaction="delete")
    _enqueue(db, "late-create", interaction="create", payload=V1)
    db.execute(
        text("UPDATE inbox SET received_at = now() + interval '1 minute' WHERE dedup_key = 'late-create'")
    )
    _drain(db, facility, ehr, settings)
    assert _resource(db) == (True, "gone", "1")
    assert _rows(db)[1:] == [("delete", "done", None), ("late-create", "pending", "revival_unverified")]
    _drain(db, facility, ehr, settings)
    assert _resource(db) == (True, "gone", "1")
    assert _rows(db)[-1] == ("late-create", "done", None)


# -- item 10: a tombstone carries the last version -----------------------------------------------------


def test_an_update_payload_arriving_with_the_delete_ends_in_the_tombstone_and_the_feed(
    db: Session, facility: Facility, ehr: EHR, settings: Settings
) -> None:
    _live(db, facility, ehr, settings)
    _enqueue(db, "update", interaction="update", payload=V2)
    ehr.answer = GONE
    _enqueue(db, "delete", interaction="delete")
    # The delete is drained first (it was claimed by another worker), the update after it.
    db.execute(
        text("UPDATE inbox SET next_attempt_at = now() + interval '1 hour' WHERE dedup_key = 'update'")
    )
    rows = claim(db, "fac-1", limit=10, lease=LEASE)
    process_batch(db, facility, make_client(ehr.transport(), attempts=1), rows, settings)
    assert _resource(db) == (True, "gone", "1")
    _drain(db, facility, ehr, settings)
    assert _resource(db) == (True, "gone", "2")
    feed = db.execute(text("SELECT version_id, deleted FROM change_feed ORDER BY seq")).all()
    assert [tuple(r) for r in feed] == [("1", False), ("1", True), ("2", True)]


# -- item 11: a payload never beats the EHR's own version evidence ------------------------------------


def test_a_payload_without_meta_is_fetched_instead_of_replacing_a_versioned_resource(
    db: Session, facility: Facility, ehr: EHR, settings: Settings
) -> None:
    _live(db, facility, ehr, settings)
    reads = ehr.reads
    _enqueue(db, "put", interaction="update", payload={"resourceType": "Observation", "id": "o1"})
    _drain(db, facility, ehr, settings)
    assert ehr.reads == reads + 1
    body = db.execute(text("SELECT resource FROM resources WHERE resource_id = 'o1'")).scalar_one()
    assert body["meta"]["versionId"] == "1"
    assert body["valueQuantity"]["value"] == 1.0


# -- older than notified: a lagging replica is read again ---------------------------------------------


def test_a_read_older_than_the_notified_version_is_read_again_until_the_newer_one_is_stored(
    db: Session, facility: Facility, ehr: EHR, settings: Settings
) -> None:
    _live(db, facility, ehr, settings)  # the replica still answers V1
    _enqueue(db, "update", interaction="update", notified_version="2")
    report = _drain(db, facility, ehr, settings)
    assert report.retried == 1
    assert _rows(db)[-1] == ("update", "pending", "older_than_notified")
    ehr.answer = httpx.Response(200, json=V2)  # the replica caught up
    _drain(db, facility, ehr, settings)
    assert _resource(db) == (False, None, "2")
    assert _rows(db)[-1] == ("update", "done", None)


def test_without_a_version_the_notified_time_tells_a_lagging_read(
    db: Session, facility: Facility, ehr: EHR, settings: Settings
) -> None:
    _live(db, facility, ehr, settings)
    _enqueue(db, "update", notified_at="2026-11-24T10:05:00Z")  # V2's time
    _drain(db, facility, ehr, settings)
    assert _rows(db)[-1] == ("update", "pending", "older_than_notified")
    ehr.answer = httpx.Response(200, json=V2)
    _drain(db, facility, ehr, settings)
    assert (_resource(db), _rows(db)[-1]) == ((False, None, "2"), ("update", "done", None))


def test_a_read_at_the_notified_version_or_time_closes_the_event_at_once(
    db: Session, facility: Facility, ehr: EHR, settings: Settings
) -> None:
    _enqueue(db, "create", notified_version="1", notified_at="2026-11-24T10:00:00Z")
    _enqueue(db, "opaque", notified_version="abc", notified_at="2026-11-24T09:00:00Z")
    report = _drain(db, facility, ehr, settings)
    assert (report.done, report.retried) == (2, 0)


def test_a_replica_that_never_catches_up_is_dead_lettered_with_its_reason_after_the_bound(
    db: Session, facility: Facility, ehr: EHR, settings: Settings
) -> None:
    _enqueue(db, "update", notified_version="2")
    for _ in range(settings.max_attempts):
        _drain(db, facility, ehr, settings)
    assert _rows(db)[-1] == ("update", "dead", "older_than_notified")
    assert ehr.reads == settings.max_attempts
    assert _resource(db) == (False, None, "1")  # what the replica had is stored meanwhile


def test_a_lagging_read_of_a_resource_already_stored_newer_closes_the_event(
    db: Session, facility: Facility, ehr: EHR, settings: Settings
) -> None:
    ehr.answer = httpx.Response(200, json=V2)
    _enqueue(db, "reconciled")
    _drain(db, facility, ehr, settings)  # V2 stored (as a reconcile would)
    ehr.answer = httpx.Response(200, json=V1)  # a lagging replica
    _enqueue(db, "update", notified_version="2")
    report = _drain(db, facility, ehr, settings)
    assert (report.done, report.retried, report.stale) == (1, 0, 1)
    assert _resource(db) == (False, None, "2")
