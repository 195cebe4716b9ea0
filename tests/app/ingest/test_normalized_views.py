"""From fetched vendor payloads to the consumer views, through the real drain path and real Postgres;
the EHR is an httpx.MockTransport serving payloads written from EHR-FACTS.md §7."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.orm import Session

from app.ingest.drain import claim, process_batch
from app.settings import Settings
from tests.conftest import make_facility
from tests.ehr_mocks import make_client

MRN_SYSTEM = "urn:oid:1.2.840.114350.1.13.0.1.7.5.737384.14"
LU = "2026-11-24T10:00:00Z"


def _meta(body: dict[str, Any]) -> dict[str, Any]:
    return {**body, "meta": {"versionId": "1", "lastUpdated": LU}}


PATIENT = {
    "resourceType": "Patient",
    "id": "p1",
    "identifier": [{"system": MRN_SYSTEM, "value": "  E1234  "}],
    "name": [
        {"use": "official", "family": "Doe", "given": ["Jane"]},
        {"use": "usual", "family": "Doe", "given": ["Jane"]},
    ],
    "birthDate": "1980-05",
}
MEDICATION_REQUEST = {
    "resourceType": "MedicationRequest",
    "id": "mr1",
    "status": "active",
    "intent": "order",
    "subject": {"reference": "Patient/p1"},
    "authoredOn": "2019-05-28",
    "medicationReference": {"reference": "Medication/m1"},
}
MEDICATION = {
    "resourceType": "Medication",
    "id": "m1",
    "code": {
        "coding": [
            {
                "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                "code": "197361",
                "display": "amlodipine 5 MG Oral Tablet",
            }
        ]
    },
}


def _bp(obs_id: str, code: str, value: float) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": obs_id,
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2026-11-24T09:30:00Z",
        "valueQuantity": {"value": value, "unit": "mmHg"},
    }


def _serve(resources: dict[str, dict[str, Any]], seen: list[str]) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/token"):
            return httpx.Response(200, json={"access_token": "t", "expires_in": 300})
        seen.append(str(request.url.copy_with(scheme="https", host="ehr.test")).split("/fhir/")[1])
        path = request.url.path.removeprefix("/fhir/")
        if "_id" in request.url.params:
            rtype = path
            ids = request.url.params["_id"].split(",")
            entries = [
                {"resource": _meta(resources[f"{rtype}/{i}"]), "search": {"mode": "match"}}
                for i in ids
                if f"{rtype}/{i}" in resources
            ]
            return httpx.Response(200, json={"resourceType": "Bundle", "type": "searchset", "entry": entries})
        if path in resources:
            return httpx.Response(200, json=_meta(resources[path]))
        return httpx.Response(404, json={"resourceType": "OperationOutcome"})

    return httpx.MockTransport(handler)


def _queue(db: Session, refs: list[str]) -> None:
    for ref in refs:
        rtype, rid = ref.split("/")
        db.execute(
            text(
                "INSERT INTO inbox (facility_id, dedup_key, focus_type, focus_id)"
                " VALUES ('fac-1', :k, :t, :i)"
            ),
            {"k": ref, "t": rtype, "i": rid},
        )


def _drain(db: Session, vendor: str, resources: dict[str, dict[str, Any]], refs: list[str]) -> list[str]:
    facility = make_facility(db)
    facility.vendor = vendor
    facility.mrn_system = MRN_SYSTEM
    db.flush()
    _queue(db, refs)
    seen: list[str] = []
    rows = claim(db, "fac-1", limit=50, lease=timedelta(minutes=5))
    process_batch(db, facility, make_client(_serve(resources, seen)), rows, Settings())
    return seen


def test_epic_patient_has_trimmed_mrn_and_preferred_name(db: Session) -> None:
    _drain(db, "epic", {"Patient/p1": PATIENT}, ["Patient/p1"])
    row = db.execute(text("SELECT mrn, preferred_name, birth_date FROM patients")).one()
    assert tuple(row) == ("E1234", "Jane Doe", "1980-05")
    raw = db.execute(text("SELECT resource FROM current_resources")).scalar_one()
    assert raw["identifier"][0]["value"] == "  E1234  "  # the raw resource is kept as sent


def test_referenced_medication_is_fetched_and_resolved_in_the_view(db: Session) -> None:
    seen = _drain(
        db,
        "epic",
        {"MedicationRequest/mr1": MEDICATION_REQUEST, "Medication/m1": MEDICATION},
        ["MedicationRequest/mr1"],
    )
    assert "Medication/m1" in seen
    row = db.execute(
        text("SELECT medication_code, medication_system, authored_on FROM medication_requests")
    ).one()
    assert tuple(row) == ("197361", "http://www.nlm.nih.gov/research/umls/rxnorm", "2019-05-28")


def test_split_blood_pressure_readings_become_one_reading(db: Session) -> None:
    resources = {"Observation/sys": _bp("sys", "8480-6", 128), "Observation/dia": _bp("dia", "8462-4", 84)}
    _drain(db, "oracle", resources, ["Observation/sys", "Observation/dia"])
    row = db.execute(
        text("SELECT subject, systolic, diastolic, unit, source_ids FROM blood_pressure_readings")
    ).one()
    assert (row.subject, float(row.systolic), float(row.diastolic), row.unit) == (
        "Patient/p1",
        128,
        84,
        "mm[Hg]",
    )
    assert sorted(row.source_ids) == ["dia", "sys"]
    ucum = db.execute(text("SELECT DISTINCT ucum_code FROM observations")).scalar_one()
    assert ucum == "mm[Hg]"


def test_generic_server_is_read_in_one_batched_search_and_missing_ids_read_alone(db: Session) -> None:
    resources = {f"Observation/o{i}": _bp(f"o{i}", "8480-6", 120 + i) for i in range(5)}
    seen = _drain(db, "generic", resources, [*resources, "Observation/gone"])
    assert len([s for s in seen if "_id=" in s]) == 1
    assert "Observation/gone" in seen
    rows: dict[str, bool] = dict(db.execute(text("SELECT resource_id, deleted FROM current_resources")).all())
    assert rows == {f"o{i}": False for i in range(5)}  # the 404 is read again before it is a tombstone
    pending = db.execute(text("SELECT status, reason FROM inbox WHERE focus_id = 'gone'")).one()
    assert tuple(pending) == ("pending", "not_found_unconfirmed")


def test_epic_is_never_batch_read(db: Session) -> None:
    resources = {f"Observation/o{i}": _bp(f"o{i}", "8480-6", 120) for i in range(3)}
    seen = _drain(db, "epic", resources, list(resources))
    assert not [s for s in seen if "_id=" in s]
    assert len(seen) == 3
