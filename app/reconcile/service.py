"""The reconcile use case: one run over one facility, every type by its strategy, every page through the
one pipeline (``Pipeline.fetch`` then ``store``, committed page by page), the watermark moved last.

Guarantees:
- One run per facility at a time across processes (a Postgres advisory lock on a connection held for the
  run; a process killed mid-run loses its connection and the lock with it).
- A type's watermark moves only once every page of its run is committed, so a run killed anywhere
  resumes from the old watermark (pages read twice converge: the store is version-guarded).
- A search page that fails after the client's retries stops that type's run, keeps its watermark and
  records the reason (``reconcile_watermarks.last_reason``, the run's ``reasons``).
- A run past ``reconcile_time_budget`` stops between pages; sorted strategies keep what they committed;
  a bulk export job still running (or half read) is kept for the next run (``reconcile_bulk_jobs``),
  whose first type is then that job's.
- The facility's configured Group (``reconcile.group``) is read once per run that has a per-patient
  type, its Patient members joining the cohort (``app.reconcile.cohort``); a failed read stops nothing
  (its reason is the run's ``reasons["Group"]``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

import structlog
from sqlalchemy import delete, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session, sessionmaker

from app.db.models import (
    Facility,
    ReconcileRequest,
    ReconcileRun,
    ReconcileWatermark,
)
from app.ehr.pool import ClientFactory
from app.errors import ConfigInvalid, ConfigurationError, IngestError
from app.ingest.pipeline.observed import Observed, read_after_vanishing
from app.ingest.pipeline.references import ReferenceCache
from app.ingest.pipeline.service import Pipeline, Work
from app.ingest.quarantine import NdjsonQuarantine
from app.metrics import RECONCILE_RUNS
from app.reconcile import StrategyName, coverage, queries
from app.reconcile.bulk_jobs import PostgresBulkJobs, kept_type
from app.reconcile.cohort import refresh_group
from app.reconcile.plan import FacilityPlan, TypePlan, plan_for
from app.reconcile.probe import load_capabilities
from app.reconcile.requests import REQUESTED
from app.reconcile.strategies import STRATEGIES
from app.reconcile.strategies.base import Page, Scope
from app.settings import Settings

log = structlog.get_logger("reconcile")

#: The strategies that poll the facility's cohort patient by patient.
PER_PATIENT: frozenset[StrategyName] = frozenset({"patient-last-updated", "created-date"})

#: What a run of a type came to.
COMPLETE, PARTIAL, FAILED = "complete", "partial", "failed"


@dataclass
class TypeReport:
    resource_type: str
    strategy: StrategyName
    outcome: str = COMPLETE
    reason: str | None = None
    pages: int = 0
    resources: int = 0
    applied: int = 0
    recovered: int = 0
    watermark: datetime | None = None


@dataclass
class RunReport:
    facility_id: str
    locked: bool = True  # False: another process was reconciling this facility; nothing was done
    skipped: bool = False  # not due yet
    run_id: int | None = None
    types: list[TypeReport] = field(default_factory=list)
    failure: str | None = None  # the reason nothing could run (the facility's configuration)
    failure_detail: str = ""
    #: The open ``reconcile_requests`` this run covers (consumed when it completes), and their earliest start.
    requests: list[int] = field(default_factory=list)
    window_since: datetime | None = None
    #: Why the cohort Group could not be read this run (its last good members were polled).
    group_reason: str | None = None

    @property
    def more(self) -> bool:
        """Whether a type stopped at the time budget (the next run continues it)."""
        return any(t.outcome == PARTIAL for t in self.types)

    @property
    def outcome(self) -> str:
        if self.failure is not None or any(t.outcome == FAILED for t in self.types):
            return FAILED
        return PARTIAL if self.more else COMPLETE

    def total(self, name: str) -> int:
        return sum(int(getattr(t, name)) for t in self.types)


#: Called after each committed page: (resource type, the page's report so far).
Progress = Callable[[TypeReport], None]


@contextmanager
def facility_lock(sessions: sessionmaker[Session], facility_id: str) -> Iterator[bool]:
    """Whether this process now holds the facility's reconcile lock, until the block ends. The lock is
    session-level, on a connection of its own outside the pool's reuse (a pooled connection would carry
    it into other sessions), in autocommit: no transaction stays open for the run."""
    engine = sessions.kw["bind"]
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        locked = bool(conn.execute(queries.TRY_LOCK, {"fid": facility_id}).scalar())
        try:
            yield locked
        finally:
            if locked:
                conn.execute(queries.UNLOCK, {"fid": facility_id})


def is_due(session: Session, facility: Facility, plan: FacilityPlan, now: datetime) -> bool:
    """Due when it never ran, its interval has passed since the last run began, the last run stopped at
    its budget or never finished, or a reconcile was requested (a notification without a focus, or a
    window in ``reconcile_requests``: a subscription found in error or off). A run
    without an outcome is either running (it holds the facility's lock: the new one will not start) or
    died (its lock went with its connection): so it is continued at once."""
    last = session.execute(
        select(ReconcileRun.started_at, ReconcileRun.outcome)
        .where(ReconcileRun.facility_id == facility.id, ReconcileRun.outcome != REQUESTED)
        .order_by(ReconcileRun.started_at.desc())
        .limit(1)
    ).first()
    requested = session.scalar(
        select(ReconcileRun.id).where(
            ReconcileRun.facility_id == facility.id, ReconcileRun.outcome == REQUESTED
        )
    )
    if last is None or requested is not None or _open_requests(session, facility.id):
        return True
    return bool(last.outcome in {PARTIAL, None} or now - last.started_at >= plan.interval)


def _open_requests(session: Session, facility_id: str) -> list[tuple[int, datetime]]:
    """The facility's open ``reconcile_requests``: (id, window start)."""
    rows = session.execute(
        select(ReconcileRequest.id, ReconcileRequest.since).where(
            ReconcileRequest.facility_id == facility_id, ReconcileRequest.consumed_at.is_(None)
        )
    ).all()
    return [(int(r.id), r.since) for r in rows]


def reconcile_facility(
    sessions: sessionmaker[Session],
    client_for: ClientFactory,
    facility_id: str,
    settings: Settings,
    *,
    trigger: str = "schedule",
    only_if_due: bool = False,
    types: list[str] | None = None,
    strategy: StrategyName | None = None,
    since: datetime | None = None,
    references: ReferenceCache | None = None,
    progress: Progress | None = None,
) -> RunReport:
    """Reconcile one facility now (``only_if_due``: unless it is not due). Idempotent and resumable.
    ``since`` (a backfill) searches from there instead of the watermark; the watermark still only moves
    forward. Open ``reconcile_requests`` of the facility lower every type's search to their earliest
    window start, and are consumed once a run of the facility's whole plan has completed (every page
    committed); a run that fails or stops at its budget leaves them open for the next."""
    report = RunReport(facility_id)
    with facility_lock(sessions, facility_id) as locked:
        if not locked:
            report.locked = False
            return report
        with sessions() as session:
            facility = session.get(Facility, facility_id)
            if facility is None:
                raise ConfigInvalid(f"no facility {facility_id}")
            started = datetime.now(UTC)
            try:
                client = client_for(facility)
                pipeline = Pipeline.for_facility(facility, client, settings, references)
                plan = plan_for(
                    facility,
                    pipeline.adapter,
                    types=types,
                    strategy=strategy,
                    capabilities=load_capabilities(session, facility_id),
                )
            except ConfigurationError as exc:
                # Nothing can run until a human fixes it: a failed run says why (status, alerts), and the
                # next interval tries again, not every tick.
                log.warning("reconcile.unconfigured", facility_id=facility_id, reason=exc.reason)
                session.add(
                    ReconcileRun(
                        facility_id=facility_id,
                        trigger=trigger,
                        started_at=started,
                        finished_at=started,
                        outcome=FAILED,
                        reasons={"-": exc.reason},
                    )
                )
                session.commit()
                report.failure, report.failure_detail = exc.reason, str(exc)
                return report
            if only_if_due and (not facility.enabled or not is_due(session, facility, plan, started)):
                report.skipped = True
                return report
            _log_fallbacks(plan)
            if types is None:  # a run narrowed to some types does not cover a facility's window
                windows = _open_requests(session, facility_id)
                report.requests = [i for i, _ in windows]
                report.window_since = min((w for _, w in windows), default=None)
            session.execute(
                delete(ReconcileRun).where(
                    ReconcileRun.facility_id == facility_id, ReconcileRun.outcome == REQUESTED
                )
            )
            run = ReconcileRun(facility_id=facility_id, trigger=trigger, started_at=started)
            session.add(run)
            session.commit()
            report.run_id = run.id
            kept = kept_type(session, facility_id)
        deadline = time.monotonic() + settings.reconcile_time_budget.total_seconds()
        if plan.export_group is not None and any(t.strategy in PER_PATIENT for t in plan.types):
            report.group_reason = refresh_group(sessions, pipeline.client, facility_id, plan.export_group)
        # A bulk job an earlier run left running is the facility's one job: its type goes first.
        for type_plan in sorted(plan.types, key=lambda t: t.resource_type != kept):
            result = _run_type(
                sessions,
                pipeline,
                plan,
                type_plan,
                run_id=report.run_id,
                started=started,
                since=since,
                window_since=report.window_since,
                deadline=deadline,
                progress=progress,
                settings=settings,
                cohort_group=plan.export_group,
            )
            report.types.append(result)
            RECONCILE_RUNS.labels(facility_id, type_plan.resource_type, result.reason or result.outcome).inc()
            if result.outcome == PARTIAL:
                break  # out of time: the other types wait for the next run
        _finish(sessions, report)
    log.info(
        "reconcile.run",
        facility_id=facility_id,
        trigger=trigger,
        outcome=report.outcome,
        pages=report.total("pages"),
        applied=report.total("applied"),
        recovered=report.total("recovered"),
    )
    return report


def _log_fallbacks(plan: FacilityPlan) -> None:
    for type_plan in plan.types:
        if type_plan.reason is not None:
            log.info(
                "reconcile.strategy_fallback",
                facility_id=plan.facility_id,
                resource_type=type_plan.resource_type,
                strategy=type_plan.strategy,
                reason=type_plan.reason,
            )


def _finish(sessions: sessionmaker[Session], report: RunReport) -> None:
    with sessions() as session:
        run = session.get(ReconcileRun, report.run_id)
        assert run is not None
        run.finished_at = datetime.now(UTC)
        run.outcome = report.outcome
        run.pages, run.resources = report.total("pages"), report.total("resources")
        run.applied, run.recovered = report.total("applied"), report.total("recovered")
        run.reasons = {t.resource_type: t.reason for t in report.types if t.reason}
        if report.group_reason is not None:
            run.reasons["Group"] = report.group_reason
        if report.requests and report.outcome == COMPLETE:
            session.execute(
                update(ReconcileRequest)
                .where(ReconcileRequest.id.in_(report.requests), ReconcileRequest.consumed_at.is_(None))
                .values(consumed_at=run.finished_at)
            )
            log.info(
                "reconcile.requests_consumed", facility_id=report.facility_id, count=len(report.requests)
            )
        session.commit()


def _watermark(session: Session, facility_id: str, plan: TypePlan) -> ReconcileWatermark | None:
    return session.get(ReconcileWatermark, (facility_id, plan.resource_type, plan.strategy))


def _run_type(
    sessions: sessionmaker[Session],
    pipeline: Pipeline,
    plan: FacilityPlan,
    type_plan: TypePlan,
    *,
    run_id: int | None,
    started: datetime,
    since: datetime | None,
    window_since: datetime | None,
    deadline: float,
    progress: Progress | None,
    settings: Settings,
    cohort_group: str | None = None,
) -> TypeReport:
    result = TypeReport(type_plan.resource_type, type_plan.strategy)
    facility_id = plan.facility_id
    with sessions() as session:
        row = _watermark(session, facility_id, type_plan)
        watermark = row.watermark if row is not None else None
        recrawled_at = row.recrawled_at if row is not None else None
    lower = since if since is not None else watermark
    if lower is None and since is None:
        lower = plan.initial_since
    if lower is not None and window_since is not None:
        lower = min(lower, window_since)  # a requested window: searched again from its start
    scope = Scope(
        client=pipeline.client,
        adapter=pipeline.adapter,
        resource_type=type_plan.resource_type,
        watermark=watermark,
        since=lower - plan.overlap if lower is not None else None,
        started_at=started,
        recrawl=recrawled_at is None or started - recrawled_at >= plan.recrawl_interval,
        cohort=lambda: _cohort(sessions, facility_id, cohort_group),
        stored_ids=lambda rtype, patient: _stored_ids(sessions, facility_id, rtype, patient),
        settings=settings,
        quarantine=NdjsonQuarantine(sessions.kw["bind"]),
        export_group=plan.export_group,
        deadline=deadline,
        bulk_jobs=PostgresBulkJobs(sessions, facility_id),
        history=type_plan.history,
        live_ids=lambda rtype, ids: _live_ids(sessions, facility_id, rtype, ids),
    )
    high: datetime | None = watermark
    recrawled = False
    pages = STRATEGIES[type_plan.strategy].pages(scope)
    try:
        for page in pages:
            _apply(sessions, pipeline, type_plan, page, run_id=run_id, result=result)
            if page.committed is not None:
                page.committed()
            high = page.high_water or high
            recrawled = recrawled or page.recrawled
            if progress is not None:
                progress(result)
            if page.out_of_time or time.monotonic() > deadline:
                result.outcome = PARTIAL
                if page.resumable:
                    _advance(sessions, facility_id, type_plan, high, recrawled=False, result=result)
                else:
                    _record(sessions, facility_id, type_plan, result)
                return result
    except IngestError as exc:
        result.outcome, result.reason = FAILED, exc.reason
        log.warning(
            "reconcile.type_failed",
            facility_id=facility_id,
            resource_type=type_plan.resource_type,
            strategy=type_plan.strategy,
            reason=exc.reason,
        )
        _record(sessions, facility_id, type_plan, result)
        return result
    finally:
        if isinstance(pages, Generator):
            pages.close()  # at once, not when collected: a strategy stopped midway lets go of its job
    _advance(sessions, facility_id, type_plan, high, recrawled=recrawled, result=result)
    return result


def _apply(
    sessions: sessionmaker[Session],
    pipeline: Pipeline,
    type_plan: TypePlan,
    page: Page,
    *,
    run_id: int | None,
    result: TypeReport,
) -> None:
    """Fetch what the page needs (references, vanished reads), store it, commit. Raises the error of a
    vanished resource that could not be read (the type's run stops; the next re-crawl reads it again)."""
    now = datetime.now(UTC)
    fid = pipeline.facility_id
    payloads = [Observed(fid, type_plan.resource_type, str(r["id"]), r, now) for r in page.found]
    fetched = pipeline.fetch(Work(reads=page.reads, payloads=payloads), now=now)
    for ref, outcome in list(fetched.reads.items()):
        if isinstance(outcome, IngestError):
            raise outcome
        fetched.reads[ref] = read_after_vanishing(outcome)  # gone from the search: a 404 confirms it
    items = fetched.observed()
    with sessions() as session:
        before = coverage.snapshot(session, fid, items)
        stats = pipeline.store(session, items)
        recovered = coverage.record(session, fid, items, before, strategy=type_plan.strategy, run_id=run_id)
        session.commit()
    pipeline.committed(fetched)
    result.pages += 1
    result.resources += len(page.found) + len(page.reads)
    result.applied += stats.applied
    result.recovered += recovered


def _advance(
    sessions: sessionmaker[Session],
    facility_id: str,
    type_plan: TypePlan,
    high: datetime | None,
    *,
    recrawled: bool,
    result: TypeReport,
) -> None:
    """Move the watermark (forward only) once every page is committed; note the run."""
    now = datetime.now(UTC)
    with sessions() as session:
        values = {
            "facility_id": facility_id,
            "resource_type": type_plan.resource_type,
            "strategy": type_plan.strategy,
            "watermark": high,
            "recrawled_at": now if recrawled else None,
            "last_run_at": now,
            "last_outcome": result.outcome,
            "last_reason": result.reason,
        }
        stmt = insert(ReconcileWatermark).values(**values)
        excluded = stmt.excluded
        stmt = stmt.on_conflict_do_update(
            index_elements=["facility_id", "resource_type", "strategy"],
            set_={
                "watermark": text("GREATEST(reconcile_watermarks.watermark, excluded.watermark)"),
                "recrawled_at": text("coalesce(excluded.recrawled_at, reconcile_watermarks.recrawled_at)"),
                "last_run_at": excluded.last_run_at,
                "last_outcome": excluded.last_outcome,
                "last_reason": excluded.last_reason,
                "updated_at": text("now()"),
            },
        )
        session.execute(stmt)
        session.commit()
        row = _watermark(session, facility_id, type_plan)
        result.watermark = row.watermark if row is not None else None


def _record(
    sessions: sessionmaker[Session], facility_id: str, type_plan: TypePlan, result: TypeReport
) -> None:
    """Note a run that did not complete, watermark untouched."""
    _advance(sessions, facility_id, type_plan, None, recrawled=False, result=result)


def _cohort(sessions: sessionmaker[Session], facility_id: str, group: str | None) -> list[str]:
    with sessions() as session:
        return [str(p) for p in session.scalars(queries.COHORT, {"fid": facility_id, "grp": group})]


def _live_ids(
    sessions: sessionmaker[Session], facility_id: str, resource_type: str, ids: list[str]
) -> set[str]:
    if not ids:
        return set()
    with sessions() as session:
        rows = session.scalars(queries.LIVE_IDS, {"fid": facility_id, "rtype": resource_type, "ids": ids})
        return {str(r) for r in rows}


def _stored_ids(
    sessions: sessionmaker[Session], facility_id: str, resource_type: str, patient: str | None
) -> set[str]:
    with sessions() as session:
        if patient is None:
            rows = session.scalars(queries.STORED_IDS, {"fid": facility_id, "rtype": resource_type})
        else:
            rows = session.scalars(
                queries.STORED_IDS_OF_PATIENT,
                {"fid": facility_id, "rtype": resource_type, "ref": f"Patient/{patient}"},
            )
        return {str(r) for r in rows}
