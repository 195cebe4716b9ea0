"""From a parsed notification to inbox rows (the receiver side of the ledger)."""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass
from typing import Any

from app.fhir.notifications import Notification, dedup_key


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

    def as_row(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Refusal:
    event_number: int | None
    reason: str


def entries_for(facility_id: str, notification: Notification) -> tuple[list[InboxEntry], list[Refusal]]:
    """One inbox entry per storable event; refused events (foreign host, bad focus) are returned apart so
    the caller can count and log them. Handshakes and heartbeats carry no events and give no entries."""
    entries: list[InboxEntry] = []
    refused: list[Refusal] = []
    if notification.type not in ("event-notification", "query-event"):
        return entries, refused
    for event in notification.events:
        if event.refused is not None:
            refused.append(Refusal(event.event_number, event.refused))
            continue
        entries.append(
            InboxEntry(
                facility_id=facility_id,
                dedup_key=dedup_key(notification.subscription, event, fallback=uuid.uuid4().hex),
                subscription=notification.subscription,
                event_number=event.event_number,
                focus_type=event.focus.resource_type if event.focus else None,
                focus_id=event.focus.resource_id if event.focus else None,
                interaction=event.interaction,
                payload=event.resource,
            )
        )
    return entries, refused
