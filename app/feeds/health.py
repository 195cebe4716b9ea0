"""Feed health as the detectors and the CLI read it: one ``FacilityHealth`` per facility with one
``SourceHealth`` per source (``subscription:{id}``, ``adt``). Ids, counts, reason slugs and timestamps
only: never patient data. Built by ``app.feeds.service.feed_health`` from ``app.feeds.queries``."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from app.facilities.schemas import FeedHealthConfig

ADT_SOURCE = "adt"
SUBSCRIPTION_PREFIX = "subscription:"

# What a quiet check concluded (``feed_checks.outcome``).
CHECK_QUIET = "quiet"  # the reconcile found nothing: the data genuinely stopped changing
CHECK_LEAKING = "leaking"  # the reconcile recovered changes the silent feed never delivered


@dataclass(frozen=True)
class QuietCheck:
    """The latest quiet check of a source (``feed_checks``); ``outcome`` None: its reconcile has not run."""

    reason: str
    suspected_at: datetime
    silent_since: datetime | None
    outcome: str | None = None
    recovered: int | None = None
    decided_at: datetime | None = None


@dataclass(frozen=True)
class SourceHealth:
    facility_id: str
    source: str
    last_event_at: datetime | None = None
    last_heartbeat_at: datetime | None = None
    last_handshake_at: datetime | None = None
    events_last_hour: int = 0
    events_in_window: int = 0  # within the facility's detection latency
    events_in_error_window: int = 0
    events_in_leak_window: int = 0
    open_gaps: int = 0  # event numbers the subscription ledger still misses
    #: the facility's kept subscription is this source (``facility_subscriptions``)
    subscribed: bool = False
    status: str | None = None
    heartbeat_s: int | None = None
    last_error: str | None = None
    reactivations: int = 0
    last_checked_at: datetime | None = None
    subscribed_at: datetime | None = None
    #: events in the hour ending at this time of the week, per past week that had history (newest first)
    history: tuple[int, ...] = ()
    check: QuietCheck | None = None

    @property
    def last_activity_at(self) -> datetime | None:
        """The source's last sign of life: an event, a heartbeat or a handshake."""
        stamps = [t for t in (self.last_event_at, self.last_heartbeat_at, self.last_handshake_at) if t]
        return max(stamps, default=None)

    @property
    def learned_per_hour(self) -> float | None:
        return sum(self.history) / len(self.history) if self.history else None

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "last_event_at": _iso(self.last_event_at),
            "last_heartbeat_at": _iso(self.last_heartbeat_at),
            "events_last_hour": self.events_last_hour,
            "events_in_window": self.events_in_window,
            "open_gaps": self.open_gaps,
            "subscribed": self.subscribed,
            "status": self.status,
            "heartbeat_s": self.heartbeat_s,
            "last_error": self.last_error,
            "reactivations": self.reactivations,
            "learned_per_hour": self.learned_per_hour,
            "history_weeks": len(self.history),
            "quiet_check": None
            if self.check is None
            else {
                "reason": self.check.reason,
                "suspected_at": _iso(self.check.suspected_at),
                "outcome": self.check.outcome,
                "recovered": self.check.recovered,
            },
        }


@dataclass(frozen=True)
class FacilityHealth:
    facility_id: str
    config: FeedHealthConfig = field(default_factory=FeedHealthConfig)
    enabled: bool = True
    backlog: int = 0  # undone inbox and ADT rows
    backlog_oldest_at: datetime | None = None
    fetch_failures: int = 0  # in the error window: rows backing off now or dead-lettered in it
    auth_failures: int = 0  # likewise for authentication reasons, plus token refusals
    #: deliveries refused with 401 in the error window (wrong secret, missing or bad signature)
    signature_failures: int = 0
    quarantined: int = 0  # bodies kept in quarantine (webhook and ADT)
    quarantined_recent: int = 0  # of which received in the error window
    dead_letters: int = 0
    dead_letters_new: int = 0  # dead-lettered in the error window
    recovered_last_hour: int = 0
    #: of which no quiet check's reconcile recovered (those are its ``feed_quiet``'s)
    recovered_in_leak_window: int = 0
    token_rejected_at: datetime | None = None
    token_ok_at: datetime | None = None  # the last token issued or renewed
    capabilities_gone: tuple[str, ...] = ()
    probe_ok: bool | None = None
    probe_reason: str | None = None
    reconciled_at: datetime | None = None
    reconcile_outcome: str | None = None
    sources: tuple[SourceHealth, ...] = ()

    @property
    def last_event_at(self) -> datetime | None:
        return max((s.last_event_at for s in self.sources if s.last_event_at), default=None)

    @property
    def events_last_hour(self) -> int:
        return sum(s.events_last_hour for s in self.sources)

    def to_json(self) -> dict[str, Any]:
        return {
            "facility_id": self.facility_id,
            "enabled": self.enabled,
            "last_event_at": _iso(self.last_event_at),
            "events_last_hour": self.events_last_hour,
            "backlog": self.backlog,
            "backlog_oldest_at": _iso(self.backlog_oldest_at),
            "fetch_failures": self.fetch_failures,
            "auth_failures": self.auth_failures,
            "signature_failures": self.signature_failures,
            "quarantined": self.quarantined,
            "quarantined_recent": self.quarantined_recent,
            "dead_letters": self.dead_letters,
            "dead_letters_new": self.dead_letters_new,
            "recovered_last_hour": self.recovered_last_hour,
            "token_rejected_at": _iso(self.token_rejected_at),
            "token_ok_at": _iso(self.token_ok_at),
            "capabilities_gone": list(self.capabilities_gone),
            "probe_ok": self.probe_ok,
            "reconciled_at": _iso(self.reconciled_at),
            "reconcile_outcome": self.reconcile_outcome,
            "error_window_s": self.config.error_window.total_seconds(),
            "detection_latency_s": self.config.detection_latency.total_seconds(),
            "sources": [s.to_json() for s in self.sources],
        }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
