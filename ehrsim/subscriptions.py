"""Subscriptions of one facility: their live state, and their R4 (backport) ``Subscription`` resource.

A subscription is created from the config's ``webhook`` at start, or by a client through the FHIR API
(``POST /Subscription``). The resource is R4 with the Subscriptions Backport extensions (payload content,
heartbeat period, filter criteria); Medplum and HAPI style subscriptions use plain R4 ``criteria``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ehrsim.instants import date_range, format_instant
from ehrsim.notify import Event, Target
from ehrsim.profiles import RetryPolicy
from ehrsim.store import Change

_BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition"
PAYLOAD_EXT = f"{_BACKPORT}/backport-payload-content"
HEARTBEAT_EXT = f"{_BACKPORT}/backport-heartbeat-period"
FILTER_EXT = f"{_BACKPORT}/backport-filter-criteria"
# Medplum: https://medplum.com/fhir/StructureDefinition/subscription-secret
SECRET_EXT_SUFFIX = "subscription-secret"  # noqa: S105 - an extension URL, not a password
STATUSES = ("requested", "active", "error", "off")


class InvalidSubscription(ValueError):
    """A Subscription resource the server refuses (400)."""


@dataclass
class Subscription:
    id: str
    endpoint: str
    topic: str
    style: str
    payload: str
    retry: RetryPolicy
    retention: int
    headers: dict[str, str] = field(default_factory=dict)
    criteria: str | None = None  # "Observation" or "Observation?...": the resource type is what filters
    secret: str | None = None
    hapi_deletes: bool = True
    heartbeat_s: float | None = None
    timeout_s: float = 10.0
    status: str = "active"
    end: str | None = None
    events_since_start: int = 0
    epoch: int = 0
    consecutive_drops: int = 0
    version: int = 1
    last_updated_ms: int = 0
    last_sent: float = 0.0  # loop time of the last notification of any kind (heartbeat scheduling)
    error: str | None = None
    retained: deque[Event] = field(init=False)

    def __post_init__(self) -> None:
        self.retained = deque(maxlen=self.retention)

    @property
    def uses_handshake(self) -> bool:
        return self.style in ("backport-r4", "r4b", "r5")

    def expire(self, now_ms: int) -> None:
        """Past its ``end`` a subscription is ``off`` (the subscriber must renew before then)."""
        if self.end is None or self.status == "off":
            return
        try:
            ended = date_range(self.end)[0] <= now_ms
        except ValueError:
            return
        if ended:
            self.status = "off"
            self.error = "the subscription reached its end"

    def matches(self, change: Change) -> bool:
        if not self.criteria:
            return True
        return self.criteria.split("?", 1)[0] in (change.resource_type, "*")

    def next_event(
        self,
        change: Change,
        resource: dict[str, Any] | None,
        event_id: str,
        identifier: dict[str, Any] | None = None,
    ) -> Event:
        self.events_since_start += 1
        event = Event(self.events_since_start, change, resource, event_id, identifier)
        self.retained.append(event)
        return event

    def restart(self) -> None:
        """A new epoch: counters from 0, retained events forgotten (as after a server restart)."""
        self.events_since_start = 0
        self.epoch += 1
        self.retained.clear()

    def target(self) -> Target:
        return Target(
            id=self.id,
            endpoint=self.endpoint,
            headers=self.headers,
            topic=self.topic,
            style=self.style,
            payload=self.payload,
            status=self.status,
            secret=self.secret,
            hapi_deletes=self.hapi_deletes,
            events_since_start=self.events_since_start,
        )

    def resource(self, meta: bool = True) -> dict[str, Any]:
        channel: dict[str, Any] = {"type": "rest-hook", "endpoint": self.endpoint}
        if self.payload != "empty" or self.uses_handshake:
            channel["payload"] = "application/fhir+json"
        if self.uses_handshake:
            channel["_payload"] = {"extension": [{"url": PAYLOAD_EXT, "valueCode": self.payload}]}
        if self.headers:
            channel["header"] = [f"{k}: {v}" for k, v in self.headers.items()]
        if self.heartbeat_s is not None:
            channel["extension"] = [{"url": HEARTBEAT_EXT, "valueUnsignedInt": round(self.heartbeat_s)}]
        resource: dict[str, Any] = {"resourceType": "Subscription", "id": self.id}
        if meta:
            resource["meta"] = {
                "versionId": str(self.version),
                "lastUpdated": format_instant(self.last_updated_ms),
            }
        resource |= {"status": self.status, "reason": "ehrsim subscription", "channel": channel}
        if self.uses_handshake:
            resource["criteria"] = self.topic
            if self.criteria:
                resource["_criteria"] = {"extension": [{"url": FILTER_EXT, "valueString": self.criteria}]}
        else:
            resource["criteria"] = self.criteria or "*"
        if self.end is not None:
            resource["end"] = self.end
        if self.error is not None:
            resource["error"] = self.error
        return resource


@dataclass(frozen=True, slots=True)
class Requested:
    """What a client asked for in a Subscription resource."""

    status: str
    endpoint: str
    topic: str | None
    criteria: str | None
    payload: str | None
    headers: dict[str, str]
    heartbeat_s: float | None
    secret: str | None
    end: str | None


def parse_resource(body: Any) -> Requested:
    """Validate a Subscription resource from a client; raises ``InvalidSubscription``."""
    if not isinstance(body, dict) or body.get("resourceType") != "Subscription":
        raise InvalidSubscription("the body must be a Subscription resource")
    channel = body.get("channel")
    if not isinstance(channel, dict) or channel.get("type", "rest-hook") != "rest-hook":
        raise InvalidSubscription("channel.type must be rest-hook")
    endpoint = channel.get("endpoint")
    if not isinstance(endpoint, str) or not endpoint.startswith(("http://", "https://")):
        raise InvalidSubscription("channel.endpoint must be an http(s) URL")
    status = body.get("status", "requested")
    if status not in STATUSES:
        raise InvalidSubscription(f"status must be one of {', '.join(STATUSES)}")
    headers: dict[str, str] = {}
    for line in channel.get("header", []):
        name, sep, value = str(line).partition(":")
        if not sep:
            raise InvalidSubscription("channel.header entries must be 'Name: value'")
        headers[name.strip()] = value.strip()
    payload = _extension_value(channel.get("_payload"), PAYLOAD_EXT, "valueCode")
    if payload is None:
        payload = "full-resource" if channel.get("payload") else "empty"
    heartbeat = _extension_value(channel, HEARTBEAT_EXT, "valueUnsignedInt")
    criteria = body.get("criteria")
    topic: str | None = None
    filter_criteria = _extension_value(body.get("_criteria"), FILTER_EXT, "valueString")
    if isinstance(criteria, str) and criteria.startswith(("http://", "https://")):
        topic = criteria
    elif isinstance(criteria, str):
        filter_criteria = criteria
    secret = next(
        (
            str(ext.get("valueString"))
            for ext in _extensions(body)
            if str(ext.get("url", "")).endswith(SECRET_EXT_SUFFIX)
        ),
        None,
    )
    end = body.get("end")
    return Requested(
        status=status,
        endpoint=endpoint,
        topic=topic,
        criteria=filter_criteria,
        payload=payload,
        headers=headers,
        heartbeat_s=float(heartbeat) if isinstance(heartbeat, int | float) and heartbeat > 0 else None,
        secret=secret,
        end=end if isinstance(end, str) else None,
    )


def _extension_value(element: Any, url: str, key: str) -> Any:
    return next((ext.get(key) for ext in _extensions(element) if ext.get("url") == url), None)


def _extensions(element: Any) -> list[dict[str, Any]]:
    if not isinstance(element, dict):
        return []
    return [e for e in element.get("extension", []) if isinstance(e, dict)]
