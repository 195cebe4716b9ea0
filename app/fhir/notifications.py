"""Parsing subscription notifications into events, tolerantly (EHR-FACTS.md §2).

Shapes (``Notification.shape``, the ``NotificationShape`` literal):

- ``backport``: R4 Subscriptions Backport IG ≥ 1.1, a ``history`` Bundle whose first entry is a
  ``Parameters`` status with ``notification-event`` parts.
- ``backport-0.1``: backport 0.1.0, a ``Parameters`` status without ``notification-event`` parts; the
  events are the Bundle's other entries, numbered from ``events-since-subscription-start`` and
  ``events-in-notification``.
- ``r4b``: a ``history`` Bundle whose first entry is a ``SubscriptionStatus`` (R4B, backport 1.0).
- ``r5``: a ``subscription-notification`` Bundle with a ``SubscriptionStatus``.
- a header-announced bare resource (``Delivery.announcement``): the resource alone, while headers name
  the subscription, the interaction and, for a delete (body ``{}``), the deleted ``Type/id``. Which
  headers, and the shape's name (named after the server that introduced it), are the facility's vendor
  adapter's to say; this module only reads the ``Announcement`` the adapter made of them.
- ``resource``: a bare resource POSTed by a legacy R4 rest-hook.
- ``empty``: an empty POST (a criteria subscription without payload): something changed, nothing says
  what.
- ``put`` / ``delete``: payload mode, ``PUT|DELETE {endpoint}/{Type}/{id}``.

Tolerated: numbers as strings, integers or unsignedInt; ``subscription`` as a reference or a string;
parameters in any order; timestamps as instant, dateTime or date; focus absolute, relative, with
``/_history/n`` or identifier-only. A focus outside the facility's base URL is refused per event (SSRF).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal, get_args

from app.errors import ForeignHostError, NotificationError
from app.fhir.references import ResourceRef, parse_reference, resource_ref

NotificationType = Literal["handshake", "heartbeat", "event-notification", "query-status", "query-event"]
# "medplum" is the header-announced bare resource, named after the server whose format it is (data only:
# the facility's adapter decides when a delivery has this shape).
NotificationShape = Literal[
    "backport", "backport-0.1", "r4b", "r5", "medplum", "resource", "empty", "put", "delete"
]
Interaction = Literal["create", "update", "delete"]
# How a sender's events are told apart: by event number (the IGs' rule), or by notificationEvent.id for
# senders whose numbers restart in every bundle. Decided per facility by its vendor adapter.
EventIdentity = Literal["number", "event-id"]

NOTIFICATION_TYPES: dict[str, NotificationType] = {t: t for t in get_args(NotificationType)}
INTERACTIONS: dict[str, Interaction] = {i: i for i in get_args(Interaction)}
EVENT_TYPES: tuple[NotificationType, ...] = ("event-notification", "query-event")
# Shapes without event numbers: one event per delivery, keyed by version or content (app.ingest.inbox).
LEGACY_SHAPES: tuple[NotificationShape, ...] = ("medplum", "resource", "empty", "put", "delete")

_INTERACTIONS: dict[str, Interaction] = {
    "DELETE": "delete",
    "POST": "create",
    "PUT": "update",
    "PATCH": "update",
}
_DATE = re.compile(r"^\d{4}(-\d{2}(-\d{2})?)?$")
_RESOURCE_TYPE = re.compile(r"^[A-Z][A-Za-z]{1,63}$")


@dataclass(frozen=True)
class Timestamp:
    """An event time; ``precise`` is False for a bare date (day precision cannot order events)."""

    value: datetime
    precise: bool


@dataclass(frozen=True)
class NotificationEvent:
    event_number: int | None
    focus: ResourceRef | None
    interaction: Interaction | None  # None: unknown, the fetch tells
    resource: dict[str, Any] | None  # full-resource payload, when the sender included it
    refused: str | None = None  # reason slug when this event must not be stored (e.g. foreign_host)
    event_id: str | None = None  # SubscriptionStatus.notificationEvent.id (``event-id`` identity)
    timestamp: Timestamp | None = None
    focus_identifier: str | None = None  # "system|value" when the focus is identifier-only
    focus_type_hint: str | None = None  # Reference.type of an identifier-only focus


@dataclass(frozen=True)
class Notification:
    type: NotificationType
    subscription: str | None
    events_since_start: int | None
    events: list[NotificationEvent] = field(default_factory=list)
    shape: NotificationShape = "backport"
    topic: str | None = None
    status: str | None = None  # requested | active | error | off
    timestamp: Timestamp | None = None  # Bundle.timestamp


@dataclass(frozen=True)
class Announcement:
    """What a sender's headers say about a bare-resource delivery, as the facility's vendor adapter read
    them: the subscription (as sent), the interaction, and for a delete the deleted ``Type/id``."""

    shape: NotificationShape
    subscription: str | None = None
    interaction: Interaction | None = None
    deleted: str | None = None


@dataclass(frozen=True)
class Delivery:
    """What arrived besides the JSON body: the HTTP method, the path's ``Type/id`` (payload mode), the
    headers (lower-cased) and, when the facility's adapter recognized announcing headers, what they say."""

    method: str = "POST"
    path_type: str | None = None
    path_id: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    announcement: Announcement | None = None


_MAX_EVENT_NUMBER = 2**63 - 1  # FHIR integer64, and Postgres bigint


def _as_int(value: Any) -> int | None:
    """A non-negative event counter, or None. Out-of-range or non-ASCII digits ("²") are no number:
    the event is kept without one rather than failing the request or the shared commit."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        text = value.strip()
        if not (text.isascii() and text.isdigit() and len(text) <= 19):
            return None
        value = int(text)
    if isinstance(value, int) and 0 <= value <= _MAX_EVENT_NUMBER:
        return value
    return None


def parse_timestamp(value: Any) -> Timestamp | None:
    """An instant, dateTime (any precision, with or without offset) or date; None when unparseable."""
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    if _DATE.match(text):
        parts = [int(p) for p in text.split("-")] + [1, 1]
        try:
            return Timestamp(datetime(parts[0], parts[1], parts[2], tzinfo=UTC), precise=False)
        except ValueError:
            return None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        # An offset can carry year 1 or 9999 out of range: no timestamp, not a crash.
        return Timestamp(parsed.astimezone(UTC), precise=True)
    except (ValueError, OverflowError):
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


def _identifier_text(value: Any) -> tuple[str | None, str | None]:
    """(``system|value``, Reference.type) of an identifier-only reference."""
    if not isinstance(value, dict):
        return None, None
    ident = value.get("identifier")
    hint = value.get("type") if isinstance(value.get("type"), str) else None
    if isinstance(hint, str) and "/" in hint:  # Reference.type may be a canonical URL
        hint = hint.rsplit("/", 1)[-1]
    if isinstance(ident, dict) and isinstance(ident.get("value"), str):
        system = ident.get("system") if isinstance(ident.get("system"), str) else ""
        return f"{system}|{ident['value']}", hint if hint and _RESOURCE_TYPE.match(hint) else None
    return None, None


def normalize_subscription(text: str | None, base_url: str) -> str | None:
    """``Subscription/id`` for any reference under the facility's base, else the text as given."""
    if text is None or not text.strip():
        return None
    try:
        ref = parse_reference(text, base_url)
    except (ForeignHostError, NotificationError):
        return text.strip()
    return ref.relative


def _entries_by_url(bundle: dict[str, Any], base_url: str) -> dict[str, dict[str, Any]]:
    """Bundle entries after the status, keyed by their relative Type/id."""
    out: dict[str, dict[str, Any]] = {}
    for entry in _event_entries(bundle):
        for candidate in _entry_candidates(entry):
            try:
                out[parse_reference(candidate, base_url).relative] = entry
            except (ForeignHostError, NotificationError):
                continue
    return out


def _event_entries(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    entries = bundle.get("entry")
    if not isinstance(entries, list):
        return []
    return [e for e in entries[1:] if isinstance(e, dict)]


def _entry_candidates(entry: dict[str, Any]) -> list[str]:
    url = entry.get("fullUrl")
    resource = entry.get("resource")
    candidates = [url] if isinstance(url, str) and not url.startswith("urn:") else []
    if isinstance(resource, dict) and isinstance(resource.get("resourceType"), str) and resource.get("id"):
        candidates.append(f"{resource['resourceType']}/{resource.get('id')}")
    request = entry.get("request")
    if isinstance(request, dict) and isinstance(request.get("url"), str):
        candidates.append(request["url"])
    return candidates


def _interaction(entry: dict[str, Any]) -> Interaction | None:
    request = entry.get("request")
    if not isinstance(request, dict):
        return None
    return _INTERACTIONS.get(str(request.get("method", "")).upper())


def _event(
    number: int | None,
    focus_value: Any,
    entries: dict[str, dict[str, Any]],
    base_url: str,
    *,
    timestamp: Timestamp | None = None,
    event_id: str | None = None,
) -> NotificationEvent:
    base = NotificationEvent(number, None, None, None, event_id=event_id, timestamp=timestamp)
    focus_text = _reference_text(focus_value)
    if focus_text is None:
        identifier, hint = _identifier_text(focus_value)
        return replace(base, focus_identifier=identifier, focus_type_hint=hint)
    try:
        focus = parse_reference(focus_text, base_url)
    except (ForeignHostError, NotificationError) as exc:
        return replace(base, refused=exc.reason)
    entry = entries.get(focus.relative, {})
    interaction = _interaction(entry)
    return replace(base, focus=focus, interaction=interaction, resource=_payload(entry, focus, interaction))


def _payload(
    entry: dict[str, Any], focus: ResourceRef, interaction: Interaction | None
) -> dict[str, Any] | None:
    """The entry's resource when it is the focus's current state: never for a deletion (a body beside a
    DELETE is the old version; storing it would make the deleted resource live)."""
    resource = entry.get("resource")
    if interaction == "delete" or not isinstance(resource, dict):
        return None
    if resource.get("resourceType") != focus.resource_type or resource.get("id") != focus.resource_id:
        return None
    return resource


def _entry_event(number: int | None, entry: dict[str, Any], base_url: str) -> NotificationEvent:
    """An event described by a Bundle entry alone (backport 0.1.0)."""
    for candidate in _entry_candidates(entry):
        event = _event(number, candidate, {}, base_url)
        if event.focus is not None or event.refused == "foreign_host":
            interaction = _interaction(entry)
            resource = _payload(entry, event.focus, interaction) if event.focus is not None else None
            return replace(event, interaction=interaction, resource=resource)
    return NotificationEvent(number, None, None, None)


def _parse_parameters(status: dict[str, Any], bundle: dict[str, Any], base_url: str) -> Notification:
    values: dict[str, Any] = {}
    raw_events: list[list[dict[str, Any]]] = []
    params = status.get("parameter")
    for param in params if isinstance(params, list) else []:
        if not isinstance(param, dict):
            continue
        name = param.get("name")
        if name == "notification-event":
            parts = param.get("part", [])
            raw_events.append([p for p in parts if isinstance(p, dict)] if isinstance(parts, list) else [])
        elif isinstance(name, str):
            values[name] = _value(param)
    since = _as_int(values.get("events-since-subscription-start"))
    ntype = values.get("type")
    extra = _event_entries(bundle)
    legacy = "events-in-notification" in values or (not raw_events and bool(extra))
    events: list[NotificationEvent] = []
    if legacy:
        in_notification = _as_int(values.get("events-in-notification"))
        count = in_notification if in_notification is not None else len(extra)
        first = since - count + 1 if since is not None and since >= count else None
        for index in range(max(count, len(extra))):
            number = first + index if first is not None and index < count else None
            if index < len(extra):
                events.append(_entry_event(number, extra[index], base_url))
            else:  # `empty` content: numbered events without entries
                events.append(NotificationEvent(number, None, None, None))
    else:
        entries = _entries_by_url(bundle, base_url)
        for parts in raw_events:
            by_name = {p["name"]: p for p in parts if isinstance(p.get("name"), str)}
            number_part, focus_part, ts_part = (
                by_name.get(n) for n in ("event-number", "focus", "timestamp")
            )
            events.append(
                _event(
                    _as_int(_value(number_part)) if number_part else None,
                    _value(focus_part) if focus_part else None,
                    entries,
                    base_url,
                    timestamp=parse_timestamp(_value(ts_part)) if ts_part else None,
                )
            )
    return _notification(
        ntype,
        normalize_subscription(_reference_text(values.get("subscription")), base_url),
        since,
        events,
        shape="backport-0.1" if legacy else "backport",
        topic=values.get("topic") if isinstance(values.get("topic"), str) else None,
        status=values.get("status") if isinstance(values.get("status"), str) else None,
        timestamp=parse_timestamp(bundle.get("timestamp")),
    )


def _parse_subscription_status(
    status: dict[str, Any], bundle: dict[str, Any], base_url: str, shape: NotificationShape
) -> Notification:
    entries = _entries_by_url(bundle, base_url)
    events = []
    raw_events = status.get("notificationEvent", [])
    for item in raw_events if isinstance(raw_events, list) else []:
        if isinstance(item, dict):
            event_id = item.get("id") if isinstance(item.get("id"), str) else None
            events.append(
                _event(
                    _as_int(item.get("eventNumber")),
                    item.get("focus"),
                    entries,
                    base_url,
                    timestamp=parse_timestamp(item.get("timestamp")),
                    event_id=event_id,
                )
            )
    topic = status.get("topic")
    return _notification(
        status.get("type"),
        normalize_subscription(_reference_text(status.get("subscription")), base_url),
        _as_int(status.get("eventsSinceSubscriptionStart")),
        events,
        shape=shape,
        topic=topic if isinstance(topic, str) else _reference_text(topic),
        status=status.get("status") if isinstance(status.get("status"), str) else None,
        timestamp=parse_timestamp(bundle.get("timestamp")),
    )


def _notification(
    ntype: Any,
    subscription: str | None,
    since: int | None,
    events: list[NotificationEvent],
    **extra: Any,
) -> Notification:
    known = NOTIFICATION_TYPES.get(ntype) if isinstance(ntype, str) else None
    if known is None:
        raise NotificationError("unknown_notification_type", "status has no recognizable notification type")
    return Notification(known, subscription, since, events, **extra)


def _parse_bundle(body: dict[str, Any], base_url: str) -> Notification:
    entries = body.get("entry")
    if not isinstance(entries, list) or not entries or not isinstance(entries[0], dict):
        raise NotificationError("no_status_entry", "the Bundle has no subscription status entry")
    status = entries[0].get("resource")
    if not isinstance(status, dict):
        raise NotificationError("no_status_entry", "the Bundle has no subscription status entry")
    if status.get("resourceType") == "Parameters":
        return _parse_parameters(status, body, base_url)
    if status.get("resourceType") == "SubscriptionStatus":
        shape: NotificationShape = "r5" if body.get("type") == "subscription-notification" else "r4b"
        return _parse_subscription_status(status, body, base_url, shape)
    raise NotificationError("no_status_entry", "first entry is neither Parameters nor SubscriptionStatus")


def _resource_ref(resource: dict[str, Any], base_url: str) -> ResourceRef:
    rtype, rid = resource.get("resourceType"), resource.get("id")
    if not isinstance(rtype, str) or not isinstance(rid, str):
        raise NotificationError("not_a_notification", "a bare resource needs resourceType and id")
    ref = resource_ref(rtype, rid)  # its own type and id: never a path or URL to resolve
    meta = resource.get("meta")
    version = meta.get("versionId") if isinstance(meta, dict) else None
    if isinstance(version, str) and version.strip():
        return ResourceRef(ref.resource_type, ref.resource_id, version.strip())
    return ref


def _legacy(
    shape: NotificationShape, event: NotificationEvent, base_url: str, subscription: str | None = None
) -> Notification:
    return Notification(
        "event-notification", normalize_subscription(subscription, base_url), None, [event], shape=shape
    )


def _parse_announced(body: Any, base_url: str, announced: Announcement) -> Notification:
    """A bare resource whose headers announced it; a delete is ``{}`` plus the deleted ``Type/id``."""
    subscription = announced.subscription
    if subscription and "/" not in subscription:
        subscription = f"Subscription/{subscription}"
    shape = announced.shape
    if announced.deleted:
        try:
            focus = parse_reference(announced.deleted, base_url)
        except (ForeignHostError, NotificationError) as exc:
            return _legacy(shape, NotificationEvent(None, None, "delete", None, refused=exc.reason), base_url)
        return _legacy(shape, NotificationEvent(None, focus, "delete", None), base_url, subscription)
    if not isinstance(body, dict) or not body:
        raise NotificationError("not_a_notification", "announced notification without a resource")
    focus = _resource_ref(body, base_url)
    interaction = announced.interaction
    payload = None if interaction == "delete" else body
    return _legacy(shape, NotificationEvent(None, focus, interaction, payload), base_url, subscription)


def parse_delivery(body: Any, base_url: str, delivery: Delivery) -> Notification:
    """Parse what one HTTP request delivered; ``body`` is the decoded JSON, or None for an empty body.
    Raises NotificationError when it is not a notification we recognize."""
    method = delivery.method.upper()
    if method in ("PUT", "DELETE"):
        if delivery.path_type is None or delivery.path_id is None:
            raise NotificationError("bad_reference", "PUT and DELETE need /{Type}/{id}")
        focus = parse_reference(f"{delivery.path_type}/{delivery.path_id}", base_url)
        if method == "DELETE":
            return _legacy("delete", NotificationEvent(None, focus, "delete", None), base_url)
        if body is None:
            return _legacy("put", NotificationEvent(None, focus, "update", None), base_url)
        if not isinstance(body, dict):
            raise NotificationError("not_a_notification", "a PUT body must be the resource")
        ref = _resource_ref(body, base_url)
        if ref.relative != focus.relative:
            raise NotificationError("path_mismatch", "the resource does not match the URL's Type/id")
        return _legacy("put", NotificationEvent(None, ref, "update", body), base_url)
    if delivery.announcement is not None:
        return _parse_announced(body, base_url, delivery.announcement)
    if body is None:
        return _legacy("empty", NotificationEvent(None, None, None, None), base_url)
    return parse_notification(body, base_url)


def parse_notification(body: Any, base_url: str) -> Notification:
    """Parse a JSON notification body: a notification Bundle, a bare status, or a bare resource.
    Raises NotificationError when ``body`` is none of those."""
    if not isinstance(body, dict) or not isinstance(body.get("resourceType"), str):
        raise NotificationError("not_a_bundle", "expected a FHIR Bundle or resource")
    rtype = body["resourceType"]
    if rtype == "Bundle":
        if body.get("type") not in ("history", "subscription-notification", None):
            raise NotificationError("not_a_notification", "a Bundle that is not a notification")
        return _parse_bundle(body, base_url)
    if rtype == "Parameters":  # a status alone, e.g. a handshake or heartbeat sent outside a Bundle
        return _parse_parameters(body, {}, base_url)
    if rtype == "SubscriptionStatus":
        return _parse_subscription_status(body, {}, base_url, "r5")
    try:
        focus = _resource_ref(body, base_url)
    except NotificationError:
        raise NotificationError("not_a_bundle", "expected a FHIR Bundle or a resource with an id") from None
    return _legacy("resource", NotificationEvent(None, focus, None, body), base_url)
