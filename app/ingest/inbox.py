"""From a parsed notification to inbox rows and a ledger observation (the receiver side of the ledger).

Dedup keys, per source (a duplicate delivery maps to the same key and is stored once):

- numbered events (backport, R4B, R5): subscription + event number + focus + action, suffixed with the
  subscription's epoch by the writer (``with_epoch``), which learns it from the event ledger;
- senders whose numbers restart in every bundle (athena): subscription + ``notificationEvent.id``;
- Medplum and HAPI's payload mode: subscription + Type/id + ``meta.versionId``, else the body's hash;
- nothing to tell two deliveries apart (an empty POST, a delete without version): a unique key, so both
  are kept; fetching twice is harmless, dropping a change is not.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from typing import Any, Literal

from app.fhir.notifications import EVENT_TYPES, LEGACY_SHAPES, Notification, dedup_key
from app.ingest.ledger import LedgerObservation, NumberedEvent

EventIdentity = Literal["number", "event-id"]

# The inbox columns a receiver writes; the group-commit writer builds its INSERT from this list.
INBOX_COLUMNS = (
    "facility_id",
    "dedup_key",
    "subscription",
    "event_number",
    "focus_type",
    "focus_id",
    "focus_identifier",
    "interaction",
    "payload",
)


def _unique() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class InboxEntry:
    facility_id: str
    dedup_key: str
    subscription: str | None
    event_number: int | None
    focus_type: str | None
    focus_id: str | None
    interaction: str | None
    payload: dict[str, Any] | None
    focus_identifier: str | None = None
    # Index into the notification's LedgerObservation.numbers: the key gets that event's epoch.
    ledger_index: int | None = None

    def as_row(self) -> dict[str, Any]:
        # Not dataclasses.asdict: that deep-copies the payload, on the receiver's hot path.
        return {c: getattr(self, c) for c in INBOX_COLUMNS}

    def with_epoch(self, epoch: int) -> InboxEntry:
        return replace(self, dedup_key=f"{self.dedup_key}|e{epoch}", ledger_index=None)


@dataclass(frozen=True)
class Refusal:
    event_number: int | None
    reason: str


@dataclass(frozen=True)
class Intake:
    """Everything one notification asks the writer to commit."""

    entries: list[InboxEntry]
    refused: list[Refusal]
    observation: LedgerObservation


def entries_for(
    facility_id: str, notification: Notification, *, event_identity: EventIdentity = "number"
) -> tuple[list[InboxEntry], list[Refusal]]:
    """One inbox entry per storable event; refused events (foreign host, bad focus) are returned apart so
    the caller can count and log them. Handshakes and heartbeats carry no events and give no entries."""
    intake = intake_for(facility_id, notification, event_identity=event_identity)
    return intake.entries, intake.refused


def intake_for(
    facility_id: str, notification: Notification, *, event_identity: EventIdentity = "number"
) -> Intake:
    entries: list[InboxEntry] = []
    refused: list[Refusal] = []
    numbers: list[NumberedEvent] = []
    use_numbers = event_identity == "number" and notification.shape not in LEGACY_SHAPES
    is_event = notification.type in EVENT_TYPES
    subscription = notification.subscription
    for event in notification.events if is_event else []:
        index: int | None = None
        number = event.event_number if use_numbers else None
        if number is not None:
            index = len(numbers)
            numbers.append(NumberedEvent(number, event.timestamp))
        if event.refused is not None:
            refused.append(Refusal(event.event_number, event.refused))
            continue
        if event_identity == "event-id" and event.event_id:
            key = f"eid|{subscription or '-'}|{event.event_id}"
        else:
            keyed = event if number is not None else replace(event, event_number=None)
            key = dedup_key(subscription, keyed, fallback=_unique)
        focus_type = event.focus.resource_type if event.focus else event.focus_type_hint
        entries.append(
            InboxEntry(
                facility_id=facility_id,
                dedup_key=key,
                subscription=subscription,
                event_number=event.event_number,
                focus_type=focus_type,
                focus_id=event.focus.resource_id if event.focus else None,
                interaction=event.interaction,
                payload=event.resource,
                focus_identifier=event.focus_identifier,
                ledger_index=index,
            )
        )
    observation = LedgerObservation(
        facility_id=facility_id,
        subscription=subscription or "",
        type=notification.type,
        status=notification.status,
        events_since_start=notification.events_since_start if use_numbers else None,
        numbers=numbers,
    )
    return Intake(entries, refused, observation)
