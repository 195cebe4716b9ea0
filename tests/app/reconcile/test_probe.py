"""Recording probes: a capability a later probe no longer finds is a ``gone`` event; a failed probe is
recorded and keeps the last good strategies. The EHR is an httpx.MockTransport (the network edge)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import CapabilityEvent, FacilityCapabilities
from app.reconcile.probe import load_strategies, probe_facility
from tests.conftest import make_facility
from tests.ehr_mocks import make_client

T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


def _statement(observation_params: list[str], export: bool) -> dict[str, Any]:
    rest: dict[str, Any] = {
        "mode": "server",
        "resource": [
            {
                "type": "Observation",
                "interaction": [{"code": "search-type"}],
                "searchParam": [{"name": n, "type": "date"} for n in observation_params],
            }
        ],
    }
    if export:
        rest["operation"] = [{"name": "export"}]
    return {"resourceType": "CapabilityStatement", "rest": [rest]}


def _ehr(statement: dict[str, Any] | None, requests: list[httpx.Request]) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        if statement is None:
            raise httpx.ConnectError("refused", request=request)
        if request.url.path.endswith("/metadata"):
            return httpx.Response(200, json=statement)
        if request.url.path.endswith("/smart-configuration"):
            return httpx.Response(200, json={"token_endpoint": "https://ehr.test/oauth2/token"})
        return httpx.Response(404)

    return httpx.MockTransport(handle)


def test_a_capability_gone_since_the_last_probe_is_recorded_with_when(db: Session) -> None:
    facility = make_facility(db)
    requests: list[httpx.Request] = []
    probe_facility(
        db, facility, make_client(_ehr(_statement(["_lastUpdated", "patient"], True), requests)), now=T0
    )
    later = T0 + timedelta(hours=1)

    outcome = probe_facility(
        db, facility, make_client(_ehr(_statement(["patient"], False), requests)), now=later
    )

    assert outcome.ok
    assert outcome.gone == ("Observation:_lastUpdated", "system:$export/system")
    events = db.scalars(select(CapabilityEvent).where(CapabilityEvent.facility_id == facility.id)).all()
    assert {(e.capability, e.change, e.detected_at) for e in events} == {
        ("Observation:_lastUpdated", "gone", later),
        ("system:$export/system", "gone", later),
    }
    # Nothing is left to find Observation changes by: the type is recorded with no strategy.
    assert load_strategies(db, facility.id) == {}
    # The CapabilityStatement and SMART configuration are public: no token was asked for or sent.
    assert all("authorization" not in r.headers for r in requests)
    assert not any(r.url.path.endswith("/token") for r in requests)


def test_a_capability_back_again_is_recorded_too(db: Session) -> None:
    facility = make_facility(db)
    client_without = make_client(_ehr(_statement(["patient"], False), []))
    probe_facility(db, facility, client_without, now=T0)

    with_it = make_client(_ehr(_statement(["patient", "_lastUpdated"], False), []))
    outcome = probe_facility(db, facility, with_it, now=T0)

    assert outcome.gone == ()
    events = db.scalars(select(CapabilityEvent).where(CapabilityEvent.facility_id == facility.id)).all()
    assert [(e.capability, e.change) for e in events] == [("Observation:_lastUpdated", "back")]


def test_a_failed_probe_is_recorded_and_keeps_the_last_strategies(db: Session) -> None:
    facility = make_facility(db)
    probe_facility(db, facility, make_client(_ehr(_statement(["_lastUpdated"], False), [])), now=T0)
    later = T0 + timedelta(minutes=5)

    outcome = probe_facility(db, facility, make_client(_ehr(None, []), attempts=1), now=later)

    assert not outcome.ok
    assert outcome.reason == "ehr_transport"
    row = db.get(FacilityCapabilities, facility.id)
    assert row is not None
    assert (row.ok, row.reason, row.probed_at, row.last_ok_at) == (False, "ehr_transport", later, T0)
    assert load_strategies(db, facility.id) == {"Observation": "last-updated"}
    assert db.scalars(select(CapabilityEvent)).all() == []


def test_a_body_that_is_no_capability_statement_is_a_failed_probe(db: Session) -> None:
    facility = make_facility(db)

    outcome = probe_facility(db, facility, make_client(_ehr({"resourceType": "Bundle"}, [])), now=T0)

    assert (outcome.ok, outcome.reason) == (False, "unparseable_resource")


def _flaky_smart(statement: dict[str, Any], smart_status: int) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/metadata"):
            return httpx.Response(200, json=statement)
        return httpx.Response(smart_status, json={})

    return httpx.MockTransport(handle)


def test_a_smart_configuration_that_fails_transiently_fails_the_probe_and_records_nothing_gone(
    db: Session,
) -> None:
    facility = make_facility(db)
    statement = _statement(["_lastUpdated"], False)
    probe_facility(db, facility, make_client(_ehr(statement, [])), now=T0)

    outcome = probe_facility(db, facility, make_client(_flaky_smart(statement, 503), attempts=1), now=T0)

    assert (outcome.ok, outcome.reason) == (False, "ehr_unavailable")
    assert db.scalars(select(CapabilityEvent)).all() == []


def test_a_server_without_a_smart_configuration_is_probed_and_says_so(db: Session) -> None:
    facility = make_facility(db)

    outcome = probe_facility(db, facility, make_client(_flaky_smart(_statement([], False), 404)), now=T0)

    assert outcome.ok
    assert outcome.capabilities is not None
    assert not outcome.capabilities.smart
