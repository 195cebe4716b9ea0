"""What the receiver needs to know of a facility, cached briefly per process.

Secrets are resolved from their references when the facility is (re)loaded, kept in memory only. The
cache is bounded twice over: known facilities and unknown ids live in separate LRUs of a few thousand
entries each, so a flood of random ids in URLs neither grows the process nor evicts real facilities;
every entry expires after ``ttl_s``, so a facility added (or changed) later is seen within seconds.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.models import Facility
from app.facilities.schemas import FACILITY_ID, WebhookConfig
from app.facilities.senders import SenderCheck, sender_check
from app.fhir.notifications import EventIdentity
from app.vendors import VendorAdapter, adapter_for

DEFAULT_TTL_S = 5.0
DEFAULT_MAX_ENTRIES = 4096
_FACILITY_ID = re.compile(FACILITY_ID)


@dataclass(frozen=True)
class ReceiverFacility:
    id: str
    vendor: str
    base_url: str
    webhook: WebhookConfig | None
    sender: SenderCheck | None  # None: no webhook configured, every sender is refused
    adapter: VendorAdapter  # the vendor's quirks on the receiving side (announcing headers)
    event_identity: EventIdentity = "number"


def receiver_facility(row: Facility | Any) -> ReceiverFacility:
    """From a ``facilities`` row (the model, or a Core row with its columns). Raises ConfigurationError
    when a webhook secret cannot be resolved."""
    webhook = WebhookConfig.model_validate(row.webhook) if row.webhook else None
    adapter = adapter_for(row.vendor, mrn_system=row.mrn_system)
    return ReceiverFacility(
        id=row.id,
        vendor=row.vendor,
        base_url=row.base_url,
        webhook=webhook,
        sender=sender_check(webhook) if webhook else None,
        adapter=adapter,
        # The facility's own setting wins over its vendor's rule.
        event_identity=(webhook.event_identity if webhook else None) or adapter.event_identity,
    )


V = TypeVar("V")


class _Expiring(Generic[V]):
    """An LRU of at most ``max_entries`` values, each valid for ``ttl_s`` after it was stored."""

    def __init__(self, *, ttl_s: float, max_entries: int) -> None:
        self._ttl = ttl_s
        self._max = max_entries
        self._items: OrderedDict[str, tuple[float, V]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str, now: float) -> tuple[bool, V | None]:
        item = self._items.get(key)
        if item is None:
            return False, None
        if now - item[0] >= self._ttl:
            del self._items[key]
            return False, None
        self._items.move_to_end(key)
        return True, item[1]

    def put(self, key: str, value: V, now: float) -> None:
        self._items[key] = (now, value)
        self._items.move_to_end(key)
        while len(self._items) > self._max:
            self._items.popitem(last=False)

    def discard(self, key: str) -> None:
        self._items.pop(key, None)


class FacilityDirectory:
    """Facility lookups for the receiver with a short TTL, so config changes apply within seconds.

    ``get`` answers None for an unknown or disabled facility. It raises what the database raises
    (SQLAlchemyError, OSError) and ConfigurationError for a facility whose secrets cannot be resolved;
    neither is cached, so the next request tries again.
    """

    def __init__(
        self, engine: AsyncEngine, *, ttl_s: float = DEFAULT_TTL_S, max_entries: int = DEFAULT_MAX_ENTRIES
    ) -> None:
        self._engine = engine
        self._known: _Expiring[ReceiverFacility] = _Expiring(ttl_s=ttl_s, max_entries=max_entries)
        self._unknown: _Expiring[None] = _Expiring(ttl_s=ttl_s, max_entries=max_entries)

    def __len__(self) -> int:
        """Cached entries, known and unknown."""
        return len(self._known) + len(self._unknown)

    async def get(self, facility_id: str) -> ReceiverFacility | None:
        if _FACILITY_ID.fullmatch(facility_id) is None:  # no facility has such an id (nor a NUL to send)
            return None
        now = time.monotonic()
        hit, facility = self._known.get(facility_id, now)
        if hit:
            return facility
        if self._unknown.get(facility_id, now)[0]:
            return None
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(Facility).where(Facility.id == facility_id))).first()
        found = receiver_facility(row) if row is not None and row.enabled else None
        if found is None:
            self._known.discard(facility_id)
            self._unknown.put(facility_id, None, now)
        else:
            self._unknown.discard(facility_id)
            self._known.put(facility_id, found, now)
        return found
