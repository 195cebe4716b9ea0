"""Notification fixtures for every shape of EHR-FACTS.md §2, written from the specifications:

- Subscriptions Backport IG 1.1 (R4 ``Parameters`` status, ``notification-event`` parts) and 0.1.0
  (``events-since-subscription-start`` / ``events-in-notification`` as ``valueUnsignedInt``, the events
  are the Bundle's other entries);
- R4B ``SubscriptionStatus`` in a ``history`` Bundle (also athena's, with ``notificationEvent.id``);
- R5 ``subscription-notification`` Bundles (integer64 numbers as strings);
- Medplum's bare resource with ``X-Medplum-*`` headers and ``X-Signature``; HAPI's empty POST and PUT/DELETE.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

from tests.fixtures import BASE, backport_id_only, observation

BACKPORT_PROFILE = (
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription-status-r4"
)
TOPIC = "http://example.org/fhir/SubscriptionTopic/encounter-start"


def backport_full_resource(number: int, resource: dict[str, Any], method: str = "PUT") -> dict[str, Any]:
    """Backport 1.1 ``full-resource``: the focus resource rides in the entry after the status."""
    focus = f"{resource['resourceType']}/{resource['id']}"
    body = backport_id_only([(number, focus)], methods={focus: method})
    body["entry"][1]["resource"] = resource
    return body


def backport_empty(numbers: list[int], *, since: int | None = None) -> dict[str, Any]:
    """Backport 1.1 ``empty`` content: notification-event parts carry an event number and nothing else."""
    body = backport_id_only([])
    params = body["entry"][0]["resource"]["parameter"]
    if since is not None:
        params.append({"name": "events-since-subscription-start", "valueString": str(since)})
    for number in numbers:
        params.append(
            {
                "name": "notification-event",
                "part": [
                    {"name": "event-number", "valueString": str(number)},
                    {"name": "timestamp", "valueInstant": "2026-11-24T10:00:00Z"},
                ],
            }
        )
    return body


def backport_status(ntype: str, since: int, *, status: str = "active") -> dict[str, Any]:
    """A backport 1.1 handshake, heartbeat or query-status (no events)."""
    body = backport_id_only([], ntype=ntype)
    params = body["entry"][0]["resource"]["parameter"]
    params.append({"name": "events-since-subscription-start", "valueString": str(since)})
    for param in params:
        if param["name"] == "status":
            param["valueCode"] = status
    return body


def backport_event(
    number: int, focus: str, timestamp: str, *, subscription: str = "Subscription/sub-1"
) -> dict[str, Any]:
    """One id-only event with a chosen timestamp (instant, dateTime or date)."""
    body = backport_id_only([(number, focus)], subscription=subscription)
    for param in body["entry"][0]["resource"]["parameter"]:
        if param["name"] == "notification-event":
            param["part"][1] = {"name": "timestamp", "valueDateTime": timestamp}
    return body


def backport_010(
    *, since: int, focuses: list[str], resources: dict[str, dict[str, Any]] | None = None, ntype: str = ""
) -> dict[str, Any]:
    """Backport 0.1.0: counts as unsignedInt, no notification-event parts; entries are the events."""
    params = [
        {"name": "subscription", "valueReference": {"reference": f"{BASE}/Subscription/old-1"}},
        {"name": "topic", "valueCanonical": TOPIC},
        {"name": "type", "valueCode": ntype or "event-notification"},
        {"name": "status", "valueCode": "active"},
        {"name": "events-since-subscription-start", "valueUnsignedInt": since},
        {"name": "events-in-notification", "valueUnsignedInt": len(focuses)},
    ]
    entries: list[dict[str, Any]] = [
        {"fullUrl": "urn:uuid:status", "resource": {"resourceType": "Parameters", "parameter": params}}
    ]
    for focus in focuses:
        entry: dict[str, Any] = {"fullUrl": f"{BASE}/{focus}"}
        if resources and focus in resources:
            entry["resource"] = resources[focus]
        entries.append(entry)
    return {"resourceType": "Bundle", "type": "history", "entry": entries}


def subscription_status(
    events: list[dict[str, Any]],
    *,
    ntype: str = "event-notification",
    since: str | int | None = None,
    subscription: str = f"{BASE}/Subscription/r4b-1",
) -> dict[str, Any]:
    status: dict[str, Any] = {
        "resourceType": "SubscriptionStatus",
        "status": "active",
        "type": ntype,
        "subscription": {"reference": subscription},
        "topic": TOPIC,
        "notificationEvent": events,
    }
    if since is not None:
        status["eventsSinceSubscriptionStart"] = since
    return status


def r4b_bundle(status: dict[str, Any], extra: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """R4B (and backport 1.0): a history Bundle whose first entry is a SubscriptionStatus."""
    return {
        "resourceType": "Bundle",
        "type": "history",
        "timestamp": "2026-11-24T10:00:00Z",
        "entry": [{"fullUrl": "urn:uuid:status", "resource": status}, *(extra or [])],
    }


def r5_bundle(status: dict[str, Any], extra: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """R5: Bundle.type subscription-notification."""
    body = r4b_bundle(status, extra)
    body["type"] = "subscription-notification"
    return body


def athena_event(event_id: str, focus: dict[str, Any]) -> dict[str, Any]:
    """athena: eventNumber restarts at 1 in every bundle; notificationEvent.id identifies the event."""
    return {"id": event_id, "eventNumber": "1", "timestamp": "2026-11-24T10:00:00.123Z", "focus": focus}


def medplum_resource(
    obs_id: str = "o-mp", version: str = "5a3c9a2e-7b1d-4c8e-9f00-0123456789ab"
) -> dict[str, Any]:
    """Medplum versions are UUIDs."""
    return observation(obs_id, version, "2026-11-24T10:00:00.000Z")


def medplum_headers(
    body: bytes, secret: str, *, interaction: str = "update", deleted: str | None = None
) -> dict[str, str]:
    headers = {
        "Content-Type": "application/fhir+json",
        "X-Medplum-Subscription": "mp-sub-1",
        "X-Medplum-Interaction": interaction,
        "X-Signature": hmac.new(secret.encode(), body, hashlib.sha256).hexdigest(),
    }
    if deleted is not None:
        headers["X-Medplum-Deleted-Resource"] = deleted
    return headers


def hub_signature(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def standard_webhooks_headers(body: bytes, secret: str, msg_id: str, timestamp: int) -> dict[str, str]:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    signature = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": f"v1,{signature}",
    }


def dumps(body: Any) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()
