"""Vendor-neutral normalization: summaries, UCUM derivation, data-absent reasons, date precision and
lenient validation. Fixtures follow EHR-FACTS §7 and the FHIR R4 / US Core examples."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from app.fhir.normalize import SummaryOptions, normalize_resource, ucum_code
from app.fhir.normalize.names import ISO21090_PREFERRED

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
UCUM = "http://unitsofmeasure.org"
DAR = "http://hl7.org/fhir/StructureDefinition/data-absent-reason"


def _observation(**fields: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2026-02-20T14:05:00Z",
        **fields,
    }


def _patient(**fields: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": "p1", **fields}


# -- units -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("unit", "expected"),
    [
        ("mmHg", "mm[Hg]"),
        ("mm Hg", "mm[Hg]"),
        ("bpm", "/min"),
        ("beats/min", "/min"),
        ("kg", "kg"),
        ("cm", "cm"),
        ("%", "%"),
        ("mg/dL", "mg/dL"),
        ("°C", "Cel"),
        ("Cel", "Cel"),
        ("µg", "ug"),  # the micro sign
        ("μg", "ug"),  # the Greek mu
    ],
)
def test_ucum_code_is_derived_from_a_plain_unit(unit: str, expected: str) -> None:
    assert ucum_code({"value": 1, "unit": unit}) == expected


def test_ucum_code_is_taken_verbatim_when_the_system_is_ucum() -> None:
    assert ucum_code({"value": 37, "unit": "degrees C", "system": UCUM, "code": "Cel"}) == "Cel"


def test_a_code_from_another_unit_system_is_not_taken_for_ucum() -> None:
    quantity = {"value": 72, "unit": "beats/min", "system": "urn:oid:1.2.3.4", "code": "BPM-77"}
    assert ucum_code(quantity) == "/min"


def test_an_unknown_unit_has_no_ucum_code() -> None:
    assert ucum_code({"value": 3, "unit": "scoops"}) is None


def test_observation_summary_carries_unit_as_sent_and_derived_ucum() -> None:
    summary = normalize_resource(_observation(valueQuantity={"value": 72, "unit": "bpm"}), now=NOW).summary
    assert (summary["value"], summary["unit"], summary["ucum_code"]) == (72, "bpm", "/min")


# -- codes -------------------------------------------------------------------------------------------


def test_loinc_is_found_behind_a_proprietary_first_coding() -> None:
    code = {
        "coding": [
            {"system": "urn:oid:1.2.840.114350.1.13.0.1.7.2.707679", "code": "5", "display": "Pulse"},
            {"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"},
        ],
        "text": "Pulse",
    }
    summary = normalize_resource(_observation(code=code), now=NOW).summary
    assert (summary["loinc"], summary["code"], summary["display"]) == ("8867-4", "8867-4", "Heart rate")


def test_an_observation_without_loinc_keeps_its_own_code() -> None:
    code = {"coding": [{"system": "urn:oid:1.2.3", "code": "X1"}], "text": "Local test"}
    summary = normalize_resource(_observation(code=code), now=NOW).summary
    assert (summary["loinc"], summary["code"], summary["display"]) == (None, "X1", "Local test")


def test_a_coded_value_is_summarized_as_text() -> None:
    value = {"coding": [{"system": "http://snomed.info/sct", "code": "260385009", "display": "Negative"}]}
    summary = normalize_resource(_observation(valueCodeableConcept=value), now=NOW).summary
    assert (summary["value"], summary["value_text"]) == (None, "Negative")


# -- data absent -------------------------------------------------------------------------------------


def test_data_absent_reason_element_is_summarized() -> None:
    dar = {
        "coding": [
            {"system": "http://terminology.hl7.org/CodeSystem/data-absent-reason", "code": "asked-declined"}
        ]
    }
    summary = normalize_resource(_observation(dataAbsentReason=dar), now=NOW).summary
    assert (summary["data_absent_reason"], summary["value"]) == ("asked-declined", None)


def test_data_absent_reason_extension_on_the_value_is_summarized() -> None:
    value = {"extension": [{"url": DAR, "valueCode": "unknown"}]}
    summary = normalize_resource(_observation(valueQuantity=value), now=NOW).summary
    assert summary["data_absent_reason"] == "unknown"


def test_data_absent_reason_extension_on_a_primitive_value_is_summarized() -> None:
    resource = _observation(_valueString={"extension": [{"url": DAR, "valueCode": "masked"}]})
    assert normalize_resource(resource, now=NOW).summary["data_absent_reason"] == "masked"


# -- dates -------------------------------------------------------------------------------------------


def test_date_only_authored_on_keeps_its_precision() -> None:
    request = {
        "resourceType": "MedicationRequest",
        "id": "mr1",
        "status": "active",
        "intent": "order",
        "medicationCodeableConcept": {"text": "aspirin 81 mg"},
        "subject": {"reference": "Patient/p1"},
        "authoredOn": "2019-05-28",
    }
    normalized = normalize_resource(request, now=NOW)
    assert normalized.summary["authored_on"] == "2019-05-28"
    assert normalized.resource["authoredOn"] == "2019-05-28"


def test_partial_birth_date_is_kept_as_sent() -> None:
    summary = normalize_resource(_patient(birthDate="1980-05"), now=NOW).summary
    assert summary["birth_date"] == "1980-05"


def test_a_date_in_the_future_is_an_issue() -> None:
    assert normalize_resource(_patient(birthDate="2027-01-01"), now=NOW).issues == ["birthDate: future_date"]


# -- validation --------------------------------------------------------------------------------------


def _invalid_patient() -> dict[str, Any]:
    return _patient(
        birthDate="28/05/1961",
        name=[{"family": "Doe", "given": "Jane"}],
        telecom=[{"system": "phone", "value": 5550100}],
        **{"Jane Doe's note": "lives alone"},
    )


def test_validation_issues_name_path_and_error_type_only() -> None:
    issues = normalize_resource(_invalid_patient(), now=NOW).issues
    assert "birthDate: value_error" in issues
    assert "name.0.given: list_type" in issues
    assert "telecom.0.value: string_type" in issues
    assert "?: extra_forbidden" in issues


def test_validation_issues_contain_no_values() -> None:
    issues = json.dumps(normalize_resource(_invalid_patient(), now=NOW).issues)
    for value in ("28/05/1961", "1961", "Jane", "Doe", "5550100", "lives alone"):
        assert value not in issues


def test_an_invalid_resource_is_still_stored_and_summarized() -> None:
    raw = _invalid_patient()
    normalized = normalize_resource(raw, now=NOW)
    assert normalized.resource == raw
    assert (normalized.summary["family"], normalized.summary["given"]) == ("Doe", "Jane")
    assert normalized.summary["birth_date"] == "28/05/1961"


def test_a_valid_resource_has_no_issues() -> None:
    assert normalize_resource(_observation(valueQuantity={"value": 72, "unit": "/min"}), now=NOW).issues == []


def test_an_unknown_resource_type_is_kept_with_an_issue() -> None:
    normalized = normalize_resource({"resourceType": "Frobnicator", "id": "f1"}, now=NOW)
    assert normalized.resource == {"resourceType": "Frobnicator", "id": "f1"}
    assert normalized.issues == ["resourceType: unknown_resource_type"]
    assert normalized.summary == {}


def test_normalization_does_not_mutate_its_input() -> None:
    raw = _patient(identifier=[{"system": "urn:oid:1.2", "value": " 42 "}], name=[{"given": ["A"]}])
    before = copy.deepcopy(raw)
    normalize_resource(raw, now=NOW)
    assert raw == before


# -- patients ----------------------------------------------------------------------------------------

_MR_TYPE = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]}


def test_mrn_is_the_identifier_typed_mr_when_no_system_is_configured() -> None:
    patient = _patient(
        identifier=[
            {"system": "http://hl7.org/fhir/sid/us-ssn", "value": "999-99-9999"},
            {"type": _MR_TYPE, "system": "urn:oid:1.2.3", "value": "  MRN-1 "},
        ]
    )
    assert normalize_resource(patient, now=NOW).summary["mrn"] == "MRN-1"


def test_a_configured_mrn_system_wins_over_the_mr_type() -> None:
    patient = _patient(
        identifier=[
            {"type": _MR_TYPE, "system": "urn:oid:9.9.9", "value": "OTHER-ORG"},
            {"system": "urn:oid:1.2.3", "value": "OURS"},
        ]
    )
    options = SummaryOptions(mrn_system="urn:oid:1.2.3")
    assert normalize_resource(patient, now=NOW, options=options).summary["mrn"] == "OURS"


def test_a_configured_mrn_system_that_is_absent_gives_no_mrn() -> None:
    patient = _patient(identifier=[{"type": _MR_TYPE, "system": "urn:oid:9.9.9", "value": "OTHER-ORG"}])
    options = SummaryOptions(mrn_system="urn:oid:1.2.3")
    assert normalize_resource(patient, now=NOW, options=options).summary["mrn"] is None


def test_nickname_is_the_preferred_name() -> None:
    patient = _patient(
        name=[
            {"use": "official", "family": "Smith", "given": ["Robert", "James"]},
            {"use": "nickname", "given": ["Bobby"]},
        ]
    )
    summary = normalize_resource(patient, now=NOW).summary
    assert (summary["preferred_name"], summary["official_name"]) == ("Bobby", "Robert James Smith")
    assert summary["given"] == "Robert James"


def test_a_usual_name_that_repeats_the_official_first_name_does_not_replace_it() -> None:
    patient = _patient(
        name=[
            {"use": "official", "family": "Smith", "given": ["Robert"]},
            {"use": "usual", "given": ["robert"]},
        ]
    )
    assert normalize_resource(patient, now=NOW).summary["preferred_name"] == "Robert Smith"


def test_a_name_flagged_preferred_by_extension_is_the_preferred_name() -> None:
    patient = _patient(
        name=[
            {"use": "official", "family": "Nguyen", "given": ["Thi", "Lan"]},
            {"given": ["Lana"], "extension": [{"url": ISO21090_PREFERRED, "valueBoolean": True}]},
        ]
    )
    assert normalize_resource(patient, now=NOW).summary["preferred_name"] == "Lana"


def test_names_that_ended_are_not_preferred() -> None:
    patient = _patient(
        name=[
            {"use": "official", "family": "Jones", "given": ["Ann"]},
            {"use": "nickname", "given": ["Annie"], "period": {"end": "2010-01-01"}},
            {"use": "official", "family": "Brown", "given": ["Ann"], "period": {"end": "2001-06-30"}},
        ]
    )
    summary = normalize_resource(patient, now=NOW).summary
    assert (summary["preferred_name"], summary["family"]) == ("Ann Jones", "Jones")


# -- other types -------------------------------------------------------------------------------------


def test_condition_summary_prefers_snomed() -> None:
    condition = {
        "resourceType": "Condition",
        "id": "c1",
        "clinicalStatus": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}
            ]
        },
        "verificationStatus": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}
            ]
        },
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/condition-category",
                        "code": "problem-list-item",
                    }
                ]
            }
        ],
        "code": {
            "coding": [
                {"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "I10"},
                {"system": "http://snomed.info/sct", "code": "38341003", "display": "Hypertensive disorder"},
            ]
        },
        "subject": {"reference": "Patient/p1"},
        "onsetDateTime": "2015",
        "recordedDate": "2015-03-02",
    }
    summary = normalize_resource(condition, now=NOW).summary
    assert summary == {
        "subject": "Patient/p1",
        "encounter": None,
        "code": "38341003",
        "code_system": "http://snomed.info/sct",
        "display": "Hypertensive disorder",
        "category": "problem-list-item",
        "clinical_status": "active",
        "verification_status": "confirmed",
        "onset": "2015",
        "onset_type": "dateTime",
        "onset_start": "2015",
        "onset_end": None,
        "onset_age_low": None,
        "onset_age_high": None,
        "onset_age_unit": None,
        "recorded_date": "2015-03-02",
    }


def test_encounter_summary_reads_the_r4_class_coding() -> None:
    encounter = {
        "resourceType": "Encounter",
        "id": "e1",
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "type": [
            {"coding": [{"system": "http://snomed.info/sct", "code": "185349003"}], "text": "Office visit"}
        ],
        "subject": {"reference": "Patient/p1"},
        "period": {"start": "2026-02-20T14:00:00Z", "end": "2026-02-20T14:30:00Z"},
    }
    assert normalize_resource(encounter, now=NOW).summary == {
        "subject": "Patient/p1",
        "status": "finished",
        "class_code": "AMB",
        "period_start": "2026-02-20T14:00:00Z",
        "period_end": "2026-02-20T14:30:00Z",
        "type_display": "Office visit",
    }


def test_allergy_summary_reads_patient_and_criticality() -> None:
    allergy = {
        "resourceType": "AllergyIntolerance",
        "id": "a1",
        "clinicalStatus": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical",
                    "code": "active",
                }
            ]
        },
        "criticality": "high",
        "code": {
            "coding": [
                {
                    "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                    "code": "7980",
                    "display": "Penicillin G",
                }
            ]
        },
        "patient": {"reference": "Patient/p1"},
        "recordedDate": "2018-03-01",
    }
    summary = normalize_resource(allergy, now=NOW).summary
    assert (summary["patient"], summary["code"], summary["display"]) == ("Patient/p1", "7980", "Penicillin G")
    assert (summary["clinical_status"], summary["criticality"]) == ("active", "high")


def test_medication_summary_prefers_rxnorm() -> None:
    medication = {
        "resourceType": "Medication",
        "id": "m1",
        "code": {
            "coding": [
                {
                    "system": "urn:oid:1.2.840.114350.1.13.0.1.7.2.698288",
                    "code": "11037",
                    "display": "LISINOPRIL 10 MG",
                },
                {"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "314076"},
            ],
            "text": "lisinopril 10 MG tablet",
        },
    }
    assert normalize_resource(medication, now=NOW).summary == {
        "code": "314076",
        "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
        "display": "lisinopril 10 MG tablet",
        "unresolved": None,
        "ingredients": None,
    }


def test_types_without_a_view_have_an_empty_summary() -> None:
    document = {"resourceType": "DocumentReference", "id": "d1", "status": "current", "content": []}
    assert normalize_resource(document, now=NOW).summary == {}


@pytest.mark.parametrize(
    ("resource_type", "keys", "said"),
    [
        (
            "Patient",
            {"mrn", "family", "given", "preferred_name", "official_name", "birth_date", "gender"},
            {},
        ),
        ("Medication", {"code", "system", "display", "unresolved", "ingredients"}, {"unresolved": "no_code"}),
    ],
)
def test_a_summary_has_every_key_of_its_type_even_when_the_resource_is_empty(
    resource_type: str, keys: set[str], said: dict[str, str]
) -> None:
    summary = normalize_resource({"resourceType": resource_type, "id": "x"}, now=NOW).summary
    assert set(summary) == keys
    assert {k: v for k, v in summary.items() if v is not None} == said
