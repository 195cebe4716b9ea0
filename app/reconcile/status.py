"""What ``ehr-ingest reconcile status`` shows (ids, instants and counts only)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.db.models import (
    ReconcileBulkJob,
    ReconcileGroup,
    ReconcileRun,
    ReconcileWatermark,
    RecoveredChange,
)


@dataclass(frozen=True)
class TypeStatus:
    facility_id: str
    resource_type: str
    strategy: str
    watermark: datetime | None
    last_run_at: datetime | None
    last_outcome: str | None
    last_reason: str | None
    recovered: int


def reconcile_status(
    session: Session, facility_id: str | None
) -> tuple[list[TypeStatus], list[ReconcileRun]]:
    recovered = {
        (f, t, s): int(n)
        for f, t, s, n in session.execute(
            select(
                RecoveredChange.facility_id,
                RecoveredChange.resource_type,
                RecoveredChange.strategy,
                func.count(),
            ).group_by(RecoveredChange.facility_id, RecoveredChange.resource_type, RecoveredChange.strategy)
        )
    }
    marks = select(ReconcileWatermark).order_by(
        ReconcileWatermark.facility_id, ReconcileWatermark.resource_type, ReconcileWatermark.strategy
    )
    latest = (
        select(func.max(ReconcileRun.id))
        .where(ReconcileRun.outcome.is_distinct_from("requested"))
        .group_by(ReconcileRun.facility_id)
    )
    if facility_id is not None:
        marks = marks.where(ReconcileWatermark.facility_id == facility_id)
        latest = latest.where(ReconcileRun.facility_id == facility_id)
    last = select(ReconcileRun).where(ReconcileRun.id.in_(latest)).order_by(ReconcileRun.facility_id)
    rows = [
        TypeStatus(
            w.facility_id,
            w.resource_type,
            w.strategy,
            w.watermark,
            w.last_run_at,
            w.last_outcome,
            w.last_reason,
            recovered.get((w.facility_id, w.resource_type, w.strategy), 0),
        )
        for w in session.scalars(marks)
    ]
    return rows, list(session.scalars(last))


def cohort_and_jobs(
    session: Session, facility_id: str | None
) -> tuple[list[ReconcileGroup], list[ReconcileBulkJob]]:
    """The cohort Groups as last read, and the bulk export jobs kept for the next run."""
    groups = select(ReconcileGroup).order_by(ReconcileGroup.facility_id)
    jobs = select(ReconcileBulkJob).order_by(ReconcileBulkJob.facility_id)
    if facility_id is not None:
        groups = groups.where(ReconcileGroup.facility_id == facility_id)
        jobs = jobs.where(ReconcileBulkJob.facility_id == facility_id)
    return list(session.scalars(groups)), list(session.scalars(jobs))
