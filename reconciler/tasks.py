"""Periodic tasks. Beat only fans out; running any of them twice is harmless."""

from __future__ import annotations

import structlog

from app.hl7v2.service import due_facilities as facilities_with_due_adt
from app.ingest.sweep import facilities_with_due_work
from app.queue import SWEEP_TASK, enqueue_adt, enqueue_drain
from workers.celery_app import celery_app, runtime

log = structlog.get_logger("reconciler")


@celery_app.task(name=SWEEP_TASK)  # type: ignore[untyped-decorator]
def sweep_inbox() -> int:
    """Ring the doorbell for every facility with due inbox rows (Redis lost messages, a worker died, a
    back-off ran out). Idempotent: a duplicate doorbell finds nothing more to claim."""
    rt = runtime()
    with rt.sessions() as session:
        due = facilities_with_due_work(session)
        due_adt = facilities_with_due_adt(session)
    for facility_id in due:
        enqueue_drain(celery_app, rt.settings.queue, facility_id)
    for facility_id in due_adt:  # HL7 v2 ADT rows (adt_inbox) are swept the same way
        enqueue_adt(celery_app, rt.settings.queue, facility_id)
    if due:
        log.info("reconcile.swept", facilities=len(due))
    return len(due)
