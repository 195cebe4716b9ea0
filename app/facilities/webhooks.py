"""What the receiver needs to know of a facility, cached briefly per process.

Secrets are resolved from their references when the facility is (re)loaded, kept in memory only. The
cache is bounded twice over: known facilities and unknown ids live in separate LRUs of a few thousand
entries each, so a flood of random ids in URLs neither grows the process nor evicts real facilities;
every entry expires after ``ttl_s``, so a facility added (or changed) later is seen within seconds.

A hot facility's entry is reloaded in the background shortly before it expires, and concurrent misses
of one id share one lookup: otherwise, every ``ttl_s``, each request arriving during the lookup would
run its own and the receiver's latency would spike (measured with bench/webhook.py: a p99 twice the
median run's, every few seconds).
"""

from __future__ import annotations

import asyncio
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
REFRESH_AHEAD = 0.8  # of ttl_s: a known entry used after this age is reloaded in the background
LOAD_TIMEOUT_S = 10.0  # a shared lookup is bounded itself: no caller's timeout cancels it
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
        hit, value, _ = self.get_aged(key, now)
        return hit, value

    def get_aged(self, key: str, now: float) -> tuple[bool, V | None, float]:
        """Like ``get``, with the entry's age as a fraction of ``ttl_s`` (0 for a miss)."""
        item = self._items.get(key)
        if item is None:
            return False, None, 0.0
        age = (now - item[0]) / self._ttl
        if age >= 1:
            del self._items[key]
            return False, None, 0.0
        self._items.move_to_end(key)
        return True, item[1], age

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
        self._loading: dict[str, asyncio.Task[ReceiverFacility | None]] = {}

    def __len__(self) -> int:
        """Cached entries, known and unknown."""
        return len(self._known) + len(self._unknown)

    async def get(self, facility_id: str) -> ReceiverFacility | None:
        if _FACILITY_ID.fullmatch(facility_id) is None:  # no facility has such an id (nor a NUL to send)
            return None
        now = time.monotonic()
        hit, facility, age = self._known.get_aged(facility_id, now)
        if hit:
            if age >= REFRESH_AHEAD and facility_id not in self._loading:
                self._load_once(facility_id).add_done_callback(_ignore_failure)  # a miss retries it
            return facility
        if self._unknown.get(facility_id, now)[0]:
            return None
        # Shielded: a caller that gives up (its timeout) does not cancel the others' lookup.
        return await asyncio.shield(self._load_once(facility_id))

    def _load_once(self, facility_id: str) -> asyncio.Task[ReceiverFacility | None]:
        """The lookup of ``facility_id`` in flight, started if there is none."""
        task = self._loading.get(facility_id)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._load(facility_id))
            self._loading[facility_id] = task
            task.add_done_callback(lambda _: self._loading.pop(facility_id, None))
        return task

    async def _load(self, facility_id: str) -> ReceiverFacility | None:
        now = time.monotonic()
        async with asyncio.timeout(LOAD_TIMEOUT_S), self._engine.connect() as conn:
            row = (await conn.execute(select(Facility).where(Facility.id == facility_id))).first()
        found = receiver_facility(row) if row is not None and row.enabled else None
        if found is None:
            self._known.discard(facility_id)
            self._unknown.put(facility_id, None, now)
        else:
            self._unknown.discard(facility_id)
            self._known.put(facility_id, found, now)
        return found


def _ignore_failure(task: asyncio.Task[Any]) -> None:
    """A background reload that failed: the entry expires and the next request's lookup raises."""
    if not task.cancelled():
        task.exception()
