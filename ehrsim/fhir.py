"""FHIR documents the simulator answers with, as plain dicts."""

from __future__ import annotations

from typing import Any

from ehrsim.auth import SIGNING_ALGS
from ehrsim.profiles import Profile

FHIR_JSON = "application/fhir+json"

#: The standard created/recorded-date search parameters of each type (FHIR R4), and the element each
#: one searches (Encounter: the start of its period).
DATE_PARAMS: dict[str, dict[str, tuple[str, ...]]] = {
    "Observation": {"date": ("effectiveDateTime",), "issued": ("issued",)},
    "Condition": {"recorded-date": ("recordedDate",), "onset-date": ("onsetDateTime",)},
    "MedicationRequest": {"authoredon": ("authoredOn",)},
    "AllergyIntolerance": {"date": ("recordedDate",)},
    "DocumentReference": {"date": ("date",)},
    "Encounter": {"date": ("period", "start")},
    "Patient": {"birthdate": ("birthDate",)},
}


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
_SUBSCRIPTION_OPERATIONS = (
    "http://hl7.org/fhir/uv/subscriptions-backport/OperationDefinition/backport-subscription"
)
_BULK_OPERATIONS = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition"
#: The Bulk Data IG's definition of each export level's operation.
EXPORT_DEFINITIONS = {
    "system": f"{_BULK_OPERATIONS}/export",
    "patient": f"{_BULK_OPERATIONS}/patient-export",
    "group": f"{_BULK_OPERATIONS}/group-export",
}


def _search_params(profile: Profile, resource_type: str) -> list[dict[str, Any]]:
    """What the profile's search really accepts, required ones marked machine-readably."""
    unscoped = resource_type in ("Patient", "Medication")
    params: list[dict[str, Any]] = [{"name": "_id", "type": "token"}, {"name": "identifier", "type": "token"}]
    if not unscoped:
        patient: dict[str, Any] = {"name": "patient", "type": "reference"}
        if profile.patient_required:
            patient["documentation"] = "required; one patient per search"
            patient["extension"] = [{"url": _REQUIRED_EXT, "valueBoolean": True}]
        params.append(patient)
    params += [{"name": name, "type": "date"} for name in DATE_PARAMS.get(resource_type, {})]
    scope, name = profile.last_updated, profile.last_updated_param
    if scope == "system" or (scope == "types" and resource_type in profile.last_updated_types):
        params.append({"name": name, "type": "date"})
    elif scope == "patient" and (not unscoped or resource_type in profile.last_updated_types):
        documentation = "only together with patient" if not unscoped else "supported"
        if profile.last_updated_day_precision:
            documentation += "; day precision (YYYY-MM-DD)"
        if not profile.last_updated_with_dates:
            documentation += "; not together with a date parameter"
        params.append({"name": name, "type": "date", "documentation": documentation})
    return params


def export_levels(profile: Profile) -> frozenset[str]:
    """The ``$export`` levels the profile serves (none without bulk export)."""
    return frozenset(profile.export_levels) if profile.bulk_export else frozenset()


def _export(level: str) -> list[dict[str, Any]]:
    return [{"name": "export", "definition": EXPORT_DEFINITIONS[level]}]


def capability_statement(base_url: str, token_url: str, profile: Profile, date: str) -> dict[str, Any]:
    """The truth about a profile, no more: its types and interactions, the search parameters it really
    has, Subscription and its operations only where the vendor has them, each ``$export`` level it serves
    with that level's own definition, and the vendor's software name."""
    levels = export_levels(profile)
    resources: list[dict[str, Any]] = []
    for rtype in profile.resource_types:
        resource: dict[str, Any] = {
            "type": rtype,
            "versioning": "versioned" if profile.meta else "no-version",
            "readHistory": False,  # no vread
            "interaction": [
                {"code": "read"},
                {"code": "search-type"},
                *({"code": f"history-{level}"} for level in sorted(profile.history, reverse=True)),
            ],
            "searchParam": _search_params(profile, rtype),
        }
        if rtype == "Patient" and "patient" in levels:
            resource["operation"] = _export("patient")
        resources.append(resource)
    operations: list[dict[str, Any]] = _export("system") if "system" in levels else []
    if profile.notification is not None:
        subscription: dict[str, Any] = {
            "type": "Subscription",
            "interaction": [{"code": c} for c in ("read", "search-type", "create", "update", "delete")],
        }
        served = sorted(profile.subscription_operations, reverse=True)  # status, then events
        if served:
            subscription["operation"] = [
                {"name": name, "definition": f"{_SUBSCRIPTION_OPERATIONS}-{name}"} for name in served
            ]
        resources.append(subscription)
    if "group" in levels or profile.group_read:
        group: dict[str, Any] = {"type": "Group", "interaction": []}
        if profile.group_read:
            group["interaction"] = [{"code": "read"}, {"code": "search-type"}]
            group["searchParam"] = [{"name": "_id", "type": "token"}]
        if "group" in levels:
            group["operation"] = _export("group")
        resources.append(group)
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
        "software": {"name": profile.software_name, "version": f"ehrsim-{profile.name}"},
        "implementation": {"description": f"ehrsim simulated EHR ({profile.name} profile)", "url": base_url},
        "fhirVersion": "4.0.1",
        "format": [FHIR_JSON, "json"],
        "rest": [rest],
    }
