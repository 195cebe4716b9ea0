"""Feed health's use cases: read it (``feed_health``, for the CLI and the detectors) and evaluate it
(``evaluate``: the entry point the alert beat calls, handing its result to ``app.alerts``).

``evaluate`` is safe to run from two processes at once: deciding a quiet check is a conditional update,
and a source has at most one open check (a partial unique index), so a suspected quiet feed asks for
one reconcile. The caller owns the transaction (this module flushes, never commits).
"""

from __future__ import annotations

from datetime import datetime, timedelta

import structlog
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.alerts.conditions import Condition
from app.db.models import Facility
from app.errors import (
    EHRAuthRejected,
    EHRForbidden,
    EHRTokenExpired,
    IngestError,
    PolitenessThrottled,
    reasons,
)
from app.facilities.schemas import FeedHealthConfig
from app.feeds import queries
from app.feeds.detectors import Detection, Key, Suspect, detect
from app.feeds.health import FacilityHealth, QuietCheck, SourceHealth
from app.feeds.metrics import record_feed_health
from app.reconcile.requests import request_reconcile

log = structlog.get_logger("feeds")

#: The reconcile trigger of a quiet check (``reconcile_runs.trigger``).
QUIET_TRIGGER = "feed_quiet"

_HOUR = timedelta(hours=1)


def _reason_slugs(*bases: type[IngestError]) -> list[str]:
    """The slugs of ``bases`` and of every class below them (an abstract base's own slug included)."""
    below = {slug for slug, cls in reasons().items() if issubclass(cls, bases)}
    return sorted(below | {base.reason for base in bases})


#: Inbox reasons that are authentication failures (revoked or wrong credentials, a token refused twice,
#: a 403); our own pacing (``PolitenessThrottled``) is no failure at all.
AUTH_REASONS = _reason_slugs(EHRAuthRejected, EHRTokenExpired, EHRForbidden)
NOT_FAILURES = _reason_slugs(PolitenessThrottled)


def facility_config(facility: Facility) -> FeedHealthConfig:
    """The facility's thresholds (validated when applied); the defaults if the stored block went stale."""
    try:
        return FeedHealthConfig.model_validate(facility.feed_health or {})
    except ValidationError:
        log.warning("feeds.config_invalid", facility_id=facility.id)
        return FeedHealthConfig()


def feed_health(session: Session, now: datetime, *, facility: str | None = None) -> list[FacilityHealth]:
    """Every facility's health (or one's), computed in Postgres: the facilities, then four statements
    (sources, history, quiet checks, facility figures) for all of them at once."""
    query = select(Facility).order_by(Facility.id)
    if facility is not None:
        query = query.where(Facility.id == facility)
    facilities = list(session.scalars(query))
    if not facilities:
        return []
    by_id = {f.id: f for f in facilities}
    configs = {f.id: facility_config(f) for f in facilities}
    fids = [f.id for f in facilities]
    latency_s = [configs[f].detection_latency.total_seconds() for f in fids]
    error_s = [configs[f].error_window.total_seconds() for f in fids]
    leak_s = [configs[f].leak_window.total_seconds() for f in fids]
    settle_s = [configs[f].leak_settle.total_seconds() for f in fids]
    params = {
        "now": now,
        "fids": fids,
        "latency_s": latency_s,
        "error_s": error_s,
        "leak_s": leak_s,
        "settle_s": settle_s,
    }
    span = max([_HOUR.total_seconds(), *latency_s, *error_s, *leak_s])  # every window of the SOURCES scan
    weeks = max(c.history_weeks for c in configs.values())
    history: dict[tuple[str, str], dict[int, int]] = {}
    for row in session.execute(queries.HISTORY, {"now": now, "fids": fids, "weeks": weeks}):
        history.setdefault((row.facility_id, row.source), {})[int(row.k)] = int(row.events)
    checks = {
        (r.facility_id, r.source): QuietCheck(
            r.reason, r.suspected_at, r.silent_since, r.outcome, r.recovered, r.decided_at
        )
        for r in session.execute(queries.LATEST_CHECKS, {"fids": fids})
    }
    sources: dict[str, list[SourceHealth]] = {}
    for r in session.execute(queries.SOURCES, {**params, "span_s": span}):
        fac = by_id[r.facility_id]
        sources.setdefault(r.facility_id, []).append(
            SourceHealth(
                facility_id=r.facility_id,
                source=r.source,
                last_event_at=r.last_event_at,
                last_heartbeat_at=r.last_heartbeat_at,
                last_handshake_at=r.last_handshake_at,
                events_last_hour=int(r.events_last_hour),
                events_in_window=int(r.events_in_window),
                events_in_error_window=int(r.events_in_error_window),
                events_in_leak_window=int(r.events_in_leak_window),
                open_gaps=int(r.open_gaps),
                subscribed=bool(r.subscribed),
                status=r.status,
                heartbeat_s=r.heartbeat_s,
                last_error=r.last_error,
                reactivations=int(r.reactivations),
                last_checked_at=r.last_checked_at,
                subscribed_at=r.subscribed_at,
                history=_learned(history.get((r.facility_id, r.source), {}), fac, configs[fac.id], now),
                check=checks.get((r.facility_id, r.source)),
            )
        )
    for (fid, name), counts in history.items():
        # Seen at this time of past weeks, silent since (beyond every recent window): the quietest source.
        if not any(s.source == name for s in sources.get(fid, [])):
            fac = by_id[fid]
            sources.setdefault(fid, []).append(
                SourceHealth(
                    fid, name, history=_learned(counts, fac, configs[fid], now), check=checks.get((fid, name))
                )
            )
    found = []
    for r in session.execute(
        queries.FACILITIES, {**params, "auth_reasons": AUTH_REASONS, "not_failures": NOT_FAILURES}
    ):
        fac = by_id[r.facility_id]
        found.append(
            FacilityHealth(
                facility_id=r.facility_id,
                config=configs[r.facility_id],
                enabled=fac.enabled,
                backlog=int(r.backlog),
                backlog_oldest_at=r.backlog_oldest_at,
                fetch_failures=int(r.fetch_failures),
                auth_failures=int(r.auth_failures),
                signature_failures=int(r.signature_failures),
                quarantined=int(r.quarantined),
                quarantined_recent=int(r.quarantined_recent),
                dead_letters=int(r.dead_letters),
                dead_letters_new=int(r.dead_letters_new),
                recovered_last_hour=int(r.recovered_last_hour),
                recovered_in_leak_window=int(r.recovered_in_leak_window),
                token_rejected_at=r.token_rejected_at,
                token_ok_at=r.token_ok_at,
                capabilities_gone=tuple(r.capabilities_gone),
                probe_ok=r.probe_ok,
                probe_reason=r.probe_reason,
                reconciled_at=r.reconciled_at,
                reconcile_outcome=r.reconcile_outcome,
                sources=tuple(sorted(sources.get(r.facility_id, []), key=lambda s: s.source)),
            )
        )
    return found


def _learned(
    counts: dict[int, int], facility: Facility, config: FeedHealthConfig, now: datetime
) -> tuple[int, ...]:
    """The events of each past week (newest first) whose hour at this time of the week the facility
    already existed for: a week before it was registered teaches nothing (it would read as silence)."""
    weeks = []
    for k in range(1, config.history_weeks + 1):
        start = now - timedelta(weeks=k) - _HOUR
        if facility.created_at > start:
            break
        weeks.append(counts.get(k, 0))
    return tuple(weeks)


def decide_checks(session: Session, now: datetime) -> int:
    """Decide the open quiet checks a reconcile has answered since; returns how many."""
    decided = 0
    for row in session.execute(queries.DECIDE_CHECKS, {"now": now}):
        decided += 1
        event = "feeds.quiet.leaking" if row.outcome == "leaking" else "feeds.quiet.genuine"
        log.info(
            event, facility_id=row.facility_id, source=row.source, recovered=row.recovered, run_id=row.run_id
        )
    session.flush()
    return decided


def open_checks(session: Session, suspects: list[Suspect], now: datetime) -> int:
    """Open a quiet check for each suspect and ask for a reconcile of its facility at once (the reconcile
    fan-out treats a requested run as due); a source with an open check asks nothing twice."""
    opened = 0
    for suspect in suspects:
        inserted = session.execute(
            queries.OPEN_CHECK,
            {
                "fid": suspect.facility_id,
                "source": suspect.source,
                "reason": suspect.reason,
                "now": now,
                "silent_since": suspect.silent_since,
            },
        ).first()
        if inserted is None:
            continue
        request_reconcile(session, suspect.facility_id, QUIET_TRIGGER)
        opened += 1
        log.info(
            "feeds.quiet.suspected",
            facility_id=suspect.facility_id,
            source=suspect.source,
            reason=suspect.reason,
        )
    session.flush()
    return opened


def evaluate(session: Session, now: datetime) -> tuple[list[Condition], set[Key]]:
    """One pass over every facility: decide answered quiet checks, compute health, detect, open checks for
    suspected quiet sources, export the gauges. Returns (conditions holding now, keys evaluated) for
    ``app.alerts``. The caller commits."""
    decide_checks(session, now)
    health = feed_health(session, now)
    detection: Detection = detect(health, now)
    open_checks(session, detection.suspects, now)
    record_feed_health(health, detection.conditions, detection.evaluated, now)
    return detection.conditions, detection.evaluated
