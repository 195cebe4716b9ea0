"""Parsing subscription notifications into events, tolerantly (EHR-FACTS.md §2).

Shapes understood so far: the R4 Subscriptions Backport IG (a ``history`` Bundle whose first entry is a
``Parameters`` status) and the R4B/R5 form (first entry a ``SubscriptionStatus``). Numbers may be
strings or integers; ``subscription`` a reference or a string; parameters in any order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from app.errors import ForeignHostError, NotificationError
from app.fhir.references import ResourceRef, parse_reference
from app.fhir.resources import content_hash

NOTIFICATION_TYPES = {"handshake", "heartbeat", "event-notification", "query-status", "query-event"}


@dataclass(frozen=True)
class NotificationEvent:
    event_number: int | None
    focus: ResourceRef | None
    interaction: str | None  # create | update | delete | None
    resource: dict[str, Any] | None  # full-resource payload, when the sender included it
    refused: str | None = None  # reason slug when this event must not be stored (e.g. foreign_host)


@dataclass(frozen=True)
class Notification:
    type: str
    subscription: str | None
    events_since_start: int | None
    events: list[NotificationEvent] = field(default_factory=list)


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _value(param: dict[str, Any]) -> Any:
    for key, val in param.items():
        if key.startswith("value"):
            return val
    return None


def _reference_text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("reference"), str):
        return str(value["reference"])
    return None


def _entries_by_url(bundle: dict[str, Any], base_url: str) -> dict[str, dict[str, Any]]:
    """Bundle entries after the status, keyed by their relative Type/id."""
    out: dict[str, dict[str, Any]] = {}
    for entry in bundle.get("entry", [])[1:]:
        if not isinstance(entry, dict):
            continue
        url = entry.get("fullUrl")
        resource = entry.get("resource")
        candidates = [url] if isinstance(url, str) else []
        if isinstance(resource, dict) and isinstance(resource.get("resourceType"), str):
            candidates.append(f"{resource['resourceType']}/{resource.get('id')}")
        request = entry.get("request")
        if isinstance(request, dict) and isinstance(request.get("url"), str):
            candidates.append(request["url"])
        for candidate in candidates:
            try:
                out[parse_reference(candidate, base_url).relative] = entry
            except (ForeignHostError, NotificationError):
                continue
    return out


def _event(
    number: int | None, focus_text: str | None, entries: dict[str, dict[str, Any]], base_url: str
) -> NotificationEvent:
    if focus_text is None:
        return NotificationEvent(number, None, None, None)
    try:
        focus = parse_reference(focus_text, base_url)
    except ForeignHostError as exc:
        return NotificationEvent(number, None, None, None, refused=exc.reason)
    except NotificationError as exc:
        return NotificationEvent(number, None, None, None, refused=exc.reason)
    entry = entries.get(focus.relative, {})
    request_raw = entry.get("request")
    request: dict[str, Any] = request_raw if isinstance(request_raw, dict) else {}
    method = str(request.get("method", "")).upper()
    interaction = {"DELETE": "delete", "POST": "create", "PUT": "update"}.get(method)
    resource = entry.get("resource")
    if not isinstance(resource, dict) or resource.get("resourceType") != focus.resource_type:
        resource = None
    return NotificationEvent(number, focus, interaction, resource)


def _parse_parameters(status: dict[str, Any], bundle: dict[str, Any], base_url: str) -> Notification:
    ntype, subscription, since = None, None, None
    raw_events: list[list[dict[str, Any]]] = []
    for param in status.get("parameter", []):
        if not isinstance(param, dict):
            continue
        name = param.get("name")
        if name == "type":
            ntype = _value(param)
        elif name == "subscription":
            subscription = _reference_text(_value(param))
        elif name == "events-since-subscription-start":
            since = _as_int(_value(param))
        elif name == "notification-event":
            parts = param.get("part", [])
            raw_events.append([p for p in parts if isinstance(p, dict)])
    entries = _entries_by_url(bundle, base_url)
    events = []
    for parts in raw_events:
        number = focus = None
        for part in parts:
            if part.get("name") == "event-number":
                number = _as_int(_value(part))
            elif part.get("name") == "focus":
                focus = _reference_text(_value(part))
        events.append(_event(number, focus, entries, base_url))
    return _notification(ntype, subscription, since, events)


def _parse_subscription_status(status: dict[str, Any], bundle: dict[str, Any], base_url: str) -> Notification:
    entries = _entries_by_url(bundle, base_url)
    events = []
    for item in status.get("notificationEvent", []):
        if isinstance(item, dict):
            number = _as_int(item.get("eventNumber"))
            events.append(_event(number, _reference_text(item.get("focus")), entries, base_url))
    since = _as_int(status.get("eventsSinceSubscriptionStart"))
    return _notification(status.get("type"), _reference_text(status.get("subscription")), since, events)


def _notification(
    ntype: Any, subscription: str | None, since: int | None, events: list[NotificationEvent]
) -> Notification:
    if not isinstance(ntype, str) or ntype not in NOTIFICATION_TYPES:
        raise NotificationError("unknown_notification_type", "status has no recognizable notification type")
    return Notification(ntype, subscription, since, events)


def parse_notification(body: Any, base_url: str) -> Notification:
    """Parse a notification Bundle. Raises NotificationError when ``body`` is not one."""
    if not isinstance(body, dict) or body.get("resourceType") != "Bundle":
        raise NotificationError("not_a_bundle", "expected a FHIR Bundle")
    entries = body.get("entry")
    if not isinstance(entries, list) or not entries or not isinstance(entries[0], dict):
        raise NotificationError("no_status_entry", "the Bundle has no subscription status entry")
    status = entries[0].get("resource")
    if not isinstance(status, dict):
        raise NotificationError("no_status_entry", "the Bundle has no subscription status entry")
    if status.get("resourceType") == "Parameters":
        return _parse_parameters(status, body, base_url)
    if status.get("resourceType") == "SubscriptionStatus":
        return _parse_subscription_status(status, body, base_url)
    raise NotificationError("no_status_entry", "first entry is neither Parameters nor SubscriptionStatus")


def dedup_key(subscription: str | None, event: NotificationEvent, *, fallback: str) -> str:
    """What makes two deliveries the same event: subscription and event number (with the focus, so that a
    sender whose counter restarted does not collide with old events), else the focus version or the
    payload's content hash. With none of those two deliveries cannot be told apart, so ``fallback`` (a
    unique value) keeps both: fetching twice is harmless, dropping an update is not."""
    focus = event.focus
    target = focus.relative if focus else "-"
    action = event.interaction or "-"
    if event.event_number is not None:
        return f"evt|{subscription or '-'}|{event.event_number}|{target}|{action}"
    if focus is not None and focus.version is not None:
        return f"ver|{target}/_history/{focus.version}|{action}"
    if event.resource is not None:
        return f"hash|{target}|{content_hash(event.resource)}|{action}"
    return f"once|{target}|{fallback}"
