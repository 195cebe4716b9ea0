"""The HTTP requests a notification becomes, per notification style (``ehrsim.profiles.NotificationStyle``).

Pure functions: a subscription, what to say (handshake, heartbeat, an event) and the facility's FHIR base
in, one ``Outgoing`` request out (or ``None`` when the style sends nothing for it, as HAPI for a delete
it was not asked to announce).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from ehrsim.fhir import FHIR_JSON
from ehrsim.instants import format_instant
from ehrsim.store import Change

STATUS_PROFILE = (
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription-status-r4"
)
Kind = Literal["handshake", "heartbeat", "event-notification", "query-status", "query-event"]
_REQUEST = {"create": ("PUT", "201"), "update": ("PUT", "200"), "delete": ("DELETE", "204")}


@dataclass(frozen=True, slots=True)
class Event:
    number: int  # events-since-subscription-start of this event, in its epoch
    change: Change
    resource: dict[str, Any] | None  # the content the change produced (None for a delete)
    id: str  # stable across retries and duplicates: the dedup key (R4B notificationEvent.id)
    identifier: dict[str, Any] | None = None  # the focus is this identifier only (athena), not a reference


@dataclass(frozen=True, slots=True)
class Target:
    """What the renderer needs to know about a subscription."""

    id: str
    endpoint: str
    headers: dict[str, str]
    topic: str
    style: str
    payload: str
    status: str
    secret: str | None
    hapi_deletes: bool
    events_since_start: int


@dataclass(frozen=True, slots=True)
class Outgoing:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes


def render(target: Target, kind: Kind, event: Event | None, base_url: str, now_ms: int) -> Outgoing | None:
    if target.style == "medplum":
        return _medplum(target, event) if event is not None else None
    if target.style == "hapi":
        return _hapi(target, event) if event is not None else None
    if target.style == "backport-r4":
        bundle = _backport_r4(target, kind, event, base_url, now_ms)
    else:
        bundle = _subscription_status_bundle(target, kind, event, base_url, now_ms)
    body = _dump(bundle)
    headers = {**target.headers, "Content-Type": FHIR_JSON}
    if target.style == "r4b" and target.secret is not None:
        headers["X-Hub-Signature"] = f"sha256={_hmac(target.secret, body)}"
    return Outgoing("POST", target.endpoint, headers, body)


def status_parameters(
    target: Target, kind: Kind, base_url: str, events: list[Event], *, status: str | None = None
) -> dict[str, Any]:
    """An R4 backport ``Parameters`` status (also the ``$status`` and ``$events`` answers)."""
    parameters: list[dict[str, Any]] = [
        {
            "name": "subscription",
            "valueReference": {"reference": f"{base_url}/Subscription/{target.id}"},
        },
        {"name": "topic", "valueCanonical": target.topic},
        {"name": "status", "valueCode": status or target.status},
        {"name": "type", "valueCode": kind},
        {
            "name": "events-since-subscription-start",
            "valueString": str(
                events[-1].number if kind == "event-notification" else target.events_since_start
            ),
        },
    ]
    for event in events:
        parts: list[dict[str, Any]] = [
            {"name": "event-number", "valueString": str(event.number)},
            {"name": "timestamp", "valueInstant": format_instant(event.change.last_updated)},
        ]
        if target.payload != "empty":
            parts.append({"name": "focus", "valueReference": _focus_reference(base_url, event)})
        parameters.append({"name": "notification-event", "part": parts})
    return {"resourceType": "Parameters", "meta": {"profile": [STATUS_PROFILE]}, "parameter": parameters}


def events_status(target: Target, base_url: str, events: list[Event]) -> dict[str, Any]:
    """The status of a ``$events`` answer (``query-event``) in the subscription's own shape: an R5
    ``SubscriptionStatus`` for an R5 subscription, else the R4 backport ``Parameters``."""
    if target.style != "r5":
        return status_parameters(target, "query-event", base_url, events)
    notifications = []
    for event in events:
        notification: dict[str, Any] = {
            "eventNumber": str(event.number),
            "timestamp": format_instant(event.change.last_updated),
        }
        if target.payload != "empty":
            notification["focus"] = _focus_reference(base_url, event)
        notifications.append(notification)
    return {
        "resourceType": "SubscriptionStatus",
        "status": target.status,
        "type": "query-event",
        "eventsSinceSubscriptionStart": str(target.events_since_start),
        "subscription": {"reference": f"{base_url}/Subscription/{target.id}"},
        "topic": target.topic,
        "notificationEvent": notifications,
    }


def event_entries(target: Target, events: list[Event], base_url: str) -> list[dict[str, Any]]:
    """The Bundle entries that carry the events' focus (none for the ``empty`` payload)."""
    if target.payload == "empty":
        return []
    entries = []
    for event in events:
        if event.identifier is not None:
            continue  # nothing in the bundle names the resource: the receiver must search for it
        change = event.change
        method, status = _REQUEST[change.kind]
        entry: dict[str, Any] = {
            "fullUrl": _focus(base_url, change),
            "request": {"method": method, "url": f"{change.resource_type}/{change.id}"},
            "response": {"status": status},
        }
        if target.payload == "full-resource" and event.resource is not None:
            entry["resource"] = event.resource
        entries.append(entry)
    return entries


def _backport_r4(
    target: Target, kind: Kind, event: Event | None, base_url: str, now_ms: int
) -> dict[str, Any]:
    events = [event] if event is not None else []
    instant = format_instant(event.change.last_updated if event is not None else now_ms)
    return {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "type": "history",
        "timestamp": instant,
        "entry": [
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": status_parameters(target, kind, base_url, events),
            },
            *event_entries(target, events, base_url),
        ],
    }


def _subscription_status_bundle(
    target: Target, kind: Kind, event: Event | None, base_url: str, now_ms: int
) -> dict[str, Any]:
    """R4B (athena: numbers relative to the bundle, each event with an ``id``) or R5."""
    events = [event] if event is not None else []
    r4b = target.style == "r4b"
    status: dict[str, Any] = {
        "resourceType": "SubscriptionStatus",
        "id": str(uuid.uuid4()),
        "status": target.status,
        "type": kind,
        "eventsSinceSubscriptionStart": str(len(events) if r4b else target.events_since_start),
        "subscription": {"reference": f"{base_url}/Subscription/{target.id}"},
        "topic": target.topic,
    }
    if event is not None:
        notification: dict[str, Any] = {
            "eventNumber": "1" if r4b else str(event.number),
            "timestamp": format_instant(event.change.last_updated),
        }
        if r4b:
            notification = {"id": event.id, **notification}
        else:
            status["eventsSinceSubscriptionStart"] = str(event.number)
        if target.payload != "empty":
            notification["focus"] = _focus_reference(base_url, event)
        status["notificationEvent"] = [notification]
    return {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "type": "history" if r4b else "subscription-notification",
        "timestamp": format_instant(event.change.last_updated if event is not None else now_ms),
        "entry": [
            {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": status},
            *event_entries(target, events, base_url),
        ],
    }


def _medplum(target: Target, event: Event) -> Outgoing:
    change = event.change
    headers = {
        **target.headers,
        "Content-Type": FHIR_JSON,
        "X-Medplum-Subscription": target.id,
        "X-Medplum-Interaction": change.kind,
    }
    if change.kind == "delete" or event.resource is None:
        body = b"{}"
        headers["X-Medplum-Deleted-Resource"] = f"{change.resource_type}/{change.id}"
    else:
        body = _dump(event.resource)
    if target.secret is not None:
        headers["X-Signature"] = _hmac(target.secret, body)
    return Outgoing("POST", target.endpoint, headers, body)


def _hapi(target: Target, event: Event) -> Outgoing | None:
    change = event.change
    url = f"{target.endpoint.rstrip('/')}/{change.resource_type}/{change.id}"
    if change.kind == "delete":
        if not target.hapi_deletes:
            return None
        if target.payload == "empty":
            return Outgoing("POST", target.endpoint, dict(target.headers), b"")
        return Outgoing("DELETE", url, dict(target.headers), b"")
    if target.payload == "empty" or event.resource is None:
        return Outgoing("POST", target.endpoint, dict(target.headers), b"")
    return Outgoing("PUT", url, {**target.headers, "Content-Type": FHIR_JSON}, _dump(event.resource))


def _focus(base_url: str, change: Change) -> str:
    return f"{base_url}/{change.resource_type}/{change.id}"


def _focus_reference(base_url: str, event: Event) -> dict[str, Any]:
    """The event's focus as a Reference: absolute, or identifier-only with the type beside it."""
    if event.identifier is not None:
        return {"type": event.change.resource_type, "identifier": event.identifier}
    return {"reference": _focus(base_url, event.change)}


def _dump(document: dict[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


def _hmac(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
