"""FHIR documents the simulator answers with, as plain dicts."""

from __future__ import annotations

from typing import Any

from ehrsim.auth import SIGNING_ALGS
from ehrsim.profiles import Profile

FHIR_JSON = "application/fhir+json"


def operation_outcome(code: str, diagnostics: str, severity: str = "error") -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics}],
    }


def smart_configuration(token_url: str, profile: Profile) -> dict[str, Any]:
    methods = sorted(profile.auth_methods)
    return {
        "token_endpoint": token_url,
        "token_endpoint_auth_methods_supported": methods,
        "token_endpoint_auth_signing_alg_values_supported": list(SIGNING_ALGS),
        "grant_types_supported": ["client_credentials"],
        "scopes_supported": ["system/*.read", "system/*.rs"],
        "capabilities": ["client-confidential-asymmetric"]
        + (["client-confidential-symmetric"] if len(methods) > 1 else []),
    }


_REQUIRED_EXT = "http://ehrsim.example.org/fhir/StructureDefinition/search-parameter-required"
_OPERATIONS = "http://hl7.org/fhir/OperationDefinition"


def _search_params(profile: Profile, resource_type: str) -> list[dict[str, Any]]:
    """What the profile's search really accepts, required ones marked machine-readably."""
    unscoped = resource_type in ("Patient", "Medication")
    params: list[dict[str, Any]] = [{"name": "_id", "type": "token"}]
    if not unscoped:
        patient: dict[str, Any] = {"name": "patient", "type": "reference"}
        if profile.patient_required:
            patient["documentation"] = "required; one patient per search"
            patient["extension"] = [{"url": _REQUIRED_EXT, "valueBoolean": True}]
        params.append(patient)
    scope = profile.last_updated
    if scope == "system" or (scope == "types" and resource_type in profile.last_updated_types):
        params.append({"name": "_lastUpdated", "type": "date"})
    elif scope == "patient":
        documentation = "only together with patient"
        if profile.last_updated_day_precision:
            documentation += "; day precision (YYYY-MM-DD)"
        params.append({"name": "_lastUpdated", "type": "date", "documentation": documentation})
    return params


def capability_statement(
    base_url: str, token_url: str, profile: Profile, date: str, *, subscriptions: bool
) -> dict[str, Any]:
    """The truth about a profile: its types and interactions, the search parameters it really has,
    paging, Subscription support and its operations, bulk export."""
    resources: list[dict[str, Any]] = [
        {
            "type": rtype,
            "versioning": "versioned" if profile.meta else "no-version",
            "readHistory": False,
            "interaction": [{"code": "read"}, {"code": "search-type"}],
            "searchParam": _search_params(profile, rtype),
        }
        for rtype in profile.resource_types
    ]
    operations: list[dict[str, Any]] = []
    if subscriptions:
        resources.append(
            {
                "type": "Subscription",
                "interaction": [{"code": c} for c in ("read", "search-type", "create", "update", "delete")],
                "operation": [
                    {"name": "status", "definition": f"{_OPERATIONS}/Subscription-status"},
                    {"name": "events", "definition": f"{_OPERATIONS}/Subscription-events"},
                ],
            }
        )
    if profile.bulk_export:
        resources.append(
            {
                "type": "Group",
                "interaction": [],
                "operation": [{"name": "export", "definition": f"{_OPERATIONS}/Group-export"}],
            }
        )
        operations.append({"name": "export", "definition": f"{_OPERATIONS}/Patient-export"})
    rest: dict[str, Any] = {
        "mode": "server",
        "security": {
            "service": [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                            "code": "SMART-on-FHIR",
                        }
                    ]
                }
            ],
            "extension": [
                {
                    "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                    "extension": [{"url": "token", "valueUri": token_url}],
                }
            ],
        },
        "resource": resources,
    }
    if operations:
        rest["operation"] = operations
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": date,
        "kind": "instance",
        "software": {"name": "ehrsim", "version": profile.name},
        "implementation": {"description": f"ehrsim simulated EHR ({profile.name} profile)", "url": base_url},
        "fhirVersion": "4.0.1",
        "format": [FHIR_JSON, "json"],
        "rest": [rest],
    }
