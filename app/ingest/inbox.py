"""From a parsed notification to inbox rows and a ledger observation (the receiver side of the ledger).

Dedup keys, per source (a duplicate delivery maps to the same key and is stored once):

- numbered events (backport, R4B, R5): subscription + event number + focus + action, suffixed with the
  subscription's epoch by the writer (``app.ingest.writer.with_epoch``), which learns it from the event
  ledger;
- facilities whose adapter says their sender's numbers restart in every bundle (``event_identity`` =
  ``event-id``): subscription + ``notificationEvent.id``;
- shapes without event numbers (``LEGACY_SHAPES``: header-announced resources, payload mode):
  subscription + Type/id + ``meta.versionId``, else the body's hash;
- nothing to tell two deliveries apart (an empty POST, a delete without version): a unique key, so both
  are kept; fetching twice is harmless, dropping a change is not.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from datetime import datetime
from typing import Any

from app.db.models import SubscriptionLedger, string_bounds, truncated
from app.facilities.senders import MessageKey
from app.fhir.notifications import (
    EVENT_TYPES,
    LEGACY_SHAPES,
    EventIdentity,
    Interaction,
    Notification,
    NotificationEvent,
)
from app.fhir.resources import payload_hash
from app.ingest.ledger import LedgerObservation, NumberedEvent

# A sender's values reach bounded columns and indexes; they are made to fit here, before the shared
# commit (one value that does not fit would fail every request in the batch):
# - the subscription status (``subscription_ledger.last_status``) is cut to its column, visibly;
# - keys (the subscription, part of the ledger's primary key, and the dedup key, in the inbox's unique
#   index) must stay under a btree entry's ~2.7 kB: a longer one keeps its start and ends in a digest of
#   the whole, so two different values never merge into one key.
LAST_STATUS_MAX = string_bounds(SubscriptionLedger)["last_status"]
KEY_MAX_CHARS = 512  # up to 4 bytes each in UTF-8: 2 kB, under the btree limit with the facility id


def bounded_key(text: str) -> str:
    if len(text) <= KEY_MAX_CHARS:
        return text
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{text[: KEY_MAX_CHARS - len(digest) - 1]}…{digest}"


def _unique() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class InboxEntry:
    """One inbox row as the receiver writes it: every field but ``ledger_index`` is a column of
    ``inbox`` (``INBOX_COLUMNS``); the database fills the rest (status, attempts, timestamps)."""

    facility_id: str
    dedup_key: str
    subscription: str | None
    event_number: int | None
    focus_type: str | None
    focus_id: str | None
    interaction: Interaction | None
    payload: dict[str, Any] | None
    focus_identifier: str | None = None
    # What the notification announced of the focus: its version (``/_history/n``) and the event's time
    # (when precise). A read older than either is read again (``app.ingest.drain``: a lagging replica).
    notified_version: str | None = None
    notified_at: datetime | None = None
    # Index into the notification's LedgerObservation.numbers: the key gets that event's epoch.
    ledger_index: int | None = None


# The inbox columns a receiver writes, from InboxEntry itself; the group-commit writer builds its INSERT
# from this list and takes each column's SQL type from the model (app.db.models.InboxRow).
INBOX_COLUMNS = tuple(f.name for f in fields(InboxEntry) if f.name != "ledger_index")


@dataclass(frozen=True)
class Refusal:
    event_number: int | None
    reason: str


@dataclass(frozen=True)
class Intake:
    """Everything one notification asks the writer to commit. ``message`` is the sender's message id
    (Standard Webhooks): committed with the rows, and when already committed, nothing is."""

    entries: list[InboxEntry]
    refused: list[Refusal]
    observation: LedgerObservation
    message: MessageKey | None = None


def dedup_key(
    subscription: str | None, event: NotificationEvent, *, fallback: str | Callable[[], str]
) -> str:
    """What makes two deliveries the same event, when the event number is not used (see the module
    docstring): the focus version, else the payload's content hash. With neither two deliveries cannot
    be told apart, so ``fallback`` (a unique value, or a function making one) keeps both: fetching twice
    is harmless, dropping an update is not. A delete without a version is never merged either (a
    resource deleted, re-created and deleted again needs both deletes)."""
    focus = event.focus
    target = focus.relative if focus else (event.focus_identifier or "-")
    action = event.interaction or "-"
    sub = subscription or "-"
    if event.event_number is not None:
        # An event id, when sent, keeps two events apart even if a sender reuses numbers (numbers that
        # restart per bundle, from a facility whose identity was left at ``number``).
        suffix = f"|{event.event_id}" if event.event_id else ""
        return f"evt|{sub}|{event.event_number}|{target}|{action}{suffix}"
    if focus is not None and focus.version is not None:
        return f"ver|{sub}|{target}/_history/{focus.version}|{action}"
    if event.resource is not None and action != "delete":
        # With meta: two versions with the same clinical content (a revert A→B→A) are distinct events.
        return f"hash|{sub}|{target}|{payload_hash(event.resource)}|{action}"
    return f"once|{target}|{fallback if isinstance(fallback, str) else fallback()}"


def intake_for(
    facility_id: str, notification: Notification, *, event_identity: EventIdentity = "number"
) -> Intake:
    """One inbox entry per storable event, and the ledger observation of the notification. Refused
    events (foreign host, bad focus) are returned apart, so the caller can count and log them.
    Handshakes and heartbeats carry no events and give no entries."""
    entries: list[InboxEntry] = []
    refused: list[Refusal] = []
    numbers: list[NumberedEvent] = []
    use_numbers = event_identity == "number" and notification.shape not in LEGACY_SHAPES
    is_event = notification.type in EVENT_TYPES
    subscription = bounded_key(notification.subscription) if notification.subscription else None
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
        key = bounded_key(key)
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
                notified_version=event.focus.version if event.focus else None,
                notified_at=event.timestamp.value if event.timestamp and event.timestamp.precise else None,
                ledger_index=index,
            )
        )
    observation = LedgerObservation(
        facility_id=facility_id,
        subscription=subscription or "",
        type=notification.type,
        status=truncated(notification.status, LAST_STATUS_MAX) if notification.status else None,
        events_since_start=notification.events_since_start if use_numbers else None,
        numbers=numbers,
    )
    return Intake(entries, refused, observation)
