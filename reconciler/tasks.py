"""Periodic tasks. Beat only fans out; running any of them twice is harmless."""

from __future__ import annotations

import structlog
from structlog.contextvars import bound_contextvars

from app.ingest.sweep import facilities_with_due_work
from app.queue import (
    RECONCILE_FAN_OUT_TASK,
    RECONCILE_TASK,
    SWEEP_TASK,
    enqueue_drain,
    enqueue_reconcile,
)
from app.reconcile.schedule import due_facilities
from app.reconcile.service import reconcile_facility
from workers.celery_app import celery_app, runtime

log = structlog.get_logger("reconciler")


@celery_app.task(name=SWEEP_TASK)  # type: ignore[untyped-decorator]
def sweep_inbox() -> int:
    """Ring the doorbell for every facility with due inbox rows (Redis lost messages, a worker died, a
    back-off ran out). Idempotent: a duplicate doorbell finds nothing more to claim."""
    rt = runtime()
    with rt.sessions() as session:
        due = facilities_with_due_work(session)
    for facility_id in due:
        enqueue_drain(celery_app, rt.settings.queue, facility_id)
    if due:
        log.info("reconcile.swept", facilities=len(due))
    return len(due)


@celery_app.task(name=RECONCILE_FAN_OUT_TASK)  # type: ignore[untyped-decorator]
def fan_out() -> int:
    """One reconcile task per facility that is due. A duplicate beat sends duplicates; each run checks
    again, under the facility's lock, that it is still due, so a facility is reconciled once per
    interval whatever the number of beats and workers."""
    rt = runtime()
    with rt.sessions() as session:
        due = due_facilities(session)
    for facility_id in due:
        enqueue_reconcile(celery_app, rt.settings.periodic_queue, facility_id)
    return len(due)


@celery_app.task(name=RECONCILE_TASK, bind=True)  # type: ignore[untyped-decorator]
def poll_facility(self: object, facility_id: str, trigger: str = "schedule") -> dict[str, int]:
    """Reconcile one facility if it is due (``app.reconcile.service``).

    Idempotent: a second task while one runs finds the facility locked; one after finds it not due.
    Retry policy: none here. A failed type keeps its watermark and is retried at the next interval; a
    run stopped at its time budget is continued by the next tick."""
    rt = runtime()
    task_id = getattr(getattr(self, "request", None), "id", None)
    with bound_contextvars(facility_id=facility_id, task_id=task_id):
        report = reconcile_facility(
            rt.sessions,
            rt.clients.get,
            facility_id,
            rt.settings,
            trigger=trigger,
            only_if_due=True,
            references=rt.references,
        )
    return {
        "locked": int(report.locked),
        "skipped": int(report.skipped),
        "applied": report.total("applied"),
        "recovered": report.total("recovered"),
    }
