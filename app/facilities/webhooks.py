"""What the receiver needs to know of a facility, cached briefly per process.

Secrets are resolved from their references when the facility is (re)loaded, kept in memory only.
"""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.models import Facility
from app.errors import ConfigurationError
from app.facilities.schemas import WebhookConfig
from app.facilities.secrets import resolve_secret


@dataclass(frozen=True)
class ReceiverFacility:
    id: str
    vendor: str
    base_url: str
    webhook: WebhookConfig | None
    expected: bytes | None  # the exact header value a legitimate sender puts in webhook.header

    def sender_is_authentic(self, header_value: str | None) -> bool:
        if self.expected is None or header_value is None:
            return False
        return hmac.compare_digest(header_value.strip().encode(), self.expected)


def _expected_header(webhook: WebhookConfig) -> bytes:
    secret = resolve_secret(webhook.secret).strip()
    if not secret:
        raise ConfigurationError("secret_missing", "webhook secret is empty")
    return (f"{webhook.scheme} {secret}" if webhook.scheme else secret).encode()


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
        facility = None
        if row is not None and row.enabled:
            webhook = WebhookConfig.model_validate(row.webhook) if row.webhook else None
            facility = ReceiverFacility(
                id=row.id,
                vendor=row.vendor,
                base_url=row.base_url,
                webhook=webhook,
                expected=_expected_header(webhook) if webhook else None,
            )
        self._cache[facility_id] = (now, facility)
        return facility
