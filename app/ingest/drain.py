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
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from sqlalchemy.orm import Session, sessionmaker

from app.db.models import Facility
from app.ehr.client import EHRClient
from app.errors import EHRRateLimited, EHRUnavailable, IngestError, PermanentEHRError
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
    focus_type: str | None = None
    focus_identifier: str | None = None  # "system|value": an identifier-only focus (athena)
    claim_token: str | None = None


@dataclass
class DrainReport:
    claimed: int = 0
    done: int = 0
    retried: int = 0
    dead: int = 0
    stale: int = 0
    more: bool = False
    reasons: dict[str, int] = field(default_factory=dict)
    referenced: list[ResourceRef] = field(default_factory=list)  # referenced resources fetched and stored


def claim(session: Session, facility_id: str, *, limit: int, lease: timedelta) -> list[ClaimedRow]:
    token = str(uuid.uuid4())
    rows = session.execute(
        queries.CLAIM, {"facility_id": facility_id, "limit": limit, "lease": lease, "token": token}
    ).all()
    return [
        ClaimedRow(
            id=r.id,
            focus=ResourceRef(r.focus_type, r.focus_id) if r.focus_type and r.focus_id else None,
            interaction=r.interaction,
            payload=r.payload,
            attempts=r.attempts,
            received_at=r.received_at,
            focus_type=r.focus_type,
            focus_identifier=r.focus_identifier,
            claim_token=str(r.claim_token),
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
    token = rows[0].claim_token if rows else None  # one claim, one token
    work = _sort(facility.id, rows)
    by_focus, by_identifier, no_focus = work.by_focus, work.by_identifier, work.no_focus
    observed, done_ids = work.observed, work.done_ids
    fetched = fetch_resources(client, adapter, list(by_focus), workers=settings.fetch_concurrency)
    for ref, outcome in fetched.items():
        if isinstance(outcome, Observed):
            observed.append(outcome)
            done_ids.extend(r.id for r in by_focus[ref])
        else:
            _record_failure(
                session,
                by_focus[ref],
                outcome,
                facility_id=facility.id,
                resource_type=ref.resource_type,
                settings=settings,
                report=report,
            )
    for (resource_type, identifier), waiting in by_identifier.items():
        found = _search_identifier(client, adapter, resource_type, identifier)
        if isinstance(found, list):
            observed.extend(found)
            done_ids.extend(r.id for r in waiting)
        else:
            _record_failure(
                session,
                waiting,
                found,
                facility_id=facility.id,
                resource_type=resource_type,
                settings=settings,
                report=report,
            )
    observed = _with_references(client, adapter, observed, settings, report)
    stats: StoreStats = store_versions(session, observed)
    report.stale += stats.stale
    if done_ids:
        session.execute(queries.MARK_DONE, {"ids": done_ids, "reason": None, "token": token})
        report.done += len(done_ids)
    if no_focus:
        # An `empty` notification (HAPI's payload-less POST, backport `empty`) names nothing to fetch: only
        # a backfill of the facility can find what changed. Until the reconciler polls, these rows are
        # dead letters with that reason (visible, countable, replayable), never quietly done.
        detail = "the notification names no resource; backfill this facility since the row's received_at"
        params = {"ids": no_focus, "reason": "needs_backfill", "detail": detail, "token": token}
        session.execute(queries.MARK_DEAD, params)
        report.dead += len(no_focus)
        report.reasons["needs_backfill"] = report.reasons.get("needs_backfill", 0) + len(no_focus)
        log.warning("ingest.needs_backfill", facility_id=facility.id, rows=len(no_focus))
    return report


@dataclass
class _Work:
    by_focus: dict[ResourceRef, list[ClaimedRow]] = field(default_factory=lambda: defaultdict(list))
    by_identifier: dict[tuple[str, str], list[ClaimedRow]] = field(default_factory=lambda: defaultdict(list))
    no_focus: list[int] = field(default_factory=list)
    observed: list[Observed] = field(default_factory=list)  # full-resource payloads: no fetch needed
    done_ids: list[int] = field(default_factory=list)


def _sort(facility_id: str, rows: list[ClaimedRow]) -> _Work:
    work = _Work()
    for row in rows:
        if row.focus is None and row.focus_identifier and row.focus_type:
            work.by_identifier[(row.focus_type, row.focus_identifier)].append(row)
        elif row.focus is None:
            work.no_focus.append(row.id)
        elif row.payload is not None and _payload_matches(row.payload, row.focus):
            # A full-resource payload is the resource; its meta orders it against fetched versions.
            # One that does not match its focus is ignored: the resource is fetched instead.
            focus = row.focus
            work.observed.append(
                Observed(facility_id, focus.resource_type, focus.resource_id, row.payload, row.received_at)
            )
            work.done_ids.append(row.id)
        else:
            work.by_focus[row.focus].append(row)
    return work


def _payload_matches(payload: dict[str, Any], focus: ResourceRef) -> bool:
    return payload.get("resourceType") == focus.resource_type and payload.get("id") == focus.resource_id


def _record_failure(
    session: Session,
    rows: list[ClaimedRow],
    error: IngestError,
    *,
    facility_id: str,
    resource_type: str,
    settings: Settings,
    report: DrainReport,
) -> None:
    """Back a transient failure off in Postgres; dead-letter a permanent one or an exhausted budget."""
    ids = [r.id for r in rows]
    report.reasons[error.reason] = report.reasons.get(error.reason, 0) + len(ids)
    attempts = max(r.attempts for r in rows)
    params = {"ids": ids, "reason": error.reason, "detail": error.detail[:500], "token": rows[0].claim_token}
    if isinstance(error, PermanentEHRError) or attempts >= settings.max_attempts:
        session.execute(queries.MARK_DEAD, params)
        report.dead += len(ids)
        log.warning(
            "ingest.dead_letter",
            facility_id=facility_id,
            rows=len(ids),
            reason=error.reason,
            resource_type=resource_type,
            attempts=attempts,
        )
        return
    retry_after = error.retry_after if isinstance(error, EHRRateLimited) else None
    session.execute(queries.MARK_RETRY, {**params, "delay": backoff(settings, attempts, retry_after)})
    report.retried += len(ids)


def _search_identifier(
    client: EHRClient, adapter: VendorAdapter, resource_type: str, identifier: str
) -> list[Observed] | IngestError:
    """Resolve an identifier-only focus by search. Nothing found may be an index not yet updated: a
    transient error, so the row backs off and, if it never resolves, ends visible in dead letters."""
    try:
        bundles = client.search(resource_type, {"identifier": identifier})
    except IngestError as exc:
        return exc
    fetched_at = datetime.now(UTC)
    found = [
        Observed(client.facility_id, resource_type, str(resource["id"]), resource, fetched_at)
        for bundle in bundles
        for resource in adapter.search_entries(bundle)
        if resource.get("resourceType") == resource_type and isinstance(resource.get("id"), str)
    ]
    if not found:
        return EHRUnavailable("identifier_not_found", f"no {resource_type} with the focus identifier yet")
    return found


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
    # Remembered by drain_facility once the batch has committed: a rolled-back fetch must be fetched again.
    report.referenced.extend(ResourceRef(o.resource_type, o.resource_id) for o in extra)
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
    try:
        client = client_for(facility)
    except IngestError as exc:
        # A facility we cannot talk to at all (a secret that cannot be read, a bad key): its rows back
        # off and end in dead letters with the reason, rather than waiting unseen forever.
        return _fail_due_rows(sessions, facility, exc, settings)
    adapter = adapter_for(facility.vendor, mrn_system=facility.mrn_system)
    while True:
        with sessions.begin() as session:
            rows = claim(session, facility_id, limit=settings.drain_batch, lease=settings.lease)
        if not rows:
            break
        try:
            with sessions.begin() as session:
                report = process_batch(session, facility, client, rows, settings, adapter=adapter)
        except Exception as exc:  # noqa: BLE001 - every failure is recorded on its rows, none escapes
            if len(rows) == 1:
                # Our own failure (a bug, the database going away): back the row off so it cannot spin a
                # worker, and let the task layer see the error, described without its message: a
                # database error's text can quote the data it refused.
                _release_after_failure(sessions, rows, settings)
                raise IngestError("internal_error", str(_describe(exc))) from None
            # One poison row must not hold back (and finally dead-letter) the good rows claimed with it:
            # redo the batch one row per transaction, so only the failing rows are backed off.
            log.warning("ingest.batch_failed_isolating", facility_id=facility_id, rows=len(rows))
            report = _one_by_one(sessions, facility, client, rows, settings, adapter=adapter)
        _SEEN.remember(facility_id, report.referenced)
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


def _one_by_one(
    sessions: sessionmaker[Session],
    facility: Facility,
    client: EHRClient,
    rows: list[ClaimedRow],
    settings: Settings,
    *,
    adapter: VendorAdapter,
) -> DrainReport:
    total = DrainReport()
    for row in rows:
        try:
            with sessions.begin() as session:
                report = process_batch(session, facility, client, [row], settings, adapter=adapter)
            _accumulate(total, report)
        except Exception as exc:  # noqa: BLE001 - recorded on the row; the other rows go on
            log.warning("ingest.row_failed", facility_id=facility.id, inbox_id=row.id, **_describe(exc))
            _release_after_failure(sessions, [row], settings)
            total.claimed += 1
            total.retried += 1
    return total


def _fail_due_rows(
    sessions: sessionmaker[Session], facility: Facility, error: IngestError, settings: Settings
) -> DrainReport:
    report = DrainReport()
    log.error("ingest.facility_unusable", facility_id=facility.id, reason=error.reason)
    with sessions.begin() as session:
        rows = claim(session, facility.id, limit=settings.drain_batch, lease=settings.lease)
        if rows:
            report.claimed = len(rows)
            _record_failure(
                session,
                rows,
                error,
                facility_id=facility.id,
                resource_type="-",
                settings=settings,
                report=report,
            )
    report.more = len(rows) == settings.drain_batch
    return report


def _describe(exc: BaseException) -> dict[str, str]:
    """An error as ids and codes only (DESIGN.md rule 6): its type and, for Postgres, its SQLSTATE."""
    described = {"error": type(exc).__name__}
    sqlstate = getattr(getattr(exc, "orig", None), "sqlstate", None)
    if sqlstate:
        described["sqlstate"] = str(sqlstate)
    return described


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
                    queries.MARK_DEAD,
                    {
                        "ids": exhausted,
                        "reason": "internal_error",
                        "detail": detail,
                        "token": rows[0].claim_token,
                    },
                )
            if retry:
                attempts = max(r.attempts for r in rows)
                session.execute(
                    queries.MARK_RETRY,
                    {
                        "ids": retry,
                        "reason": "internal_error",
                        "detail": detail,
                        "token": rows[0].claim_token,
                        "delay": backoff(settings, attempts, None),
                    },
                )
    except Exception as exc:  # noqa: BLE001 - the lease still guarantees the rows come back
        log.warning("ingest.release_failed", rows=len(rows), **_describe(exc))


def _accumulate(total: DrainReport, report: DrainReport) -> None:
    total.claimed += report.claimed
    total.done += report.done
    total.retried += report.retried
    total.dead += report.dead
    total.stale += report.stale
    for reason, n in report.reasons.items():
        total.reasons[reason] = total.reasons.get(reason, 0) + n
    total.referenced.extend(report.referenced)
