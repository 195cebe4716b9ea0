"""One bad resource must not hold back, or finally dead-letter, the good rows claimed with it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from app.db.models import Facility
from app.ehr.client import EHRClient
from app.fhir import pgsafe
from app.ingest.drain import drain_facility
from app.ingest.pipeline.observed import Observed
from app.ingest.pipeline.store import store_versions
from app.settings import Settings
from tests.conftest import make_facility
from tests.ehr_mocks import make_client
from tests.fixtures import observation


@pytest.fixture
def committed_facility(engine: Engine) -> Iterator[str]:
    facility_id = f"poison-{uuid.uuid4().hex[:6]}"
    with Session(engine) as session, session.begin():
        make_facility(session, facility_id)
        for rid in ("good1", "bad", "good2"):
            session.execute(
                text(
                    "INSERT INTO inbox (facility_id, dedup_key, focus_type, focus_id)"
                    " VALUES (:f, :k, 'Observation', :i)"
                ),
                {"f": facility_id, "k": rid, "i": rid},
            )
    yield facility_id
    with engine.begin() as conn:
        for table in ("inbox", "change_feed", "resource_history", "resources"):
            conn.execute(text(f"DELETE FROM {table} WHERE facility_id = :f"), {"f": facility_id})
        conn.execute(text("DELETE FROM facilities WHERE id = :f"), {"f": facility_id})


def _poison_ehr(reads: list[str]) -> httpx.MockTransport:
    """An EHR serving Observations ``good1``, ``good2`` and ``bad``; the database refuses ``bad``."""

    def body(rid: str) -> dict[str, object]:
        resource = observation(rid, "1", "2026-11-24T10:00:00Z")
        if rid == "bad":
            resource["meta"]["versionId"] = "v" * 200  # longer than any real versionId: the column refuses it
        return resource

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/token"):
            return httpx.Response(200, json={"access_token": "t", "expires_in": 300})
        reads.append(str(request.url))
        if "_id" in request.url.params:  # the generic adapter reads the batch with one search
            entries = [
                {"resource": body(i), "search": {"mode": "match"}}
                for i in request.url.params["_id"].split(",")
            ]
            return httpx.Response(200, json={"resourceType": "Bundle", "type": "searchset", "entry": entries})
        return httpx.Response(200, json=body(request.url.path.rsplit("/", 1)[-1]))

    return httpx.MockTransport(handler)


def _rows_metric(facility_id: str, outcome: str, reason: str) -> float:
    labels = {"facility": facility_id, "outcome": outcome, "reason": reason}
    return REGISTRY.get_sample_value("ehri_inbox_rows_total", labels) or 0.0


def _statuses(engine: Engine, facility_id: str) -> dict[str, str]:
    with engine.connect() as conn:
        return dict(
            conn.execute(
                text(
                    "SELECT focus_id, status || ':' || coalesce(reason, '-') FROM inbox"
                    " WHERE facility_id = :f"
                ),
                {"f": facility_id},
            ).all()
        )


def test_a_row_the_database_refuses_is_isolated_and_the_others_are_stored(
    engine: Engine, committed_facility: str
) -> None:
    reads: list[str] = []

    def requests(status: str) -> float:
        labels = {"facility": committed_facility, "status": status}
        return REGISTRY.get_sample_value("ehri_ehr_request_seconds_count", labels) or 0.0

    def counters() -> tuple[float, float, float]:
        return (
            _rows_metric(committed_facility, "done", "-"),
            _rows_metric(committed_facility, "retried", "internal_error"),
            requests("200"),
        )

    before = counters()
    client = make_client(_poison_ehr(reads), facility_id=committed_facility)
    report = drain_facility(
        sessionmaker(engine), lambda _: client, committed_facility, Settings(drain_batch=10)
    )
    assert _statuses(engine, committed_facility) == {
        "good1": "done:-",
        "good2": "done:-",
        "bad": "pending:internal_error",
    }
    assert report.done == 2
    assert len(reads) == 1  # isolating the poison row stored what was fetched: no second read
    assert [a - b for a, b in zip(counters(), before, strict=True)] == [2, 1, 1]


def test_a_poison_row_out_of_attempts_is_counted_as_the_dead_letter_it_became(
    engine: Engine, committed_facility: str
) -> None:
    settings = Settings(drain_batch=10, max_attempts=3)
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE inbox SET attempts = :n WHERE facility_id = :f AND focus_id = 'bad'"),
            {"n": settings.max_attempts - 1, "f": committed_facility},
        )
    before = _rows_metric(committed_facility, "dead", "internal_error")
    client = make_client(_poison_ehr([]), facility_id=committed_facility)
    report = drain_facility(sessionmaker(engine), lambda _: client, committed_facility, settings)
    assert _statuses(engine, committed_facility)["bad"] == "dead:internal_error"
    assert (report.dead, report.retried, report.done) == (1, 0, 2)
    assert _rows_metric(committed_facility, "dead", "internal_error") - before == 1


def test_nul_and_lone_surrogates_are_stored_replaced_not_refused(db: Session) -> None:
    make_facility(db)
    body = observation("o1", "1", "2026-11-24T10:00:00Z")
    body["note"] = [{"text": "a\u0000b\ud800c"}]
    stats = store_versions(
        db,
        [
            Observed(
                "fac-1",
                "Observation",
                "o1",
                body,
                __import__("datetime").datetime.now(__import__("datetime").UTC),
            )
        ],
    )
    assert stats.applied == 1
    stored = db.execute(text("SELECT resource FROM resources")).scalar_one()
    assert stored["note"][0]["text"] == "a\ufffdb\ufffdc"


def test_escaped_backslash_before_u0000_text_is_not_mistaken_for_nul() -> None:
    assert pgsafe.needs_cleaning(b'{"a": "\\\\u0000"}') is False
    assert pgsafe.needs_cleaning(b'{"a": "\\u0000"}') is True


def test_a_facility_whose_secret_cannot_be_read_backs_off_then_dead_letters(
    engine: Engine, committed_facility: str
) -> None:
    from app.errors import SecretMissing

    def unusable(_: Facility) -> EHRClient:
        raise SecretMissing("environment variable X is not set")

    settings = Settings(max_attempts=2)
    sessions = sessionmaker(engine)
    for _ in range(settings.max_attempts):
        with engine.begin() as conn:
            conn.execute(
                text(
                    "UPDATE inbox SET next_attempt_at = now() WHERE facility_id = :f AND status = 'pending'"
                ),
                {"f": committed_facility},
            )
        drain_facility(sessions, unusable, committed_facility, settings)
    with engine.connect() as conn:
        states = conn.execute(
            text("SELECT DISTINCT status, reason FROM inbox WHERE facility_id = :f"),
            {"f": committed_facility},
        ).all()
    assert [tuple(s) for s in states] == [("dead", "secret_missing")]


def test_rows_are_not_done_while_a_resource_they_reference_could_not_be_stored(
    engine: Engine, committed_facility: str
) -> None:
    def request(rid: str) -> dict[str, object]:
        return {
            "resourceType": "MedicationRequest",
            "id": rid,
            "meta": {"versionId": "1", "lastUpdated": "2026-11-24T10:00:00Z"},
            "status": "active",
            "intent": "order",
            "subject": {"reference": "Patient/p1"},
            "medicationReference": {"reference": "Medication/m-bad"},
        }

    medication = {"resourceType": "Medication", "id": "m-bad", "meta": {"versionId": "v" * 200}}

    def handler(http: httpx.Request) -> httpx.Response:
        if http.url.path.endswith("/token"):
            return httpx.Response(200, json={"access_token": "t", "expires_in": 300})
        if http.url.path.endswith("/Medication/m-bad"):
            return httpx.Response(200, json=medication)
        if "_id" in http.url.params:
            entries = [
                {"resource": request(i), "search": {"mode": "match"}}
                for i in http.url.params["_id"].split(",")
            ]
            return httpx.Response(200, json={"resourceType": "Bundle", "type": "searchset", "entry": entries})
        return httpx.Response(200, json=request(http.url.path.rsplit("/", 1)[-1]))

    with engine.begin() as conn:
        conn.execute(
            text("UPDATE inbox SET focus_type = 'MedicationRequest' WHERE facility_id = :f"),
            {"f": committed_facility},
        )
    client = make_client(httpx.MockTransport(handler), facility_id=committed_facility)
    drain_facility(sessionmaker(engine), lambda _: client, committed_facility, Settings(drain_batch=10))
    statuses = _statuses(engine, committed_facility)
    assert set(statuses.values()) == {"pending:internal_error"}  # backed off, visible; none done without it
