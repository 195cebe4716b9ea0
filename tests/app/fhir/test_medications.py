"""Every MedicationRequest resolves to a code and its system, or says why not; code, system and display
always come from one place. Shapes from the FHIR R4 examples (medicationrequest0301/0302, Medication
med0301...) and EHR-FACTS §7 (Oracle tenant synonyms, Epic separate Medications, IV mixtures)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from app.fhir.normalize import normalize_resource
from app.fhir.normalize.medications import UNRESOLVED

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
ORACLE_SYNONYMS = "https://fhir.cerner.com/ec2458f2-1e24-41c8-b71b-0e701af7583d/synonym"


def _request(**medication: Any) -> dict[str, Any]:
    return {
        "resourceType": "MedicationRequest",
        "id": "medrx0302",
        "status": "active",
        "intent": "order",
        "subject": {"reference": "Patient/pat1", "display": "Donald Duck"},
        "authoredOn": "2015-01-15",
        **medication,
    }


def _fields(resource: dict[str, Any]) -> tuple[Any, ...]:
    s = normalize_resource(resource, now=NOW).summary
    return (
        s["medication_code"],
        s["medication_system"],
        s["medication_display"],
        s["medication_ref"],
        s["medication_unresolved"],
    )


VANCOMYCIN_IV: dict[str, Any] = {
    "resourceType": "Medication",
    "id": "med-iv",
    "code": {"text": "vancomycin 1,250 mg in sodium chloride 0.9 % 250 mL IVPB"},
    "form": {"coding": [{"system": "http://snomed.info/sct", "code": "385219001", "display": "Injection"}]},
    "ingredient": [
        {
            "itemCodeableConcept": {
                "coding": [{"system": RXNORM, "code": "11124", "display": "vancomycin"}],
            },
            "isActive": True,
            "strength": {
                "numerator": {"value": 1250, "system": "http://unitsofmeasure.org", "code": "mg"},
                "denominator": {"value": 250, "system": "http://unitsofmeasure.org", "code": "mL"},
            },
        },
        {
            "itemCodeableConcept": {
                "coding": [{"system": RXNORM, "code": "9863", "display": "sodium chloride"}],
            },
            "isActive": False,
        },
    ],
}


def test_a_codeable_concept_prefers_rxnorm_behind_a_tenant_synonym() -> None:
    request = _request(
        medicationCodeableConcept={
            "coding": [
                {"system": ORACLE_SYNONYMS, "code": "2748018", "display": "amLODIPine 5 mg oral tablet"},
                {"system": RXNORM, "code": "197361", "display": "amlodipine 5 MG Oral Tablet"},
            ],
            "text": "amLODIPine 5 mg oral tablet",
        }
    )
    assert _fields(request) == ("197361", RXNORM, "amlodipine 5 MG Oral Tablet", None, None)


def test_a_contained_medication_resolves_inline() -> None:
    request = _request(
        contained=[
            {
                "resourceType": "Medication",
                "id": "med0301",
                "code": {
                    "coding": [{"system": RXNORM, "code": "1049221", "display": "oxycodone 5 MG Oral Tablet"}]
                },
            }
        ],
        medicationReference={"reference": "#med0301", "display": "Oxycodone tablet"},
    )
    assert _fields(request) == ("1049221", RXNORM, "oxycodone 5 MG Oral Tablet", None, None)


def test_an_ingredient_only_contained_medication_says_so_and_lists_its_ingredients() -> None:
    request = _request(contained=[{**VANCOMYCIN_IV, "id": "iv1"}], medicationReference={"reference": "#iv1"})
    summary = normalize_resource(request, now=NOW).summary
    assert _fields(request) == (
        None,
        None,
        "vancomycin 1,250 mg in sodium chloride 0.9 % 250 mL IVPB",
        None,
        "ingredients_only",
    )
    assert [(i["code"], i["system"], i["is_active"]) for i in summary["medication_ingredients"]] == [
        ("11124", RXNORM, True),
        ("9863", RXNORM, False),
    ]


def test_a_separate_ingredient_only_medication_says_so() -> None:
    summary = normalize_resource(VANCOMYCIN_IV, now=NOW).summary
    assert (summary["code"], summary["unresolved"]) == (None, "ingredients_only")
    assert [i["display"] for i in summary["ingredients"]] == ["vancomycin", "sodium chloride"]


def test_ingredients_without_a_text_name_the_medication_by_its_ingredients() -> None:
    medication = {key: value for key, value in VANCOMYCIN_IV.items() if key != "code"}
    assert normalize_resource(medication, now=NOW).summary["display"] == "vancomycin + sodium chloride"


def test_a_display_only_reference_keeps_its_display_and_says_why() -> None:
    request = _request(medicationReference={"display": "Amoxicillin 250mg/5ml Suspension"})
    assert _fields(request) == (None, None, "Amoxicillin 250mg/5ml Suspension", None, "display_only")


def test_a_text_only_concept_is_display_only() -> None:
    request = _request(medicationCodeableConcept={"text": "Compounded magic mouthwash 1:1:1"})
    assert _fields(request)[2:] == ("Compounded magic mouthwash 1:1:1", None, "display_only")


def test_a_code_without_a_system_is_kept_and_flagged() -> None:
    request = _request(medicationCodeableConcept={"coding": [{"code": "197361", "display": "amlodipine"}]})
    assert _fields(request) == ("197361", None, "amlodipine", None, "code_without_system")


def test_a_separate_medication_is_left_to_the_view_with_the_references_display() -> None:
    request = _request(medicationReference={"reference": "Medication/eABC.1", "display": "lisinopril 10 MG"})
    assert _fields(request) == (None, None, "lisinopril 10 MG", "Medication/eABC.1", None)


@pytest.mark.parametrize(
    ("medication", "reason"),
    [
        ({}, "no_medication"),
        ({"medicationReference": {"reference": "#missing"}}, "contained_not_found"),
        (
            {"medicationReference": {"reference": "urn:uuid:7d2a6c0e-1b4f-4c7b-9a57-0b6c7f1e2d3a"}},
            "unreadable_reference",
        ),
        ({"medicationReference": {"reference": "Substance/s1"}}, "unreadable_reference"),
        ({"medicationCodeableConcept": {}}, "no_code"),
    ],
)
def test_every_other_shape_names_its_reason(medication: dict[str, Any], reason: str) -> None:
    assert _fields(_request(**medication))[4] == reason
    assert reason in UNRESOLVED


def test_readme_lists_exactly_the_unresolved_reasons() -> None:
    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text(encoding="utf-8")
    table = readme.split("<!-- medication-unresolved:start -->")[1].split(
        "<!-- medication-unresolved:end -->"
    )[0]
    assert re.findall(r"^\| `([a-z_]+)` \|", table, flags=re.M) == list(UNRESOLVED)
