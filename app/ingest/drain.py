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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy.orm import Session, sessionmaker

from app.db.models import Facility
from app.ehr.client import EHRClient
from app.errors import EHRRateLimited, IngestError, PermanentEHRError, TransientEHRError
from app.fhir.references import ResourceRef
from app.ingest import queries
from app.ingest.store import Observed, StoreStats, store_versions
from app.settings import Settings

log = structlog.get_logger("ingest.drain")


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


def _fetch_all(
    client: EHRClient, refs: list[ResourceRef], workers: int
) -> dict[ResourceRef, Observed | IngestError]:
    def one(ref: ResourceRef) -> Observed | IngestError:
        try:
            result = client.read(ref)
        except IngestError as exc:
            return exc
        return Observed(
            client.facility_id, ref.resource_type, ref.resource_id, result.resource, result.fetched_at
        )

    if len(refs) <= 1 or workers <= 1:
        return {ref: one(ref) for ref in refs}
    with ThreadPoolExecutor(max_workers=min(workers, len(refs)), thread_name_prefix="fetch") as pool:
        return dict(zip(refs, pool.map(one, refs), strict=True))


def process_batch(
    session: Session, facility: Facility, client: EHRClient, rows: list[ClaimedRow], settings: Settings
) -> DrainReport:
    """Fetch what ``rows`` point at and record the outcome of every row. Caller commits."""
    report = DrainReport(claimed=len(rows))
    by_focus: dict[ResourceRef, list[ClaimedRow]] = defaultdict(list)
    no_focus: list[int] = []
    observed: list[Observed] = []
    for row in rows:
        if row.focus is None:
            no_focus.append(row.id)
        elif row.payload is not None:
            # A full-resource payload is the resource: no fetch needed. Its meta orders it.
            observed.append(
                Observed(
                    facility.id, row.focus.resource_type, row.focus.resource_id, row.payload, row.received_at
                )
            )
            session.execute(queries.MARK_DONE, {"ids": [row.id], "reason": None})
            report.done += 1
        else:
            by_focus[row.focus].append(row)
    fetched = _fetch_all(client, list(by_focus), settings.fetch_concurrency)
    done_ids: list[int] = []
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
    while True:
        with sessions.begin() as session:
            rows = claim(session, facility_id, limit=settings.drain_batch, lease=settings.lease)
        if not rows:
            break
        try:
            with sessions.begin() as session:
                report = process_batch(session, facility, client, rows, settings)
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
