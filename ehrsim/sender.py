"""Delivers one facility's changes to its webhook as R4 Subscriptions Backport (>= 1.1) ``id-only``
event notifications.

Each change becomes one notification with the next event number of the subscription (1, 2, ...).
Notifications start in the order of their changes, at most ``concurrency`` in flight; a slot is held
through retries, so a dead receiver slows the queue instead of growing an unbounded set of retries.
A notification is attempted ``max_attempts`` times (backoff doubling from ``backoff_initial_s``, capped at
``backoff_max_s``); success is any 2xx; after the last failure it is dropped and recorded.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx
import structlog

from ehrsim.config import WebhookConfig
from ehrsim.fhir import FHIR_JSON
from ehrsim.instants import format_instant
from ehrsim.store import Change

log = structlog.get_logger("ehrsim.sender")

_STATUS_PROFILE = (
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription-status-r4"
)
_REQUEST = {"create": ("PUT", "201"), "update": ("PUT", "200"), "delete": ("DELETE", "204")}


@dataclass(slots=True)
class SenderStats:
    queued: int = 0  # events produced
    attempted: int = 0  # HTTP attempts, retries included
    delivered: int = 0
    dropped: int = 0
    dropped_events: list[int] = field(default_factory=list)  # event numbers given up on

    @property
    def pending(self) -> int:
        return self.queued - self.delivered - self.dropped

    def as_dict(self) -> dict[str, int]:
        return {
            "queued": self.queued,
            "attempted": self.attempted,
            "delivered": self.delivered,
            "dropped": self.dropped,
            "pending": self.pending,
        }


@dataclass(frozen=True, slots=True)
class _Event:
    number: int
    change: Change


class Sender:
    def __init__(
        self,
        facility_id: str,
        webhook: WebhookConfig,
        base_url: str,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.facility_id = facility_id
        self.webhook = webhook
        self.base_url = base_url  # the facility's absolute FHIR base
        self.stats = SenderStats()
        self._sleep = sleep
        self._queue: deque[_Event] = deque()
        self._wake: asyncio.Event | None = None
        self._headers = {**webhook.headers, "Content-Type": FHIR_JSON}

    def enqueue(self, change: Change) -> None:
        """Number and queue a change. Call from the event loop thread that runs ``run``."""
        self.stats.queued += 1
        self._queue.append(_Event(self.stats.queued, change))
        if self._wake is not None:
            self._wake.set()

    async def run(self, client: httpx.AsyncClient) -> None:
        """Deliver until cancelled; in-flight deliveries are cancelled with it."""
        self._wake = wake = asyncio.Event()
        slots = asyncio.Semaphore(self.webhook.concurrency)
        in_flight: set[asyncio.Task[None]] = set()
        log.info("ehrsim.sender.started", facility_id=self.facility_id, url=self.webhook.url)
        try:
            while True:
                while not self._queue:
                    await wake.wait()
                    wake.clear()
                await slots.acquire()
                task = asyncio.create_task(self._deliver(client, self._queue.popleft(), slots))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
        finally:
            self._wake = None
            for task in in_flight:
                task.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)

    async def _deliver(self, client: httpx.AsyncClient, event: _Event, slots: asyncio.Semaphore) -> None:
        try:
            body = json.dumps(self.notification(event.number, event.change), separators=(",", ":")).encode()
            delay = self.webhook.backoff_initial_s
            reason = ""
            for attempt in range(1, self.webhook.max_attempts + 1):
                self.stats.attempted += 1
                try:
                    response = await client.post(
                        self.webhook.url, content=body, headers=self._headers, timeout=self.webhook.timeout_s
                    )
                except httpx.HTTPError as exc:
                    reason = type(exc).__name__
                else:
                    if response.is_success:
                        self.stats.delivered += 1
                        return
                    reason = f"http_{response.status_code}"
                if attempt < self.webhook.max_attempts:
                    await self._sleep(delay)
                    delay = min(delay * 2, self.webhook.backoff_max_s)
            self.stats.dropped += 1
            self.stats.dropped_events.append(event.number)
            log.warning(
                "ehrsim.sender.dropped",
                facility_id=self.facility_id,
                event_number=event.number,
                attempts=self.webhook.max_attempts,
                reason=reason,
            )
        finally:
            slots.release()

    def notification(self, number: int, change: Change) -> dict[str, object]:
        """The id-only event-notification Bundle of one change."""
        instant = format_instant(change.last_updated)
        relative = f"{change.resource_type}/{change.id}"
        method, status = _REQUEST[change.kind]
        status_resource = {
            "resourceType": "Parameters",
            "meta": {"profile": [_STATUS_PROFILE]},
            "parameter": [
                {
                    "name": "subscription",
                    "valueReference": {
                        "reference": f"{self.base_url}/Subscription/{self.webhook.subscription_id}"
                    },
                },
                {"name": "topic", "valueCanonical": self.webhook.topic},
                {"name": "status", "valueCode": "active"},
                {"name": "type", "valueCode": "event-notification"},
                {"name": "events-since-subscription-start", "valueString": str(number)},
                {
                    "name": "notification-event",
                    "part": [
                        {"name": "event-number", "valueString": str(number)},
                        {"name": "timestamp", "valueInstant": instant},
                        {"name": "focus", "valueReference": {"reference": f"{self.base_url}/{relative}"}},
                    ],
                },
            ],
        }
        return {
            "resourceType": "Bundle",
            "id": str(uuid.uuid4()),
            "type": "history",
            "timestamp": instant,
            "entry": [
                {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": status_resource},
                {
                    "fullUrl": f"{self.base_url}/{relative}",
                    "request": {"method": method, "url": relative},
                    "response": {"status": status},
                },
            ],
        }
