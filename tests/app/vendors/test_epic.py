"""Epic payload shapes from EHR-FACTS §6-7: padded identifiers, per-customer OID MRN systems, identical
official and usual names, medicationReference to a separate Medication, no ``meta``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from app.vendors import adapter_for

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
MRN_SYSTEM = "urn:oid:1.2.840.114350.1.13.0.1.7.5.737384.14"


def _patient() -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": "eR3v6tS1kMbDq2",
        "identifier": [
            {
                "use": "usual",
                "type": {"text": "EPI"},
                "system": MRN_SYSTEM,
                "value": " 203713  ",
            },
            {
                "use": "usual",
                "type": {"text": "EXTERNAL"},
                "system": "urn:oid:1.2.840.114350.1.13.0.1.7.2.698084",
                "value": "Z4972   ",
            },
        ],
        "name": [
            {"use": "official", "text": "Theodore Mychart", "family": "Mychart", "given": ["Theodore"]},
            {"use": "usual", "text": "Theodore Mychart", "family": "Mychart", "given": ["Theodore"]},
        ],
        "gender": "male",
        "birthDate": "1948-07-07",
    }


def test_padded_identifier_values_are_trimmed_in_the_stored_resource() -> None:
    stored = adapter_for("epic").normalize(_patient(), now=NOW).resource
    assert [i["value"] for i in stored["identifier"]] == ["203713", "Z4972"]


def test_everything_but_identifier_values_is_stored_verbatim() -> None:
    raw = _patient()
    stored = adapter_for("epic").normalize(raw, now=NOW).resource
    assert {k: v for k, v in stored.items() if k != "identifier"} == {
        k: v for k, v in raw.items() if k != "identifier"
    }
    assert raw["identifier"][0]["value"] == " 203713  "  # the input is not mutated


def test_mrn_comes_from_the_configured_oid_system_trimmed() -> None:
    summary = adapter_for("epic", mrn_system=MRN_SYSTEM).normalize(_patient(), now=NOW).summary
    assert summary["mrn"] == "203713"


def test_an_mrn_typed_by_text_only_needs_the_configured_system() -> None:
    """Epic types its MRN as ``{"text": "EPI"}`` (no v2-0203 ``MR``): without the facility's MRN system no
    identifier is taken for the MRN, because a wrong MRN is worse than a missing one."""
    assert adapter_for("epic").normalize(_patient(), now=NOW).summary["mrn"] is None


def test_identical_official_and_usual_names_give_the_official_name() -> None:
    summary = adapter_for("epic").normalize(_patient(), now=NOW).summary
    assert summary["preferred_name"] == "Theodore Mychart"
    assert summary["official_name"] == "Theodore Mychart"
    assert (summary["family"], summary["given"]) == ("Mychart", "Theodore")


def test_medication_reference_is_listed_for_fetching() -> None:
    request = {
        "resourceType": "MedicationRequest",
        "id": "eMR1",
        "status": "active",
        "intent": "order",
        "medicationReference": {
            "reference": "Medication/eMED7",
            "display": "lisinopril 10 MG tablet",
        },
        "subject": {"reference": "Patient/eR3v6tS1kMbDq2"},
        "authoredOn": "2019-05-28",
    }
    normalized = adapter_for("epic").normalize(request, now=NOW)
    assert normalized.references == [("Medication", "eMED7")]
    assert normalized.summary["medication_ref"] == "Medication/eMED7"
    assert normalized.summary["medication_code"] is None
    assert normalized.summary["medication_system"] is None
    assert normalized.summary["medication_display"] == "lisinopril 10 MG tablet"


def test_resources_without_meta_normalize_without_issues() -> None:
    normalized = adapter_for("epic").normalize(_patient(), now=NOW)
    assert normalized.issues == []
