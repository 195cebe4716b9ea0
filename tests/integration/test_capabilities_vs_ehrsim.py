"""The capability probe against every ehrsim profile over real HTTP: what each CapabilityStatement and
SMART configuration offers, and the change-detection strategy each resource type gets from it."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import ResourceCapabilities
from app.reconcile.probe import load_strategies, probe_facility
from tests.conftest import make_facility
from tests.integration.conftest import Sim

CLINICAL = ("Observation", "Condition", "Encounter", "MedicationRequest", "AllergyIntolerance")

# What each profile's types get (a type left out of a row gets the row's "*").
EXPECTED: dict[str, dict[str, str | None]] = {
    "generic": {"*": "last-updated"},
    "hapi": {"*": "last-updated"},
    "medplum": {"*": "last-updated"},
    # Patient is found by the cohort re-crawl; Medication has no date, no _lastUpdated and no $export.
    "epic": {"*": "created-date", "Medication": None},
    "oracle": {"*": "patient-last-updated", "Patient": "created-date", "Medication": "bulk-since"},
    "athena": {"*": "patient-last-updated", "Patient": "created-date", "Medication": None},
    "meditech": {"*": "bulk-since"},
}


@pytest.mark.parametrize("profile", sorted(EXPECTED))
def test_probe_records_capabilities_and_the_strategy_of_each_type(
    db: Session, sim: Sim, profile: str
) -> None:
    facility = make_facility(db, profile, base_url=sim.base(profile))
    facility.vendor = profile
    db.flush()

    outcome = probe_facility(db, facility, sim.client(profile), now=datetime.now(UTC))

    assert outcome.ok, outcome.reason
    strategies = load_strategies(db, profile)
    rows = db.scalars(select(ResourceCapabilities).where(ResourceCapabilities.facility_id == profile)).all()
    expected = EXPECTED[profile]
    assert {r.resource_type: r.strategy for r in rows} == {
        r.resource_type: expected.get(r.resource_type, expected["*"]) for r in rows
    }
    assert strategies == {r.resource_type: r.strategy for r in rows if r.strategy is not None}
    assert "Observation" in strategies
    assert all(r.strategy_reason for r in rows)


def test_probe_finds_what_each_vendor_really_has(db: Session, sim: Sim) -> None:
    found = {}
    for profile in ("epic", "oracle", "meditech", "medplum", "generic", "athena"):
        facility = make_facility(db, profile, base_url=sim.base(profile))
        facility.vendor = profile
        db.flush()
        outcome = probe_facility(db, facility, sim.client(profile), now=datetime.now(UTC))
        assert outcome.capabilities is not None
        found[profile] = outcome.capabilities

    epic, oracle, meditech = found["epic"], found["oracle"], found["meditech"]
    # Epic: _lastupdated (its spelling) on DocumentReference only, patient required, no Subscription.
    assert epic.types["DocumentReference"].last_updated
    assert epic.types["DocumentReference"].param("_lastUpdated") == "_lastupdated"
    assert not epic.types["Observation"].last_updated
    assert "patient" in epic.types["Observation"].required_params
    assert {"date", "issued"} <= epic.types["Observation"].search_params
    assert not epic.subscription
    assert not epic.export
    assert epic.smart
    assert epic.token_endpoint is not None
    # Oracle: _lastUpdated only with patient; group $export only.
    assert oracle.types["Observation"].last_updated
    assert "patient" in oracle.types["Observation"].required_params
    assert oracle.export == {"group"}
    # MEDITECH: no _lastUpdated anywhere; patient and group $export.
    assert not any(t.last_updated for t in meditech.types.values())
    assert meditech.export == {"patient", "group"}
    # Subscription and its operations where the vendor has them.
    assert found["generic"].subscription
    assert found["generic"].subscription_status
    assert found["generic"].subscription_events
    assert found["generic"].export == {"system", "patient", "group"}
    assert found["medplum"].subscription
    assert not found["medplum"].subscription_status
    assert found["athena"].subscription
    assert not found["athena"].subscription_events
