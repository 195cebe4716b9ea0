"""Draining a facility's inbox: claim a batch, run it through the pipeline, record every row's outcome.

Contract: idempotent and safe to run concurrently for the same facility (rows are claimed with
FOR UPDATE SKIP LOCKED under a short lease, renewed while the batch is in flight: ``app.ingest.lease``;
the store is version-guarded). A worker that dies mid-batch leaves its rows pending; they become
claimable again within one lease. Retry policy: the EHR
client retries transient failures briefly; what still fails is backed off in Postgres
(``next_attempt_at``, exponential, honouring Retry-After) up to ``max_attempts``, then dead-lettered.
Permanent failures are dead-lettered at once with their reason (``app.errors``).

Why the drain owns its transactions instead of the task (STYLE.md's "the transaction belongs to the
boundary"): each step needs a different one.

1. The claim commits on its own, at once: the lease and the claim token must be visible to every other
   worker before we spend seconds on the EHR, or two workers would fetch the same rows.
2. The EHR is read with no transaction open: a batch's reads can take many seconds, and an idle
   transaction holds a connection and a snapshot that slow the whole inbox down.
3. The store and the rows' outcomes commit together, or not at all: a row is never ``done`` without its
   resource, nor a resource stored while its row still looks pending.
4. A batch that fails to store is split into one transaction per row, so one poison row cannot hold back
   (and finally dead-letter) the good rows claimed with it.
"""

from __future__ import annotations

import random
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import structlog
from sqlalchemy import CursorResult, TextClause
from sqlalchemy.orm import Session, sessionmaker

from app.db.models import (
    DELETION_NOT_FOUND,
    DELETION_NOT_FOUND_ANNOUNCED,
    DELETION_NOT_FOUND_CONFIRMED,
    Facility,
)
from app.ehr.client import EHRClient
from app.errors import IngestError, InternalError, NotFoundUnconfirmed, OlderThanNotified, RevivalUnverified
from app.fhir import jsonwire
from app.fhir.references import ResourceRef
from app.fhir.resources import resource_meta
from app.ingest import queries
from app.ingest.lease import LeaseKeeper
from app.ingest.pipeline.observed import Observed, Outcome
from app.ingest.pipeline.references import ReferenceCache
from app.ingest.pipeline.service import Fetched, IdentifierKey, Pipeline, Work
from app.metrics import BATCH_SECONDS, DRAIN_SECONDS, INBOX_ROWS, STALE_WRITES
from app.reconcile import coverage
from app.reconcile.requests import request_reconcile
from app.settings import Settings
from app.vendors.base import VendorAdapter

log = structlog.get_logger("ingest.drain")


@dataclass(frozen=True)
class ClaimedRow:
    id: int
    focus: ResourceRef | None
    interaction: str | None
    payload: dict[str, Any] | None
    attempts: int
    received_at: datetime
    focus_type: str | None = None
    focus_identifier: str | None = None  # "system|value": a focus named by identifier only
    claim_token: str | None = None
    previous_reason: str | None = None  # the reason of the row's last failed attempt, if any
    notified_version: str | None = None  # what the notification announced (``app.ingest.inbox``)
    notified_at: datetime | None = None


@dataclass
class DrainReport:
    claimed: int = 0
    done: int = 0
    retried: int = 0
    dead: int = 0
    stale: int = 0
    more: bool = False
    reconcile_requested: bool = False  # a notification named nothing: the facility is to be reconciled
    reasons: dict[str, int] = field(default_factory=dict)
    rows: dict[tuple[str, str], int] = field(default_factory=dict)  # (outcome, reason or "-") -> rows

    def count(self, outcome: str, reason: str | None, n: int) -> None:
        key = (outcome, reason or "-")
        self.rows[key] = self.rows.get(key, 0) + n
        setattr(self, outcome, getattr(self, outcome) + n)
        if reason is not None:
            self.reasons[reason] = self.reasons.get(reason, 0) + n


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
            payload=jsonwire.loads(r.payload) if r.payload is not None else None,
            attempts=r.attempts,
            received_at=r.received_at,
            focus_type=r.focus_type,
            focus_identifier=r.focus_identifier,
            claim_token=str(r.claim_token),
            previous_reason=r.reason,
            notified_version=r.notified_version,
            notified_at=r.notified_at,
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
    pipeline: Pipeline | None = None,
) -> DrainReport:
    """Fetch what ``rows`` point at, store it and record the outcome of every row. Caller commits."""
    pipeline = pipeline if pipeline is not None else Pipeline.for_facility(facility, client, settings)
    plan = _plan(facility.id, rows, tombstoned=tombstoned(session, facility.id, rows))
    fetched = pipeline.fetch(plan.work())
    return _record(session, pipeline, plan, fetched, settings)


def tombstoned(session: Session, facility_id: str, rows: list[ClaimedRow]) -> frozenset[ResourceRef]:
    """The payload rows' resources that are tombstones now: they are read as well (a late payload must
    not revive a deletion; the store refuses it anyway, this saves the retry)."""
    refs = {r.focus for r in rows if r.payload is not None and r.focus is not None}
    if not refs:
        return frozenset()
    keys = {"facility_id": [facility_id] * len(refs)}
    keys |= {"resource_type": [r.resource_type for r in refs], "resource_id": [r.resource_id for r in refs]}
    return frozenset(
        ResourceRef(r.resource_type, r.resource_id) for r in session.execute(queries.TOMBSTONED, keys)
    )


@dataclass
class _Plan:
    """Claimed rows sorted by what the pipeline must do for them; one focus may stand for many rows."""

    facility_id: str
    tombstoned: frozenset[ResourceRef] = frozenset()
    by_focus: dict[ResourceRef, list[ClaimedRow]] = field(default_factory=lambda: defaultdict(list))
    by_identifier: dict[IdentifierKey, list[ClaimedRow]] = field(default_factory=lambda: defaultdict(list))
    payloads: list[tuple[ClaimedRow, Observed]] = field(default_factory=list)
    no_focus: list[ClaimedRow] = field(default_factory=list)
    # Rows whose payload is stored but whose outcome is their read's (their resource is a tombstone):
    # the payload may only add its version to the tombstone, the read decides whether it lives again.
    read_too: set[int] = field(default_factory=set)

    def work(self) -> Work:
        return Work(
            reads=list(self.by_focus),
            identifiers=list(self.by_identifier),
            payloads=[observed for _, observed in self.payloads],
        )

    def rows(self) -> list[ClaimedRow]:
        found = [r for rows in (*self.by_focus.values(), *self.by_identifier.values()) for r in rows]
        return found + [r for r, _ in self.payloads if r.id not in self.read_too] + self.no_focus


def _plan(
    facility_id: str, rows: list[ClaimedRow], *, tombstoned: frozenset[ResourceRef] = frozenset()
) -> _Plan:
    plan = _Plan(facility_id, tombstoned)
    for row in rows:
        if row.focus is None and row.focus_identifier and row.focus_type:
            plan.by_identifier[(row.focus_type, row.focus_identifier)].append(row)
        elif row.focus is None:
            plan.no_focus.append(row)
        elif row.payload is not None and _payload_usable(row.payload, row.focus):
            # A full-resource payload is the resource; its meta orders it against fetched versions.
            focus = row.focus
            observed = Observed(
                facility_id,
                focus.resource_type,
                focus.resource_id,
                row.payload,
                row.received_at,
                from_payload=True,
            )
            plan.payloads.append((row, observed))
            if focus in tombstoned:  # only a read may say it exists again
                plan.read_too.add(row.id)
                plan.by_focus[focus].append(row)
        else:
            plan.by_focus[row.focus].append(row)
    return plan


def _payload_usable(payload: dict[str, Any], focus: ResourceRef) -> bool:
    """Whether a payload may stand for a read of ``focus``. Not when it names another resource, nor when
    it carries no version evidence (no ``meta.lastUpdated``: its receipt time would order it against
    versions the EHR dated itself, and an empty body could replace a fetched one): then it is read."""
    if payload.get("resourceType") != focus.resource_type or payload.get("id") != focus.resource_id:
        return False
    return resource_meta(payload).last_updated is not None


def _record(
    session: Session,
    pipeline: Pipeline,
    plan: _Plan,
    fetched: Fetched,
    settings: Settings,
) -> DrainReport:
    """Store what ``fetched`` holds for ``plan``'s rows and mark each row: done, backed off or dead."""
    report = DrainReport(claimed=len(plan.rows()))
    items: list[Observed] = []
    done: list[ClaimedRow] = []
    slack = pipeline.adapter.notified_time_slack
    lagging: dict[ResourceRef, list[ClaimedRow]] = {}
    for ref, waiting in plan.by_focus.items():
        outcome = _confirmed(fetched.reads[ref], waiting, pipeline.adapter)
        if isinstance(outcome, Observed):
            items.append(outcome)  # stored all the same: it may still be newer than what we hold
            lagging[ref] = _behind(_served(outcome.resource), waiting, slack)
            done += [r for r in waiting if r not in lagging[ref]]
        else:
            _record_failure(
                session,
                waiting,
                outcome,
                facility_id=plan.facility_id,
                resource_type=ref.resource_type,
                settings=settings,
                report=report,
            )
    for key, waiting in plan.by_identifier.items():
        found = fetched.identifiers[key]
        if isinstance(found, list):
            items += found
            done += waiting
        else:
            _record_failure(
                session,
                waiting,
                found,
                facility_id=plan.facility_id,
                resource_type=key[0],
                settings=settings,
                report=report,
            )
    for _, normalized in zip(plan.payloads, fetched.payloads, strict=True):
        items.append(normalized)
    items += fetched.references
    for reason, n in fetched.unresolved.items():
        report.reasons[reason] = report.reasons.get(reason, 0) + n
    stats = pipeline.store(session, items)
    report.stale += stats.stale
    lagging = {ref: rows for ref, rows in lagging.items() if rows}
    if lagging:
        done += _record_lagging(
            session, plan.facility_id, lagging, slack=slack, settings=settings, report=report
        )
    # A payload the store would not let revive a tombstone (committed between our check and the store):
    # its row is read next time, like any payload for a tombstoned resource.
    alone = [row for row, _ in plan.payloads if row.id not in plan.read_too]
    unverified = [row for row in alone if _key(row) in stats.unverified]
    done += [row for row in alone if _key(row) not in stats.unverified]
    if unverified:
        revival = RevivalUnverified("the payload would revive a deleted resource; it is read first")
        _record_failure(
            session,
            unverified,
            revival,
            facility_id=plan.facility_id,
            resource_type=unverified[0].focus_type or "-",
            settings=settings,
            report=report,
        )
    if done:
        notified = [
            (r.focus.resource_type, r.focus.resource_id, r.notified_version)
            for r in done
            if r.focus is not None
        ]
        coverage.retract_delivered(session, plan.facility_id, notified, datetime.now(UTC))
        _mark(
            session,
            queries.MARK_DONE,
            done,
            {"reason": None, "token": _token(done)},
            report=report,
            outcome="done",
            reason=None,
            facility_id=plan.facility_id,
        )
    if plan.no_focus:
        # An `empty` notification (a payload-less POST, backport `empty`) names nothing to fetch: only
        # a reconcile of the facility can find what changed. The request is durable and written with
        # the rows' outcome (app.reconcile.requests), so the rows are done: the reconciler has them.
        request_reconcile(session, plan.facility_id, "no-focus")
        _mark(
            session,
            queries.MARK_DONE,
            plan.no_focus,
            {"reason": None, "token": _token(plan.no_focus)},
            report=report,
            outcome="done",
            reason=None,
            facility_id=plan.facility_id,
        )
        report.reconcile_requested = True
    return report


#: A version as a read served it: ``meta.versionId`` and ``meta.lastUpdated``.
Served = tuple[str | None, datetime | None]


def _served(resource: dict[str, Any] | None) -> Served | None:
    if resource is None:
        return None  # a tombstone: the latest state there is
    meta = resource_meta(resource)
    return meta.version_id, meta.last_updated


def _behind(served: Served | None, rows: list[ClaimedRow], slack: timedelta) -> list[ClaimedRow]:
    """The rows whose notification announced something newer than ``served``."""
    return [r for r in rows if served is not None and _older_than_notified(served, r, slack)]


def _older_than_notified(served: Served, row: ClaimedRow, slack: timedelta) -> bool:
    """Whether ``served`` is older than what ``row``'s notification announced: by version when both are
    numbers (versionIds are opaque otherwise: an equal one is the announced version), else by time, at
    the coarser of the two precisions (a lastUpdated to the second against an event time with
    milliseconds), less the vendor's slack. Nothing announced, or nothing to compare: not older."""
    version, last_updated = served
    notified = row.notified_version
    if notified is not None and version is not None:
        if notified.isdigit() and version.isdigit():
            return int(version) < int(notified)
        if version == notified:
            return False
    if row.notified_at is None or last_updated is None:
        return False
    announced = row.notified_at if last_updated.microsecond else row.notified_at.replace(microsecond=0)
    return last_updated < announced - slack


def _record_lagging(
    session: Session,
    facility_id: str,
    lagging: dict[ResourceRef, list[ClaimedRow]],
    *,
    slack: timedelta,
    settings: Settings,
    report: DrainReport,
) -> list[ClaimedRow]:
    """Rows whose read was older than notified (a lagging replica): those whose resource is now stored at
    the announced version or later (by another row, a reconcile) are returned, to be marked done; the
    others are backed off with ``older_than_notified`` and read again, dead-lettered after
    ``max_attempts`` with that reason, so the newer version is never silently missed."""
    keys = {"facility_id": [facility_id] * len(lagging)}
    keys |= {
        "resource_type": [r.resource_type for r in lagging],
        "resource_id": [r.resource_id for r in lagging],
    }
    stored = {
        ResourceRef(r.resource_type, r.resource_id): (r.version_id, r.last_updated, r.deleted)
        for r in session.execute(queries.STORED_VERSIONS, keys)
    }
    caught_up: list[ClaimedRow] = []
    for ref, rows in lagging.items():
        held = stored.get(ref)
        if held is not None and held[2]:
            caught_up += rows  # a tombstone is as late as it gets
            continue
        behind = _behind((held[0], held[1]) if held is not None else (None, None), rows, slack)
        caught_up += [r for r in rows if r not in behind]
        if not behind:
            continue
        log.info(
            "ingest.fetch.older_than_notified",
            facility_id=facility_id,
            resource_type=ref.resource_type,
            resource_id=ref.resource_id,
            rows=len(behind),
            attempts=max(r.attempts for r in behind),
        )
        _record_failure(
            session,
            behind,
            OlderThanNotified("the read answered a version older than the notified one; read again"),
            facility_id=facility_id,
            resource_type=ref.resource_type,
            settings=settings,
            report=report,
        )
    return caught_up


def _key(row: ClaimedRow) -> tuple[str, str] | None:
    return (row.focus.resource_type, row.focus.resource_id) if row.focus is not None else None


def _confirmed(outcome: Outcome, rows: list[ClaimedRow], adapter: VendorAdapter) -> Outcome:
    """A 404 is a deletion only once confirmed (replication lag and access filtering answer 404 too):
    when a delete was announced for it, when the row's previous attempt was already a 404 (this read
    came a back-off later), or when the vendor's adapter says its 404 is final. Otherwise the rows are
    retried (``NotFoundUnconfirmed``). A 410 is a deletion at once."""
    if not isinstance(outcome, Observed) or outcome.deletion != DELETION_NOT_FOUND:
        return outcome
    if any(r.interaction == "delete" for r in rows):
        return replace(outcome, deletion=DELETION_NOT_FOUND_ANNOUNCED)
    if any(r.previous_reason == NotFoundUnconfirmed.reason for r in rows):
        return replace(outcome, deletion=DELETION_NOT_FOUND_CONFIRMED)
    if adapter.not_found_is_final:
        return outcome
    return NotFoundUnconfirmed("404 from the EHR; read again before it is taken for a deletion")


def _token(rows: list[ClaimedRow]) -> str | None:
    return rows[0].claim_token if rows else None  # one claim, one token


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
    """Back a failure off in Postgres; dead-letter a permanent one, and each row whose own budget is spent
    (rows that share a focus or a batch do not share attempts: a fresh row never dies of an old one's)."""
    exhausted = [r for r in rows if error.permanent or r.attempts >= settings.max_attempts]
    retried = [r for r in rows if r not in exhausted]
    params = {"reason": error.reason, "detail": error.detail[:500], "token": _token(rows)}
    if exhausted:
        _mark(
            session,
            queries.MARK_DEAD,
            exhausted,
            params,
            report=report,
            outcome="dead",
            reason=error.reason,
            facility_id=facility_id,
        )
        log.warning(
            "ingest.dead_letter",
            facility_id=facility_id,
            rows=len(exhausted),
            reason=error.reason,
            resource_type=resource_type,
            attempts=max(r.attempts for r in exhausted),
        )
    if retried:
        delay = backoff(settings, max(r.attempts for r in retried), error.retry_after)
        _mark(
            session,
            queries.MARK_RETRY,
            retried,
            {**params, "delay": delay},
            report=report,
            outcome="retried",
            reason=error.reason,
            facility_id=facility_id,
        )


def _mark(
    session: Session,
    query: TextClause,
    rows: list[ClaimedRow],
    params: dict[str, Any],
    *,
    report: DrainReport,
    outcome: str,
    reason: str | None,
    facility_id: str,
) -> None:
    """Mark ``rows`` and count the ones the UPDATE really marked: a row whose lease ran out (and was
    claimed again) is the new owner's to record, not ours."""
    result = cast("CursorResult[Any]", session.execute(query, {**params, "ids": [r.id for r in rows]}))
    report.count(outcome, reason, result.rowcount)
    if result.rowcount < len(rows):
        log.warning(
            "ingest.lease_lost", facility_id=facility_id, rows=len(rows) - result.rowcount, outcome=outcome
        )


def drain_facility(
    sessions: sessionmaker[Session],
    client_for: Callable[[Facility], EHRClient],
    facility_id: str,
    settings: Settings,
    *,
    references: ReferenceCache | None = None,
) -> DrainReport:
    """Drain until the facility has no due rows or the time budget is spent (then ``more`` is True).
    ``references`` is the process's cache of referenced resources (a fresh one when not given)."""
    started = time.perf_counter()
    try:
        return _drain(sessions, client_for, facility_id, settings, references)
    finally:
        DRAIN_SECONDS.labels(facility_id).observe(time.perf_counter() - started)


def _drain(
    sessions: sessionmaker[Session],
    client_for: Callable[[Facility], EHRClient],
    facility_id: str,
    settings: Settings,
    references: ReferenceCache | None,
) -> DrainReport:
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
    pipeline = Pipeline.for_facility(facility, client, settings, references)
    while True:
        with sessions.begin() as session:
            rows = claim(session, facility_id, limit=settings.drain_batch, lease=settings.lease)
            gone = tombstoned(session, facility_id, rows)
        if not rows:
            break
        batch_started = time.perf_counter()
        with LeaseKeeper(sessions, rows, settings.lease, max_hold=settings.lease_max_hold):
            report = _drain_batch(sessions, pipeline, _plan(facility_id, rows, tombstoned=gone), settings)
        BATCH_SECONDS.labels(facility_id).observe(time.perf_counter() - batch_started)
        _observe(facility_id, report)
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


def _drain_batch(
    sessions: sessionmaker[Session], pipeline: Pipeline, plan: _Plan, settings: Settings
) -> DrainReport:
    fetched: Fetched | None = None
    try:
        fetched = pipeline.fetch(plan.work())  # no transaction open while the EHR answers
        with sessions.begin() as session:
            report = _record(session, pipeline, plan, fetched, settings)
        pipeline.committed(fetched)
    except Exception as exc:  # noqa: BLE001 - every failure is recorded on its rows, none escapes
        rows = plan.rows()
        if len(rows) == 1:
            # Our own failure (a bug, the database going away): back the row off so it cannot spin a
            # worker, and let the task layer see the error, described without its message: a
            # database error's text can quote the data it refused.
            failed = DrainReport(claimed=1)
            _release_after_failure(sessions, rows, settings, failed, plan.facility_id)
            _observe(plan.facility_id, failed)
            raise InternalError(str(_describe(exc))) from None
        # One poison row must not hold back (and finally dead-letter) the good rows claimed with it:
        # redo the batch one row per transaction, so only the failing rows are backed off.
        log.warning("ingest.batch_failed_isolating", facility_id=plan.facility_id, rows=len(rows))
        report = _one_by_one(sessions, pipeline, plan, fetched, settings)
    return report


def _one_by_one(
    sessions: sessionmaker[Session],
    pipeline: Pipeline,
    plan: _Plan,
    fetched: Fetched | None,
    settings: Settings,
) -> DrainReport:
    """Each row in its own transaction, with what was already fetched (read again only if the fetch
    itself failed). The referenced resources are stored once, apart; if that fails, every row's
    transaction stores them, as the batch's would have, so none is left unstored."""
    total = DrainReport()
    references: list[Observed] = []
    if fetched is not None:
        for reason, n in fetched.unresolved.items():
            total.reasons[reason] = total.reasons.get(reason, 0) + n
        if fetched.references and not _store_references(sessions, pipeline, plan.facility_id, fetched):
            references = fetched.references
    for row in plan.rows():
        alone = _plan(plan.facility_id, [row], tombstoned=plan.tombstoned)
        try:
            if fetched is None:
                part = pipeline.fetch(alone.work())
            else:
                part = _slice(fetched, plan, alone, references)
            with sessions.begin() as session:
                report = _record(session, pipeline, alone, part, settings)
            pipeline.committed(part)
            _accumulate(total, report)
        except Exception as exc:  # noqa: BLE001 - recorded on the row; the other rows go on
            log.warning("ingest.row_failed", facility_id=plan.facility_id, inbox_id=row.id, **_describe(exc))
            total.claimed += 1
            _release_after_failure(sessions, [row], settings, total, plan.facility_id)
    return total


def _store_references(
    sessions: sessionmaker[Session], pipeline: Pipeline, facility_id: str, fetched: Fetched
) -> bool:
    try:
        with sessions.begin() as session:
            pipeline.store(session, fetched.references)
    except Exception as exc:  # noqa: BLE001 - the rows' own transactions store them instead
        log.warning("ingest.references_failed", facility_id=facility_id, **_describe(exc))
        return False
    pipeline.committed(fetched)
    return True


def _slice(fetched: Fetched, plan: _Plan, part: _Plan, references: list[Observed]) -> Fetched:
    """What ``fetched`` (for ``plan``) holds for the rows of ``part``, with ``references`` to store."""
    normalized = {row.id: n for (row, _), n in zip(plan.payloads, fetched.payloads, strict=True)}
    return Fetched(
        reads={ref: fetched.reads[ref] for ref in part.by_focus},
        identifiers={key: fetched.identifiers[key] for key in part.by_identifier},
        payloads=[normalized[row.id] for row, _ in part.payloads],
        references=references,
    )


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
    _observe(facility.id, report)
    report.more = len(rows) == settings.drain_batch
    return report


def _observe(facility_id: str, report: DrainReport) -> None:
    """Metrics of a committed batch: label values are ids and reason slugs only."""
    for (outcome, reason), n in report.rows.items():
        INBOX_ROWS.labels(facility_id, outcome, reason).inc(n)
    if report.stale:
        STALE_WRITES.labels(facility_id).inc(report.stale)


def _describe(exc: BaseException) -> dict[str, str]:
    """An error as ids and codes only (DESIGN.md rule 6): its type and, for Postgres, its SQLSTATE."""
    described = {"error": type(exc).__name__}
    sqlstate = getattr(getattr(exc, "orig", None), "sqlstate", None)
    if sqlstate:
        described["sqlstate"] = str(sqlstate)
    return described


def _release_after_failure(
    sessions: sessionmaker[Session],
    rows: list[ClaimedRow],
    settings: Settings,
    report: DrainReport,
    facility_id: str,
) -> None:
    """Back off (or dead-letter, once its budget is spent) a row our own code failed on, in a fresh
    transaction, and count what was really recorded."""
    error = InternalError("unexpected error while processing the batch; see worker logs")
    released = DrainReport()
    try:
        with sessions.begin() as session:
            _record_failure(
                session,
                rows,
                error,
                facility_id=facility_id,
                resource_type="-",
                settings=settings,
                report=released,
            )
    except Exception as exc:  # noqa: BLE001 - the lease still guarantees the rows come back
        log.warning("ingest.release_failed", facility_id=facility_id, rows=len(rows), **_describe(exc))
        report.count("retried", InternalError.reason, len(rows))  # after the lease
        return
    _accumulate(report, released)


def _accumulate(total: DrainReport, report: DrainReport) -> None:
    total.claimed += report.claimed
    total.done += report.done
    total.retried += report.retried
    total.dead += report.dead
    total.stale += report.stale
    total.reconcile_requested = total.reconcile_requested or report.reconcile_requested
    for reason, n in report.reasons.items():
        total.reasons[reason] = total.reasons.get(reason, 0) + n
    for key, n in report.rows.items():
        total.rows[key] = total.rows.get(key, 0) + n
