"""The per-subscription event ledger: what the receiver has seen of each subscription's event counter.

Pure (no I/O, no clock): the inbox writer loads the locked rows, applies every notification of a batch
in arrival order with ``apply`` and writes the rows back in the same transaction as the inbox rows.

Rules (EHR-FACTS.md §2-3). Delivery is unordered, so a number below the highest is normally a late
delivery: it fills an open gap or is a duplicate. It starts a new *epoch* (the server restarted or
recreated the subscription, and numbers began again) only when its event timestamp is later than the
highest event's, or when a handshake or heartbeat reports a counter below the highest. An event older
than the start of the current epoch belongs to the previous one and changes nothing. A number above
the highest + 1, or a heartbeat's ``events-since-subscription-start`` above the highest, opens a gap;
gaps stay listed in ``missing`` until their events arrive (the reconciler recovers what stays missing).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from app.fhir.notifications import NotificationType, Timestamp

MAX_MISSING_RANGES = 100
_BIGINT_MAX = 2**63 - 1  # gaps_observed is a bigint: a sender's far-apart numbers must not overflow it


@dataclass(frozen=True)
class NumberedEvent:
    number: int
    timestamp: Timestamp | None


@dataclass(frozen=True)
class LedgerObservation:
    """One notification as the ledger sees it. ``numbers`` is empty when the sender's event numbers
    are meaningless (the facility's identity is ``event-id``: they restart in every bundle) or absent
    (legacy shapes)."""

    facility_id: str
    subscription: str  # "" for shapes that name no subscription
    type: NotificationType
    status: str | None = None
    events_since_start: int | None = None
    numbers: list[NumberedEvent] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, str]:
        return (self.facility_id, self.subscription)


@dataclass
class LedgerState:
    """One ``subscription_ledger`` row as ``apply`` works on it. These fields are the ledger's columns
    (``LEDGER_COLUMNS``) for every reader and writer; the table (``app.db.models.SubscriptionLedger``)
    adds only its bookkeeping timestamps, and gives the SQL types (a test holds the two together)."""

    facility_id: str
    subscription: str
    epoch: int = 1
    highest_event: int | None = None
    highest_event_at: datetime | None = None
    epoch_started_at: datetime | None = None
    events_since_start: int | None = None
    gaps_observed: int = 0
    missing: list[list[int]] = field(default_factory=list)
    last_status: str | None = None
    notifications: int = 0
    last_notification_at: datetime | None = None
    last_heartbeat_at: datetime | None = None
    last_handshake_at: datetime | None = None

    @classmethod
    def from_row(cls, row: Any) -> LedgerState:
        """From any row with the ``LEDGER_COLUMNS`` as attributes."""
        state = cls(**{column: getattr(row, column) for column in LEDGER_COLUMNS})
        state.missing = [list(r) for r in (state.missing or [])]  # a fresh list: apply mutates it
        return state


LEDGER_COLUMNS = tuple(f.name for f in fields(LedgerState))
LEDGER_KEY = ("facility_id", "subscription")


@dataclass(frozen=True)
class Applied:
    epochs: list[int]  # the epoch of each of ``observation.numbers``, in order
    new_gaps: int
    new_epoch: bool


def _precise(ts: Timestamp | None) -> datetime | None:
    return ts.value if ts is not None and ts.precise else None


def _open_gap(state: LedgerState, first: int, last: int) -> int:
    if last < first:
        return 0
    state.missing.append([first, last])
    if len(state.missing) > MAX_MISSING_RANGES:
        del state.missing[0]  # the oldest gap is the reconciler's by now; keep the row bounded
    state.gaps_observed = min(state.gaps_observed + last - first + 1, _BIGINT_MAX)
    return last - first + 1


def _fill(state: LedgerState, number: int) -> bool:
    for index, (first, last) in enumerate(state.missing):
        if first <= number <= last:
            pieces = [[first, number - 1], [number + 1, last]]
            state.missing[index : index + 1] = [p for p in pieces if p[0] <= p[1]]
            return True
    return False


def _new_epoch(state: LedgerState, counter: int, started_at: datetime | None) -> int:
    state.epoch += 1
    state.highest_event = counter
    state.highest_event_at = started_at
    state.epoch_started_at = started_at
    state.missing = []
    return _open_gap(state, 1, counter - 1)


def apply(state: LedgerState, obs: LedgerObservation, now: datetime) -> Applied:  # noqa: PLR0912 - the rules above, in order
    """Record ``obs`` in ``state`` (mutated) and say which epoch each numbered event belongs to."""
    state.notifications += 1
    state.last_notification_at = now
    if obs.status is not None:
        state.last_status = obs.status
    if obs.type == "heartbeat":
        state.last_heartbeat_at = now
    elif obs.type == "handshake":
        state.last_handshake_at = now
    epochs: list[int] = []
    gaps = 0
    new_epoch = False
    for event in obs.numbers:
        number, at = event.number, _precise(event.timestamp)
        if state.highest_event is None:
            state.highest_event, state.highest_event_at = number, at
            state.epoch_started_at = state.epoch_started_at or at
        elif at is not None and state.epoch_started_at is not None and at < state.epoch_started_at:
            epochs.append(max(1, state.epoch - 1))  # a late event of the previous epoch
            continue
        elif number > state.highest_event:
            gaps += _open_gap(state, state.highest_event + 1, number - 1)
            state.highest_event, state.highest_event_at = number, at
        elif number < state.highest_event and not _fill(state, number):
            highest_at = state.highest_event_at
            if at is not None and highest_at is not None and at > highest_at:
                gaps += _new_epoch(state, number, at)
                new_epoch = True
        epochs.append(state.epoch)
    since = obs.events_since_start
    if since is not None:
        state.events_since_start = since
        if state.highest_event is None:
            state.highest_event = since
        elif since > state.highest_event and obs.type != "query-event":
            gaps += _open_gap(state, state.highest_event + 1, since)
            state.highest_event = since
        elif since < state.highest_event and obs.type in ("handshake", "heartbeat"):
            gaps += _new_epoch(state, since, None)
            new_epoch = True
    return Applied(epochs, gaps, new_epoch)
