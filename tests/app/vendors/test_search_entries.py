from __future__ import annotations

from typing import Any

from app.vendors import adapter_for


def _epic_searchset() -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": 1,
        "entry": [
            {
                "fullUrl": "https://fhir.epic.example/api/FHIR/R4/Observation/o1",
                "resource": {"resourceType": "Observation", "id": "o1", "status": "final"},
                "search": {"mode": "match"},
            },
            {
                "resource": {
                    "resourceType": "OperationOutcome",
                    "issue": [
                        {
                            "severity": "warning",
                            "code": "processing",
                            "details": {
                                "coding": [
                                    {
                                        "system": "urn:oid:1.2.840.114350.1.13.0.1.7.2.657369",
                                        "code": "4119",
                                    }
                                ]
                            },
                        }
                    ],
                },
                "search": {"mode": "outcome"},
            },
        ],
    }


def test_outcome_entries_are_skipped() -> None:
    resources = adapter_for("epic").search_entries(_epic_searchset())
    assert [(r["resourceType"], r["id"]) for r in resources] == [("Observation", "o1")]


def test_a_no_results_bundle_with_only_an_outcome_is_empty() -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": 0,
        "entry": [
            {
                "resource": {
                    "resourceType": "OperationOutcome",
                    "issue": [{"severity": "information", "code": "informational", "diagnostics": "4101"}],
                },
                "search": {"mode": "outcome"},
            }
        ],
    }
    assert adapter_for("epic").search_entries(bundle) == []


def test_operation_outcome_without_search_mode_is_skipped() -> None:
    bundle = {"resourceType": "Bundle", "entry": [{"resource": {"resourceType": "OperationOutcome"}}]}
    assert adapter_for("generic").search_entries(bundle) == []


def test_included_resources_are_kept() -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [
            {"resource": {"resourceType": "MedicationRequest", "id": "mr1"}, "search": {"mode": "match"}},
            {"resource": {"resourceType": "Medication", "id": "m1"}, "search": {"mode": "include"}},
        ],
    }
    assert [r["id"] for r in adapter_for("hapi").search_entries(bundle)] == ["mr1", "m1"]


def test_entries_without_a_resource_object_are_skipped_not_fatal() -> None:
    bundle = {
        "resourceType": "Bundle",
        "entry": [None, "x", {"search": "match"}, {"resource": "nope"}, {"resource": {"id": "x"}}],
    }
    # A resource object is passed on even when odd: the caller records why it cannot be stored.
    assert adapter_for("generic").search_entries(bundle) == [{"id": "x"}]


def test_a_bundle_without_entries_is_empty() -> None:
    assert adapter_for("generic").search_entries({"resourceType": "Bundle", "type": "searchset"}) == []
