"""Claiming, leases and the outcome of every row, against real Postgres; the EHR is an httpx MockTransport."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from app.ingest.dead_letters import replay_dead_letters
from app.ingest.drain import claim, process_batch
from app.ingest.pipeline.references import ReferenceCache
from app.ingest.pipeline.service import Pipeline
from app.settings import Settings
from tests.conftest import make_facility
from tests.ehr_mocks import make_client
from tests.fixtures import observation

LEASE = timedelta(minutes=5)


def _inbox(db: Session, focus_id: str, key: str | None = None) -> None:
    db.execute(
        text(
            "INSERT INTO inbox (facility_id, dedup_key, focus_type, focus_id)"
            " VALUES ('fac-1', :k, 'Observation', :f)"
        ),
        {"k": key or f"k-{focus_id}", "f": focus_id},
    )


def _status(db: Session) -> dict[str, tuple[str, str | None, int]]:
    rows = db.execute(text("SELECT focus_id, status, reason, attempts FROM inbox ORDER BY id"))
    return {r.focus_id: (r.status, r.reason, r.attempts) for r in rows}


def test_claimed_rows_are_hidden_from_a_second_claim_until_the_lease_ends(db: Session) -> None:
    make_facility(db)
    for i in range(3):
        _inbox(db, f"o{i}")
    first = claim(db, "fac-1", limit=2, lease=LEASE)
    second = claim(db, "fac-1", limit=10, lease=LEASE)
    assert len(first) == 2
    assert [r.focus.resource_id for r in second if r.focus] == ["o2"]
    assert claim(db, "fac-1", limit=10, lease=LEASE) == []
    db.execute(text("UPDATE inbox SET next_attempt_at = now() - interval '1 second'"))  # lease expired
    assert len(claim(db, "fac-1", limit=10, lease=LEASE)) == 3


def _ehr(routes: dict[str, httpx.Response]) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/token"):
            return httpx.Response(200, json={"access_token": "t", "expires_in": 300, "token_type": "bearer"})
        return routes.get(request.url.path, httpx.Response(404, json={"resourceType": "OperationOutcome"}))

    return httpx.MockTransport(handler)


@pytest.fixture
def settings() -> Settings:
    return Settings(max_attempts=3, retry_base=timedelta(seconds=1))


CLOCK_TOLERANCE_S = 0.01


def _next_attempt_offsets(db: Session) -> tuple[float, float]:
    """How far the row's next attempt lies after the transaction's start (``now()``, before the drain ran)
    and after the wall clock (``clock_timestamp()``, after it ran): the back-off the drain chose lies
    between the two."""
    since_start, since_wall = db.execute(
        text(
            "SELECT extract(epoch FROM next_attempt_at - now()),"
            " extract(epoch FROM next_attempt_at - clock_timestamp()) FROM inbox"
        )
    ).one()
    return float(since_start), float(since_wall)


def test_batch_stores_found_resources_tombstones_gone_ones_and_dead_letters_rejections(
    db: Session, settings: Settings
) -> None:
    facility = make_facility(db)
    _inbox(db, "ok")
    _inbox(db, "gone")
    _inbox(db, "forbidden")
    client = make_client(
        _ehr(
            {
                "/fhir/Observation/ok": httpx.Response(
                    200, json=observation("ok", "1", "2026-11-24T10:00:00Z")
                ),
                "/fhir/Observation/gone": httpx.Response(410, json={"resourceType": "OperationOutcome"}),
                "/fhir/Observation/forbidden": httpx.Response(403, json={"resourceType": "OperationOutcome"}),
            }
        )
    )
    rows = claim(db, "fac-1", limit=10, lease=LEASE)
    report = process_batch(db, facility, client, rows, settings)
    assert (report.done, report.dead, report.retried) == (2, 1, 0)
    assert _status(db) == {
        "ok": ("done", None, 1),
        "gone": ("done", None, 1),
        "forbidden": ("dead", "ehr_http_403", 1),
    }
    deleted: dict[str, bool] = dict(db.execute(text("SELECT resource_id, deleted FROM resources")).all())
    assert deleted == {"ok": False, "gone": True}


def test_transient_failure_backs_off_in_postgres_then_dead_letters_after_max_attempts(
    db: Session, settings: Settings
) -> None:
    facility = make_facility(db)
    _inbox(db, "flaky")
    client = make_client(_ehr({"/fhir/Observation/flaky": httpx.Response(503)}), attempts=1)
    for attempt in range(1, settings.max_attempts + 1):
        db.execute(text("UPDATE inbox SET next_attempt_at = now() - interval '1 second'"))
        rows = claim(db, "fac-1", limit=10, lease=LEASE)
        assert len(rows) == 1
        process_batch(db, facility, client, rows, settings)
        status, reason, attempts = _status(db)["flaky"]
        assert (reason, attempts) == ("ehr_unavailable", attempt)
        assert status == ("dead" if attempt == settings.max_attempts else "pending")
        if status == "pending":  # exponential, full jitter in [0.5, 1] of the step
            step = settings.retry_base.total_seconds() * 2 ** (attempt - 1)
            since_start, since_wall = _next_attempt_offsets(db)
            assert since_start >= 0.5 * step - CLOCK_TOLERANCE_S
            assert since_wall <= step + CLOCK_TOLERANCE_S


def test_backoff_is_capped_at_retry_cap(db: Session) -> None:
    settings = Settings(retry_base=timedelta(seconds=120), retry_cap=timedelta(seconds=60))
    facility = make_facility(db)
    _inbox(db, "flaky")
    client = make_client(_ehr({"/fhir/Observation/flaky": httpx.Response(503)}), attempts=1)
    process_batch(db, facility, client, claim(db, "fac-1", limit=10, lease=LEASE), settings)
    since_start, since_wall = _next_attempt_offsets(db)
    assert since_start >= 0.5 * 60 - CLOCK_TOLERANCE_S  # the jitter applies to the capped step
    assert since_wall <= 60 + CLOCK_TOLERANCE_S


def test_backoff_is_never_sooner_than_retry_after(db: Session, settings: Settings) -> None:
    facility = make_facility(db)
    _inbox(db, "busy")
    busy = httpx.Response(429, headers={"Retry-After": "30"})
    client = make_client(_ehr({"/fhir/Observation/busy": busy}), attempts=1)
    process_batch(db, facility, client, claim(db, "fac-1", limit=10, lease=LEASE), settings)
    since_start, since_wall = _next_attempt_offsets(db)
    assert _status(db)["busy"][0] == "pending"
    assert since_start >= 30 - CLOCK_TOLERANCE_S  # the 1 s step alone would retry within a second
    assert since_wall <= 30 + CLOCK_TOLERANCE_S


def test_duplicate_rows_for_one_resource_fetch_it_once(db: Session, settings: Settings) -> None:
    facility = make_facility(db)
    _inbox(db, "o1", key="a")
    _inbox(db, "o1", key="b")
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/token"):
            return httpx.Response(200, json={"access_token": "t", "expires_in": 300})
        seen.append(request.url.path)
        return httpx.Response(200, json=observation("o1", "1", "2026-11-24T10:00:00Z"))

    rows = claim(db, "fac-1", limit=10, lease=LEASE)
    report = process_batch(db, facility, make_client(httpx.MockTransport(handler)), rows, settings)
    assert report.done == 2
    assert seen == ["/fhir/Observation/o1"]


def test_identifier_only_focus_is_resolved_by_search_and_never_dropped(
    db: Session, settings: Settings
) -> None:
    """athena may name a proprietary resource by identifier only: search it, or keep the row retrying."""
    facility = make_facility(db)
    for key, value in (("found", "urn:athena:doc|123"), ("missing", "urn:athena:doc|999")):
        db.execute(
            text(
                "INSERT INTO inbox (facility_id, dedup_key, focus_type, focus_identifier)"
                " VALUES ('fac-1', :k, 'Observation', :v)"
            ),
            {"k": key, "v": value},
        )
    searches: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/token"):
            return httpx.Response(200, json={"access_token": "t", "expires_in": 300})
        identifier = request.url.params["identifier"]
        searches.append(identifier)
        entries = []
        if identifier.endswith("|123"):
            entries = [
                {"resource": observation("doc-1", "1", "2026-11-24T10:00:00Z"), "search": {"mode": "match"}}
            ]
        return httpx.Response(200, json={"resourceType": "Bundle", "type": "searchset", "entry": entries})

    rows = claim(db, "fac-1", limit=10, lease=LEASE)
    process_batch(db, facility, make_client(httpx.MockTransport(handler)), rows, settings)
    assert sorted(searches) == ["urn:athena:doc|123", "urn:athena:doc|999"]
    status: dict[str, str] = dict(
        db.execute(text("SELECT dedup_key, status || ':' || coalesce(reason, '-') FROM inbox")).all()
    )
    assert status == {"found": "done:-", "missing": "pending:identifier_not_found"}
    assert db.execute(text("SELECT resource_id FROM resources")).scalar_one() == "doc-1"


def test_an_event_naming_no_resource_requests_a_reconcile_of_its_facility(
    db: Session, settings: Settings
) -> None:
    """HAPI's payload-less POST: only a reconcile can tell what changed. The request is durable, in the
    same transaction as the row's outcome, so the row is done rather than a dead letter."""
    facility = make_facility(db)
    db.execute(text("INSERT INTO inbox (facility_id, dedup_key) VALUES ('fac-1', 'empty-1')"))
    rows = claim(db, "fac-1", limit=10, lease=LEASE)
    report = process_batch(db, facility, make_client(_ehr({})), rows, settings)
    assert (report.dead, report.done, report.reconcile_requested) == (0, 1, True)
    assert db.execute(text("SELECT status, reason FROM inbox")).one() == ("done", None)
    requested = db.execute(text("SELECT facility_id, trigger, outcome FROM reconcile_runs")).one()
    assert tuple(requested) == ("fac-1", "no-focus", "requested")


def test_a_needs_backfill_dead_letter_replayed_requests_a_reconcile(db: Session, settings: Settings) -> None:
    """Dead letters left by earlier versions (reason needs_backfill) are replayable: the replay now ends
    in a reconcile request, not in the same dead letter."""
    facility = make_facility(db)
    db.execute(
        text(
            "INSERT INTO inbox (facility_id, dedup_key, status, reason) "
            "VALUES ('fac-1', 'empty-1', 'dead', 'needs_backfill')"
        )
    )
    assert replay_dead_letters(db, facility="fac-1", reason="needs_backfill", ids=None) == {"fac-1": 1}
    rows = claim(db, "fac-1", limit=10, lease=LEASE)
    report = process_batch(db, facility, make_client(_ehr({})), rows, settings)
    assert report.reconcile_requested
    assert db.execute(text("SELECT status FROM inbox")).scalar_one() == "done"


def test_a_worker_whose_lease_ran_out_cannot_record_outcomes_over_the_new_owner(
    db: Session, settings: Settings
) -> None:
    facility = make_facility(db)
    _inbox(db, "forbidden")
    client = make_client(_ehr({"/fhir/Observation/forbidden": httpx.Response(403)}))
    stale = claim(db, "fac-1", limit=10, lease=LEASE)
    db.execute(text("UPDATE inbox SET next_attempt_at = now() - interval '1 second'"))  # the lease ran out
    current = claim(db, "fac-1", limit=10, lease=LEASE)
    process_batch(db, facility, client, stale, settings)  # the first worker finally finishes
    assert _status(db)["forbidden"][0] == "pending"  # its outcome did not land: the row is not its own
    process_batch(db, facility, client, current, settings)
    assert _status(db)["forbidden"] == ("dead", "ehr_http_403", 2)


def test_a_fresh_row_is_not_dead_lettered_because_a_row_sharing_its_focus_spent_its_budget(
    db: Session, settings: Settings
) -> None:
    facility = make_facility(db)
    _inbox(db, "flaky", key="old")
    _inbox(db, "flaky", key="new")
    spent = settings.max_attempts - 1  # the claim below spends the last attempt
    db.execute(text("UPDATE inbox SET attempts = :n WHERE dedup_key = 'old'"), {"n": spent})
    client = make_client(_ehr({"/fhir/Observation/flaky": httpx.Response(503)}), attempts=1)
    rows = claim(db, "fac-1", limit=10, lease=LEASE)
    process_batch(db, facility, client, rows, settings)
    by_key: dict[str, str] = dict(db.execute(text("SELECT dedup_key, status FROM inbox")).all())
    assert by_key == {"old": "dead", "new": "pending"}


def test_the_pipeline_keeps_the_reference_cache_it_is_given_even_while_empty(
    db: Session, settings: Settings
) -> None:
    cache = ReferenceCache()
    client = make_client(_ehr({}), attempts=1)
    assert Pipeline.for_facility(make_facility(db), client, settings, cache).references is cache
