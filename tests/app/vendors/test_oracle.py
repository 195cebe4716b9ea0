"""Oracle Health payload shapes from EHR-FACTS §7: split and paired blood pressure, ``usual`` names with a
given name only, RxNorm plus tenant synonyms, contained Medications, absolute references."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from app.vendors import adapter_for

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
BASE = "https://fhir-ehr.cerner.example/r4/ec2458f2-1e24-41c8-b71b-0e701af7583d"
SYNONYM = "https://fhir.cerner.com/ec2458f2-1e24-41c8-b71b-0e701af7583d/synonym"
PROPRIETARY = "https://fhir.cerner.com/ec2458f2-1e24-41c8-b71b-0e701af7583d/codeSet/72"


def _half(id_: str, loinc: str, value: int, *, effective: str = "2026-02-20T14:05:00.000Z") -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": id_,
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "vital-signs",
                    }
                ]
            }
        ],
        "code": {
            "coding": [
                {"system": PROPRIETARY, "code": "703501" if loinc == "8480-6" else "703516"},
                {"system": "http://loinc.org", "code": loinc},
            ]
        },
        "subject": {"reference": "Patient/12724066"},
        "encounter": {"reference": "Encounter/97953477"},
        "effectiveDateTime": effective,
        "valueQuantity": {
            "value": value,
            "unit": "mmHg",
            "system": "http://unitsofmeasure.org",
            "code": "mm[Hg]",
        },
    }


def _panel(id_: str, systolic: int, diastolic: int) -> dict[str, Any]:
    def component(loinc: str, value: int) -> dict[str, Any]:
        return {
            "code": {"coding": [{"system": "http://loinc.org", "code": loinc}]},
            "valueQuantity": {
                "value": value,
                "unit": "mmHg",
                "system": "http://unitsofmeasure.org",
                "code": "mm[Hg]",
            },
        }

    return {
        "resourceType": "Observation",
        "id": id_,
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
        "subject": {"reference": "Patient/12724066"},
        "encounter": {"reference": "Encounter/97953477"},
        "effectiveDateTime": "2026-02-20T14:05:00.000Z",
        "component": [component("8480-6", systolic), component("8462-4", diastolic)],
    }


def test_split_systolic_and_diastolic_pair_into_one_reading() -> None:
    readings = adapter_for("oracle").pair_blood_pressure(
        [_half("SYS-1", "8480-6", 128), _half("DIA-1", "8462-4", 82)]
    )
    assert readings == [
        {
            "subject": "Patient/12724066",
            "effective": "2026-02-20T14:05:00.000Z",
            "encounter": "Encounter/97953477",
            "systolic": 128,
            "diastolic": 82,
            "unit": "mm[Hg]",
            "source_ids": ["SYS-1", "DIA-1"],
        }
    ]


def test_halves_taken_at_the_same_instant_pair_whatever_the_spelling() -> None:
    readings = adapter_for("oracle").pair_blood_pressure(
        [
            _half("SYS-1", "8480-6", 128, effective="2026-02-20T14:05:00Z"),
            _half("DIA-1", "8462-4", 82, effective="2026-02-20T09:05:00.000-05:00"),
        ]
    )
    assert [(r["systolic"], r["diastolic"]) for r in readings] == [(128, 82)]


def test_halves_at_different_times_are_not_paired() -> None:
    readings = adapter_for("oracle").pair_blood_pressure(
        [
            _half("SYS-1", "8480-6", 128),
            _half("DIA-1", "8462-4", 82, effective="2026-02-20T15:05:00.000Z"),
        ]
    )
    assert [(r["systolic"], r["diastolic"]) for r in readings] == [(128, None), (None, 82)]


def test_paired_panel_gives_one_reading() -> None:
    readings = adapter_for("oracle").pair_blood_pressure([_panel("SYS-1-DIA-1", 128, 82)])
    assert [(r["systolic"], r["diastolic"], r["unit"], r["source_ids"]) for r in readings] == [
        (128, 82, "mm[Hg]", ["SYS-1-DIA-1"])
    ]


def test_halves_of_a_panel_seen_in_the_same_batch_are_not_counted_twice() -> None:
    readings = adapter_for("oracle").pair_blood_pressure(
        [_panel("SYS-1-DIA-1", 128, 82), _half("SYS-1", "8480-6", 128), _half("DIA-1", "8462-4", 82)]
    )
    assert len(readings) == 1
    assert readings[0]["source_ids"] == ["SYS-1-DIA-1", "SYS-1", "DIA-1"]


def test_split_half_summary_names_its_role_and_loinc_behind_the_proprietary_code() -> None:
    summary = adapter_for("oracle").normalize(_half("SYS-1", "8480-6", 128), now=NOW).summary
    assert summary["bp_role"] == "systolic"
    assert summary["loinc"] == "8480-6"
    assert (summary["code_system"], summary["code"]) == ("http://loinc.org", "8480-6")
    assert (summary["value"], summary["ucum_code"], summary["category"]) == (128, "mm[Hg]", "vital-signs")


def test_panel_summary_carries_both_values() -> None:
    summary = adapter_for("oracle").normalize(_panel("SYS-1-DIA-1", 128, 82), now=NOW).summary
    assert (summary["bp_role"], summary["systolic"], summary["diastolic"]) == ("panel", 128, 82)
    assert summary["ucum_code"] == "mm[Hg]"


def test_usual_name_with_given_only_is_the_preferred_name() -> None:
    patient = {
        "resourceType": "Patient",
        "id": "12724066",
        "name": [
            {
                "use": "official",
                "text": "SMART, NANCY",
                "family": "SMART",
                "given": ["NANCY"],
                "period": {"start": "2012-01-01T00:00:00.000Z"},
            },
            {"use": "usual", "text": "Nan", "given": ["Nan"]},
        ],
    }
    summary = adapter_for("oracle").normalize(patient, now=NOW).summary
    assert summary["preferred_name"] == "Nan"
    assert summary["official_name"] == "SMART, NANCY"


def test_rxnorm_is_preferred_over_the_tenant_synonym() -> None:
    request = {
        "resourceType": "MedicationRequest",
        "id": "313757847",
        "status": "active",
        "intent": "order",
        "medicationCodeableConcept": {
            "coding": [
                {"system": SYNONYM, "code": "2748032", "display": "Tylenol Extra Strength"},
                {
                    "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                    "code": "209459",
                    "display": "Acetaminophen 500 MG Oral Tablet [Tylenol]",
                },
            ],
            "text": "Tylenol Extra Strength",
        },
        "subject": {"reference": "Patient/12724066"},
        "authoredOn": "2026-02-20T14:05:00.000Z",
    }
    summary = adapter_for("oracle").normalize(request, now=NOW).summary
    assert summary["medication_code"] == "209459"
    assert summary["medication_system"] == "http://www.nlm.nih.gov/research/umls/rxnorm"
    assert summary["medication_display"] == "Acetaminophen 500 MG Oral Tablet [Tylenol]"
    assert summary["medication_ref"] is None


def test_contained_medication_is_resolved_inline_and_not_fetched() -> None:
    request = {
        "resourceType": "MedicationRequest",
        "id": "313757848",
        "contained": [
            {
                "resourceType": "Medication",
                "id": "med1",
                "code": {
                    "coding": [
                        {"system": SYNONYM, "code": "2750001"},
                        {
                            "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                            "code": "314076",
                            "display": "lisinopril 10 MG Oral Tablet",
                        },
                    ]
                },
            }
        ],
        "status": "active",
        "intent": "order",
        "medicationReference": {"reference": "#med1"},
        "subject": {"reference": "Patient/12724066"},
    }
    normalized = adapter_for("oracle").normalize(request, now=NOW)
    assert normalized.references == []
    assert (normalized.summary["medication_code"], normalized.summary["medication_ref"]) == ("314076", None)


def test_absolute_references_are_summarized_as_type_and_id() -> None:
    observation = _half("SYS-1", "8480-6", 128)
    observation["subject"] = {"reference": f"{BASE}/Patient/12724066"}
    summary = adapter_for("oracle").normalize(observation, now=NOW).summary
    assert summary["subject"] == "Patient/12724066"
