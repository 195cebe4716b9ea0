"""Notification fixtures written from the Subscriptions Backport IG (R4, ≥ 1.1) and EHR-FACTS.md §2."""

from __future__ import annotations

from typing import Any

BASE = "https://ehr.test/fhir"


def backport_id_only(
    events: list[tuple[int | str, str]],
    *,
    subscription: str = f"{BASE}/Subscription/sub-1",
    ntype: str = "event-notification",
    methods: dict[str, str] | None = None,
    numbers_as_int: bool = False,
) -> dict[str, Any]:
    """A history Bundle with a backport Parameters status and one notification-event per (number, focus)."""
    params: list[dict[str, Any]] = [
        {"name": "subscription", "valueReference": {"reference": subscription}},
        {"name": "topic", "valueCanonical": "http://example.org/topic/all"},
        {"name": "status", "valueCode": "active"},
        {"name": "type", "valueCode": ntype},
    ]
    for number, focus in events:
        value: dict[str, Any] = (
            {"valueUnsignedInt": int(number)} if numbers_as_int else {"valueString": str(number)}
        )
        params.append(
            {
                "name": "notification-event",
                "part": [
                    {"name": "event-number", **value},
                    {"name": "timestamp", "valueInstant": "2026-11-24T10:00:00Z"},
                    {"name": "focus", "valueReference": {"reference": focus}},
                ],
            }
        )
    entries: list[dict[str, Any]] = [
        {
            "fullUrl": "urn:uuid:0d3b1e0c-1",
            "resource": {
                "resourceType": "Parameters",
                "meta": {
                    "profile": [
                        "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
                        "backport-subscription-status-r4"
                    ]
                },
                "parameter": params,
            },
        }
    ]
    for _, focus in events:
        method = (methods or {}).get(focus, "PUT")
        entries.append(
            {
                "fullUrl": focus if "://" in focus else f"{BASE}/{focus}",
                "request": {"method": method, "url": focus.split("/fhir/")[-1]},
            }
        )
    return {
        "resourceType": "Bundle",
        "type": "history",
        "timestamp": "2026-11-24T10:00:00Z",
        "entry": entries,
    }


def observation(obs_id: str, version: str, last_updated: str, value: float = 72.0) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": obs_id,
        "meta": {"versionId": version, "lastUpdated": last_updated},
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "valueQuantity": {
            "value": value,
            "unit": "/min",
            "system": "http://unitsofmeasure.org",
            "code": "/min",
        },
    }
