"""Delivers one facility's changes to its subscriptions, in each subscription's notification style.

Each change that matches a subscription becomes one event with the subscription's next event number
(1, 2, ... per epoch). Deliveries start in the order of their changes, at most ``concurrency`` in
flight; a slot is held through retries, so a dead receiver slows the queue instead of growing an
unbounded set of retries. A notification is attempted up to the retry policy's ``max_attempts`` times
(backoff doubling from ``backoff_initial_s``, capped at ``backoff_max_s``) and no longer than its
``window_s`` after the first attempt; success is any 2xx; then it is dropped and recorded. After
``error_after_drops`` consecutive drops the subscription goes to ``error`` and receives nothing more
until a client sets it back to ``requested`` (handshake) or ``active``.

Handshakes (a ``requested`` subscription becomes ``active`` when one is answered 2xx, ``error`` when
not) and heartbeats (when nothing was sent for the subscription's heartbeat period) are sent for the
Bundle styles only. Faults (``ehrsim.faults``) drop, duplicate, delay or suppress notifications; every
notification that is not delivered is listed in ``dropped`` with its reason.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import structlog

from ehrsim.faults import Faults
from ehrsim.notify import Event, Kind, Outgoing, render
from ehrsim.store import Change
from ehrsim.subscriptions import Subscription

log = structlog.get_logger("ehrsim.sender")


@dataclass(slots=True)
class SenderStats:
    queued: int = 0  # events produced (one per change per matching subscription)
    attempted: int = 0  # HTTP attempts of events, retries and duplicates included
    delivered: int = 0
    dropped: int = 0  # given up on, or suppressed by a fault or the subscription's status
    skipped: int = 0  # the style sends nothing for this event (HAPI deletes without opt-in)
    duplicated: int = 0  # extra deliveries made by the duplicate fault
    handshakes: int = 0
    heartbeats: int = 0
    dropped_events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def pending(self) -> int:
        return self.queued - self.delivered - self.dropped - self.skipped

    def as_dict(self) -> dict[str, int]:
        return {
            "queued": self.queued,
            "attempted": self.attempted,
            "delivered": self.delivered,
            "dropped": self.dropped,
            "pending": self.pending,
            "skipped": self.skipped,
            "duplicated": self.duplicated,
            "handshakes": self.handshakes,
            "heartbeats": self.heartbeats,
        }


@dataclass(frozen=True, slots=True)
class _Delivery:
    subscription: Subscription
    kind: Kind
    event: Event | None = None


class Sender:
    def __init__(
        self,
        facility_id: str,
        base_url: str,
        faults: Faults,
        *,
        concurrency: int = 8,
        error_after_drops: int | None = None,
        now_ms: Callable[[], int],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.facility_id = facility_id
        self.base_url = base_url  # the facility's absolute FHIR base
        self.faults = faults
        self.stats = SenderStats()
        self.subscriptions: dict[str, Subscription] = {}
        self._concurrency = concurrency
        self._error_after_drops = error_after_drops
        self._now_ms = now_ms
        self._sleep = sleep
        self._queue: deque[_Delivery] = deque()
        self._wake: asyncio.Event | None = None
        self._timers: set[asyncio.TimerHandle] = set()

    # -- subscriptions ---------------------------------------------------------------------------------

    def add(self, subscription: Subscription) -> None:
        self.subscriptions[subscription.id] = subscription
        self.activate(subscription)

    def activate(self, subscription: Subscription) -> None:
        """A subscription that is (again) ``requested`` gets a handshake; other styles are active at once."""
        if subscription.status != "requested":
            return
        if subscription.uses_handshake:
            self._push(_Delivery(subscription, "handshake"))
        else:
            subscription.status = "active"

    def restart_counters(self) -> None:
        for subscription in self.subscriptions.values():
            subscription.restart()

    def force_status(self, status: str) -> None:
        for subscription in self.subscriptions.values():
            subscription.status = status
            subscription.error = "forced by ehrsim fault" if status == "error" else None

    # -- events ------------------------------------------------------------------------------------------

    def enqueue(
        self,
        change: Change,
        resource: dict[str, Any] | None,
        identifier: dict[str, Any] | None = None,
    ) -> None:
        """Number and queue a change for every matching subscription (``identifier``: its focus is that
        identifier only). Call from the event loop thread."""
        for subscription in self.subscriptions.values():
            if not subscription.matches(change):
                continue
            event = subscription.next_event(change, resource, str(uuid.uuid4()), identifier)
            self.stats.queued += 1
            subscription.expire(change.last_updated)
            if self.faults.config.feed_stopped:
                self._drop(subscription, event, "feed-stopped", count_fault="feed_stopped")
            elif subscription.status != "active":
                self._drop(subscription, event, f"subscription-{subscription.status}")
            elif self.faults.drop():
                self._drop(subscription, event, "fault-drop", count_fault="drop")
            else:
                delay = self.faults.notification_delay()
                delivery = _Delivery(subscription, "event-notification", event)
                if delay > 0:
                    self.faults.count("delay")
                    self._push_later(delay, delivery)
                else:
                    self._push(delivery)

    # -- the loop ------------------------------------------------------------------------------------------

    async def run(self, client: httpx.AsyncClient) -> None:
        """Deliver until cancelled; in-flight deliveries are cancelled with it."""
        self._wake = wake = asyncio.Event()
        slots = asyncio.Semaphore(self._concurrency)
        in_flight: set[asyncio.Task[None]] = set()
        heartbeats = asyncio.create_task(self._heartbeats())
        log.info("ehrsim.sender.started", facility_id=self.facility_id)
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
            heartbeats.cancel()
            for timer in self._timers:
                timer.cancel()
            for task in in_flight:
                task.cancel()
            await asyncio.gather(heartbeats, *in_flight, return_exceptions=True)

    def _push(self, delivery: _Delivery) -> None:
        self._queue.append(delivery)
        if self._wake is not None:
            self._wake.set()

    def _push_later(self, delay: float, delivery: _Delivery) -> None:
        loop = asyncio.get_running_loop()

        def fire() -> None:
            self._timers.discard(timer)
            self._push(delivery)

        timer = loop.call_later(delay, fire)
        self._timers.add(timer)

    async def _heartbeats(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            periods = [s.heartbeat_s for s in self.subscriptions.values() if s.heartbeat_s]
            await self._sleep(max(0.005, min(periods) / 4) if periods else 0.25)
            if self.faults.config.feed_stopped:
                continue
            now = loop.time()
            for subscription in list(self.subscriptions.values()):
                period = subscription.heartbeat_s
                if (
                    period
                    and subscription.uses_handshake
                    and subscription.status == "active"
                    and now - subscription.last_sent >= period
                ):
                    subscription.last_sent = now
                    self._push(_Delivery(subscription, "heartbeat"))

    async def _deliver(
        self, client: httpx.AsyncClient, delivery: _Delivery, slots: asyncio.Semaphore
    ) -> None:
        try:
            subscription, event = delivery.subscription, delivery.event
            outgoing = render(subscription.target(), delivery.kind, event, self.base_url, self._now_ms())
            subscription.last_sent = asyncio.get_running_loop().time()
            if delivery.kind == "handshake":
                self.stats.handshakes += 1
                ok = outgoing is None or (await self._attempt(client, outgoing, subscription))[0]
                if subscription.status == "requested":  # unless something changed it meanwhile
                    subscription.status = "active" if ok else "error"
                    subscription.error = None if ok else "handshake failed"
                return
            if delivery.kind == "heartbeat":
                self.stats.heartbeats += 1
                if outgoing is not None:
                    await self._attempt(client, outgoing, subscription)
                return
            assert event is not None  # an event-notification delivery carries its event
            if subscription.status != "active":  # changed since the event was queued
                self._drop(subscription, event, f"subscription-{subscription.status}")
                return
            if outgoing is None:
                self.stats.skipped += 1
                return
            reason = await self._with_retries(client, outgoing, subscription)
            if reason is not None:
                self._drop(subscription, event, reason, failed=True)
                return
            self.stats.delivered += 1
            subscription.consecutive_drops = 0
            if self.faults.chance(self.faults.config.duplicate_rate):
                self.faults.count("duplicate")
                self.stats.duplicated += 1
                self.stats.attempted += 1
                await self._attempt(client, outgoing, subscription)
        finally:
            slots.release()

    async def _with_retries(
        self, client: httpx.AsyncClient, outgoing: Outgoing, subscription: Subscription
    ) -> str | None:
        """``None`` once delivered, else the reason of the last failure."""
        policy = subscription.retry
        loop = asyncio.get_running_loop()
        first = loop.time()
        delay = policy.backoff_initial_s
        reason = ""
        for attempt in range(1, policy.max_attempts + 1):
            self.stats.attempted += 1
            ok, reason = await self._attempt(client, outgoing, subscription)
            if ok:
                return None
            if attempt == policy.max_attempts:
                break
            if policy.window_s is not None and loop.time() + delay - first > policy.window_s:
                reason += " (retry window over)"
                break
            await self._sleep(delay)
            delay = min(delay * 2, policy.backoff_max_s)
        return reason

    @staticmethod
    async def _attempt(
        client: httpx.AsyncClient, outgoing: Outgoing, subscription: Subscription
    ) -> tuple[bool, str]:
        try:
            # The whole exchange is bounded, not each socket operation: a receiver must answer in time.
            async with asyncio.timeout(subscription.timeout_s):
                response = await client.request(
                    outgoing.method, outgoing.url, content=outgoing.body, headers=outgoing.headers
                )
        except TimeoutError:
            return False, "timeout"
        except httpx.HTTPError as exc:
            return False, type(exc).__name__
        return response.is_success, f"http_{response.status_code}"

    def _drop(
        self,
        subscription: Subscription,
        event: Event,
        reason: str,
        *,
        count_fault: str | None = None,
        failed: bool = False,
    ) -> None:
        """Record an event that will never be delivered; ``failed``: the receiver did not accept it."""
        if count_fault is not None:
            self.faults.count(count_fault)
        self.stats.dropped += 1
        change = event.change
        self.stats.dropped_events.append(
            {
                "subscription": subscription.id,
                "event_number": event.number,
                "epoch": subscription.epoch,
                "resourceType": change.resource_type,
                "id": change.id,
                "interaction": change.kind,
                "reason": reason,
            }
        )
        log.warning(
            "ehrsim.sender.dropped",
            facility_id=self.facility_id,
            subscription=subscription.id,
            event_number=event.number,
            reason=reason,
        )
        if failed:
            subscription.consecutive_drops += 1
            limit = self._error_after_drops
            if (
                limit is not None
                and subscription.consecutive_drops >= limit
                and subscription.status == "active"
            ):
                subscription.status = "error"
                subscription.error = f"{limit} notifications in a row could not be delivered"
