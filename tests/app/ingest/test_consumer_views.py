"""The consumer views over what the pipeline's one write path (``Pipeline.store``) kept, in real
Postgres: statuses are visible, medications resolve or say why, Condition onset of every type is kept."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from app.fhir.normalize.medications import UNRESOLVED
from app.ingest.pipeline.observed import Observed
from app.ingest.pipeline.references import ReferenceCache
from app.ingest.pipeline.service import Pipeline
from app.vendors.registry import adapter_for
from tests.app.fhir.test_medications import RXNORM, VANCOMYCIN_IV
from tests.bp_cases import half
from tests.conftest import make_facility
from tests.ehr_mocks import make_client

T0 = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def _store(db: Session, *bodies: dict[str, Any], vendor: str = "epic", seconds: int = 0) -> None:
    adapter = adapter_for(vendor)
    never = httpx.MockTransport(lambda request: httpx.Response(500))  # storing never reads the EHR
    pipeline = Pipeline(make_client(never), adapter, ReferenceCache(), concurrency=1)
    at = T0 + timedelta(seconds=seconds)
    items = [
        Observed(
            "fac-1",
            str(b["resourceType"]),
            str(b["id"]),
            b,
            at,
            summary=adapter.normalize(b, now=T0).summary,
        )
        for b in bodies
    ]
    pipeline.store(db, items)


def _gone(db: Session, resource_type: str, resource_id: str, *, seconds: int) -> None:
    never = httpx.MockTransport(lambda request: httpx.Response(500))
    pipeline = Pipeline(make_client(never), adapter_for("epic"), ReferenceCache(), concurrency=1)
    pipeline.store(db, [Observed("fac-1", resource_type, resource_id, None, T0 + timedelta(seconds=seconds))])


# -- status -------------------------------------------------------------------------------------------


def test_observations_show_their_status_entered_in_error_included(db: Session) -> None:
    make_facility(db)
    _store(
        db,
        half("SYS-1", "systolic", 128),
        half("SYS-2", "systolic", 182, status="entered-in-error"),
        half("SYS-3", "systolic", 120, status="cancelled"),
        vendor="oracle",
    )
    rows: dict[str, str] = dict(db.execute(text("SELECT observation_id, status FROM observations")).all())
    assert rows == {"SYS-1": "final", "SYS-2": "entered-in-error", "SYS-3": "cancelled"}


def test_allergies_show_their_verification_status_entered_in_error_included(db: Session) -> None:
    make_facility(db)
    allergy = {
        "resourceType": "AllergyIntolerance",
        "id": "allergy-1",
        "clinicalStatus": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical",
                    "code": "active",
                }
            ]
        },
        "verificationStatus": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification",
                    "code": "entered-in-error",
                    "display": "Entered in Error",
                }
            ]
        },
        "code": {"coding": [{"system": RXNORM, "code": "7980", "display": "Penicillin G"}]},
        "patient": {"reference": "Patient/example"},
    }
    _store(db, allergy)
    row = db.execute(text("SELECT allergy_id, clinical_status, verification_status FROM allergies")).one()
    assert tuple(row) == ("allergy-1", "active", "entered-in-error")


# -- medications --------------------------------------------------------------------------------------

LISINOPRIL = {
    "resourceType": "Medication",
    "id": "eLisinopril",
    "code": {
        "coding": [
            {
                "system": "urn:oid:1.2.840.114350.1.13.0.1.7.2.698288",
                "code": "11037",
                "display": "LISINOPRIL 10 MG",
            },
            {"system": RXNORM, "code": "314076", "display": "lisinopril 10 MG Oral Tablet"},
        ],
        "text": "lisinopril 10 MG tablet",
    },
}


def _request(request_id: str, **medication: Any) -> dict[str, Any]:
    return {
        "resourceType": "MedicationRequest",
        "id": request_id,
        "status": "active",
        "intent": "order",
        "subject": {"reference": "Patient/example"},
        "authoredOn": "2026-11-30",
        **medication,
    }


def _medications(db: Session) -> dict[str, tuple[Any, ...]]:
    rows = db.execute(
        text(
            "SELECT medication_request_id, medication_code, medication_system, medication_display,"
            " medication_unresolved FROM medication_requests"
        )
    ).all()
    return {r[0]: tuple(r[1:]) for r in rows}


def test_a_separate_medication_gives_code_system_and_display_together(db: Session) -> None:
    make_facility(db)
    request = _request(
        "mr1", medicationReference={"reference": "Medication/eLisinopril", "display": "Zestril"}
    )
    _store(db, request, LISINOPRIL)
    assert _medications(db) == {"mr1": ("314076", RXNORM, "lisinopril 10 MG Oral Tablet", None)}


def test_a_medication_not_stored_yet_is_unresolved_with_the_references_display(db: Session) -> None:
    make_facility(db)
    _store(
        db, _request("mr1", medicationReference={"reference": "Medication/eLisinopril", "display": "Zestril"})
    )
    assert _medications(db) == {"mr1": (None, None, "Zestril", "medication_not_stored")}


def test_a_deleted_medication_no_longer_resolves(db: Session) -> None:
    make_facility(db)
    _store(db, _request("mr1", medicationReference={"reference": "Medication/eLisinopril"}), LISINOPRIL)
    _gone(db, "Medication", "eLisinopril", seconds=5)
    assert _medications(db)["mr1"][3] == "medication_not_stored"


def test_an_ingredient_only_medication_is_unresolved_with_its_ingredients(db: Session) -> None:
    make_facility(db)
    _store(db, _request("mr1", medicationReference={"reference": "Medication/med-iv"}), VANCOMYCIN_IV)
    row = db.execute(
        text("SELECT medication_unresolved, medication_ingredients FROM medication_requests")
    ).one()
    assert row.medication_unresolved == "ingredients_only"
    assert [(i["code"], i["display"]) for i in row.medication_ingredients] == [
        ("11124", "vancomycin"),
        ("9863", "sodium chloride"),
    ]


SHAPES: list[dict[str, Any]] = [
    {"medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "197361"}]}},
    {"medicationCodeableConcept": {"text": "magic mouthwash"}},
    {"medicationCodeableConcept": {"coding": [{"code": "197361"}]}},
    {"medicationReference": {"display": "Amoxicillin 250mg/5ml Suspension"}},
    {"medicationReference": {"reference": "Medication/eLisinopril"}},
    {"medicationReference": {"reference": "Medication/never-sent", "display": "x"}},
    {"medicationReference": {"reference": "Medication/med-iv"}},
    {"medicationReference": {"reference": "#nowhere"}},
    {"medicationReference": {"reference": "urn:uuid:7d2a6c0e-1b4f-4c7b-9a57-0b6c7f1e2d3a"}},
    {"contained": [{**VANCOMYCIN_IV, "id": "iv"}], "medicationReference": {"reference": "#iv"}},
    {},
]


@pytest.mark.parametrize("shape", SHAPES, ids=range(len(SHAPES)))
def test_every_request_has_a_code_and_system_or_a_documented_reason(
    db: Session, shape: dict[str, Any]
) -> None:
    make_facility(db)
    _store(db, _request("mr1", **shape), LISINOPRIL, VANCOMYCIN_IV)
    code, system, _, reason = _medications(db)["mr1"]
    assert (code is not None and system is not None) or reason in UNRESOLVED
    assert reason is None or reason in UNRESOLVED


# -- Condition onset ----------------------------------------------------------------------------------


def test_condition_onset_age_and_period_reach_the_view_typed(db: Session) -> None:
    make_facility(db)
    base = {
        "resourceType": "Condition",
        "subject": {"reference": "Patient/example"},
        "code": {
            "coding": [
                {"system": "http://snomed.info/sct", "code": "368009", "display": "Heart valve disorder"}
            ]
        },
    }
    _store(
        db,
        {
            **base,
            "id": "age",
            "onsetAge": {"value": 52.5, "unit": "years", "system": "http://unitsofmeasure.org", "code": "a"},
        },
        {**base, "id": "period", "onsetPeriod": {"start": "2013-03-11", "end": "2013-03-20"}},
    )
    rows = {
        r.condition_id: r
        for r in db.execute(
            text(
                "SELECT condition_id, onset, onset_type, onset_start, onset_end, onset_age_low,"
                " onset_age_high, onset_age_unit FROM conditions"
            )
        )
    }
    age, period = rows["age"], rows["period"]
    assert (age.onset, age.onset_type, age.onset_age_low, age.onset_age_high, age.onset_age_unit) == (
        "52.5 years",
        "Age",
        Decimal("52.5"),
        Decimal("52.5"),
        "a",
    )
    assert (period.onset, period.onset_type, period.onset_start, period.onset_end) == (
        "2013-03-11",
        "Period",
        "2013-03-11",
        "2013-03-20",
    )
