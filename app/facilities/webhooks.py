"""What the receiver needs to know of a facility, cached briefly per process.

Secrets are resolved from their references when the facility is (re)loaded, kept in memory only.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.models import Facility
from app.facilities.schemas import WebhookConfig
from app.facilities.senders import SenderCheck, sender_check
from app.ingest.inbox import EventIdentity

# Vendors whose event numbers are useless for identity (athena restarts them at 1 in every bundle):
# their events are told apart by notificationEvent.id. A facility's webhook.event_identity overrides.
_EVENT_IDENTITY_BY_VENDOR: dict[str, EventIdentity] = {"athena": "event-id"}


@dataclass(frozen=True)
class ReceiverFacility:
    id: str
    vendor: str
    base_url: str
    webhook: WebhookConfig | None
    sender: SenderCheck | None  # None: no webhook configured, every sender is refused
    event_identity: EventIdentity = "number"

    def authenticate(self, headers: Mapping[str, str], body: bytes, now: float) -> str | None:
        """None when the sender is authentic, else the reason it is not."""
        if self.sender is None:
            return "webhook_not_configured"
        return self.sender.check(headers, body, now)

    def sender_is_authentic(self, header_value: str | None) -> bool:
        """The shared-secret check alone (header value as given)."""
        if self.sender is None or self.sender.method != "shared-secret" or header_value is None:
            return False
        return self.sender.check({self.sender.header: header_value}, b"", 0.0) is None


def receiver_facility(row: Facility) -> ReceiverFacility:
    webhook = WebhookConfig.model_validate(row.webhook) if row.webhook else None
    identity = (webhook.event_identity if webhook else None) or _EVENT_IDENTITY_BY_VENDOR.get(
        row.vendor, "number"
    )
    return ReceiverFacility(
        id=row.id,
        vendor=row.vendor,
        base_url=row.base_url,
        webhook=webhook,
        sender=sender_check(webhook) if webhook else None,
        event_identity=identity,
    )


class FacilityDirectory:
    """Facility lookups for the receiver with a short TTL, so config changes apply within seconds."""

    def __init__(self, engine: AsyncEngine, *, ttl_s: float = 5.0) -> None:
        self._engine = engine
        self._ttl = ttl_s
        self._cache: dict[str, tuple[float, ReceiverFacility | None]] = {}

    async def get(self, facility_id: str) -> ReceiverFacility | None:
        now = time.monotonic()
        cached = self._cache.get(facility_id)
        if cached is not None and now - cached[0] < self._ttl:
            return cached[1]
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(Facility).where(Facility.id == facility_id))).first()
        facility = receiver_facility(row) if row is not None and row.enabled else None  # type: ignore[arg-type]
        self._cache[facility_id] = (now, facility)
        return facility
