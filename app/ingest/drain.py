"""Draining a facility's inbox: claim a batch, fetch concurrently, store in one transaction.

Contract: idempotent and safe to run concurrently for the same facility (rows are claimed with
FOR UPDATE SKIP LOCKED under a lease; the store is version-guarded). A worker that dies mid-batch
leaves its rows pending; they become claimable again when the lease runs out. Retry policy: the EHR
client retries transient failures briefly; what still fails is backed off in Postgres
(``next_attempt_at``, exponential, honouring Retry-After) up to ``max_attempts``, then dead-lettered.
Permanent failures are dead-lettered at once with their reason.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from sqlalchemy.orm import Session, sessionmaker

from app.db.models import Facility
from app.ehr.client import EHRClient
from app.errors import EHRRateLimited, PermanentEHRError, TransientEHRError
from app.fhir.references import ResourceRef
from app.ingest import queries
from app.ingest.fetch import SeenReferences, fetch_resources, normalize
from app.ingest.store import Observed, StoreStats, store_versions
from app.settings import Settings
from app.vendors.base import VendorAdapter
from app.vendors.registry import adapter_for

log = structlog.get_logger("ingest.drain")

_SEEN = SeenReferences()  # per process: referenced resources already fetched


@dataclass(frozen=True)
class ClaimedRow:
    id: int
    focus: ResourceRef | None
    interaction: str | None
    payload: dict[str, Any] | None
    attempts: int
    received_at: datetime


@dataclass
class DrainReport:
    claimed: int = 0
    done: int = 0
    retried: int = 0
    dead: int = 0
    stale: int = 0
    more: bool = False
    reasons: dict[str, int] = field(default_factory=dict)


def claim(session: Session, facility_id: str, *, limit: int, lease: timedelta) -> list[ClaimedRow]:
    rows = session.execute(queries.CLAIM, {"facility_id": facility_id, "limit": limit, "lease": lease}).all()
    return [
        ClaimedRow(
            id=r.id,
            focus=ResourceRef(r.focus_type, r.focus_id) if r.focus_type and r.focus_id else None,
            interaction=r.interaction,
            payload=r.payload,
            attempts=r.attempts,
            received_at=r.received_at,
        )
        for r in rows
    ]


def backoff(settings: Settings, attempts: int, retry_after: float | None) -> timedelta:
    """Exponential with full jitter in [0.5, 1] of the step, capped; never sooner than Retry-After."""
    step = settings.retry_base.total_seconds() * 2 ** max(0, attempts - 1)
    delay = min(settings.retry_cap.total_seconds(), step) * random.uniform(0.5, 1.0)  # noqa: S311 - jitter
    if retry_after is not None:
        delay = max(delay, min(retry_after, settings.retry_cap.total_seconds()))
    return timedelta(seconds=delay)


def process_batch(
    session: Session,
    facility: Facility,
    client: EHRClient,
    rows: list[ClaimedRow],
    settings: Settings,
    *,
    adapter: VendorAdapter | None = None,
) -> DrainReport:
    """Fetch what ``rows`` point at and record the outcome of every row. Caller commits."""
    adapter = adapter or adapter_for(facility.vendor, mrn_system=facility.mrn_system)
    report = DrainReport(claimed=len(rows))
    by_focus: dict[ResourceRef, list[ClaimedRow]] = defaultdict(list)
    no_focus: list[int] = []
    observed: list[Observed] = []
    done_ids: list[int] = []
    for row in rows:
        if row.focus is None:
            no_focus.append(row.id)
        elif row.payload is not None:
            # A full-resource payload is the resource: no fetch needed. Its meta orders it.
            focus = row.focus
            observed.append(
                Observed(facility.id, focus.resource_type, focus.resource_id, row.payload, row.received_at)
            )
            done_ids.append(row.id)
        else:
            by_focus[row.focus].append(row)
    fetched = fetch_resources(client, adapter, list(by_focus), workers=settings.fetch_concurrency)
    for ref, outcome in fetched.items():
        ids = [r.id for r in by_focus[ref]]
        if isinstance(outcome, Observed):
            observed.append(outcome)
            done_ids.extend(ids)
            continue
        report.reasons[outcome.reason] = report.reasons.get(outcome.reason, 0) + len(ids)
        attempts = max(r.attempts for r in by_focus[ref])
        params = {"ids": ids, "reason": outcome.reason, "detail": outcome.detail[:500]}
        if isinstance(outcome, PermanentEHRError) or attempts >= settings.max_attempts:
            session.execute(queries.MARK_DEAD, params)
            report.dead += len(ids)
            log.warning(
                "ingest.dead_letter",
                facility_id=facility.id,
                rows=len(ids),
                reason=outcome.reason,
                resource_type=ref.resource_type,
                attempts=attempts,
            )
        else:
            assert isinstance(outcome, TransientEHRError)
            retry_after = outcome.retry_after if isinstance(outcome, EHRRateLimited) else None
            session.execute(queries.MARK_RETRY, {**params, "delay": backoff(settings, attempts, retry_after)})
            report.retried += len(ids)
    observed = _with_references(client, adapter, observed, settings, report)
    stats: StoreStats = store_versions(session, observed)
    report.stale += stats.stale
    if done_ids:
        session.execute(queries.MARK_DONE, {"ids": done_ids, "reason": None})
        report.done += len(done_ids)
    if no_focus:
        # An `empty` notification names nothing to fetch; the reconciler's poll covers it.
        session.execute(queries.MARK_DONE, {"ids": no_focus, "reason": "no_focus"})
        report.done += len(no_focus)
    return report


def _with_references(
    client: EHRClient,
    adapter: VendorAdapter,
    observed: list[Observed],
    settings: Settings,
    report: DrainReport,
) -> list[Observed]:
    """Normalize, then fetch (once per process and facility) what the resources reference and need, such as
    Epic's separate Medication resources. A reference that cannot be read now does not hold back the
    resource that names it: the consumer view shows the medication as unresolved until it arrives."""
    now = datetime.now(UTC)
    normalized, wanted = normalize(adapter, observed, now=now)
    present = {ResourceRef(o.resource_type, o.resource_id) for o in observed}
    missing = _SEEN.unseen(client.facility_id, (ref for ref in wanted if ref not in present))
    if not missing:
        return normalized
    fetched = fetch_resources(client, adapter, missing, workers=settings.fetch_concurrency)
    extra = [outcome for outcome in fetched.values() if isinstance(outcome, Observed)]
    for ref, outcome in fetched.items():
        if not isinstance(outcome, Observed):
            report.reasons[f"reference_{outcome.reason}"] = (
                report.reasons.get(f"reference_{outcome.reason}", 0) + 1
            )
            log.info(
                "ingest.reference_unresolved",
                facility_id=client.facility_id,
                resource_type=ref.resource_type,
                reason=outcome.reason,
            )
    _SEEN.remember(client.facility_id, (ResourceRef(o.resource_type, o.resource_id) for o in extra))
    more, _ = normalize(adapter, extra, now=now)
    return normalized + more


def drain_facility(
    sessions: sessionmaker[Session],
    client_for: Callable[[Facility], EHRClient],
    facility_id: str,
    settings: Settings,
) -> DrainReport:
    """Drain until the facility has no due rows or the time budget is spent (then ``more`` is True)."""
    total = DrainReport()
    deadline = time.monotonic() + settings.drain_time_budget.total_seconds()
    with sessions() as session:
        facility = session.get(Facility, facility_id)
        if facility is None or not facility.enabled:
            log.warning("ingest.drain.unknown_facility", facility_id=facility_id)
            return total
        session.expunge(facility)
    client = client_for(facility)
    adapter = adapter_for(facility.vendor, mrn_system=facility.mrn_system)
    while True:
        with sessions.begin() as session:
            rows = claim(session, facility_id, limit=settings.drain_batch, lease=settings.lease)
        if not rows:
            break
        try:
            with sessions.begin() as session:
                report = process_batch(session, facility, client, rows, settings, adapter=adapter)
        except Exception:
            # Our own failure (a bug, the database going away): the batch rolled back. Put the rows back
            # on a back-off so one bad row cannot spin a worker, then let the task layer see the error.
            _release_after_failure(sessions, rows, settings)
            raise
        _accumulate(total, report)
        log.info(
            "ingest.batch",
            facility_id=facility_id,
            claimed=report.claimed,
            done=report.done,
            retried=report.retried,
            dead=report.dead,
            stale=report.stale,
        )
        if time.monotonic() >= deadline:
            total.more = True
            break
    return total


def _release_after_failure(
    sessions: sessionmaker[Session], rows: list[ClaimedRow], settings: Settings
) -> None:
    exhausted = [r.id for r in rows if r.attempts >= settings.max_attempts]
    retry = [r.id for r in rows if r.attempts < settings.max_attempts]
    try:
        with sessions.begin() as session:
            detail = "unexpected error while processing the batch; see worker logs"
            if exhausted:
                session.execute(
                    queries.MARK_DEAD, {"ids": exhausted, "reason": "internal_error", "detail": detail}
                )
            if retry:
                attempts = max(r.attempts for r in rows)
                session.execute(
                    queries.MARK_RETRY,
                    {
                        "ids": retry,
                        "reason": "internal_error",
                        "detail": detail,
                        "delay": backoff(settings, attempts, None),
                    },
                )
    except Exception:
        log.exception("ingest.release_failed", rows=len(rows))


def _accumulate(total: DrainReport, report: DrainReport) -> None:
    total.claimed += report.claimed
    total.done += report.done
    total.retried += report.retried
    total.dead += report.dead
    total.stale += report.stale
    for reason, n in report.reasons.items():
        total.reasons[reason] = total.reasons.get(reason, 0) + n
