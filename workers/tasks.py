"""Ingest tasks: thin wrappers that open resources and call ``app.ingest``."""

from __future__ import annotations

import structlog
from structlog.contextvars import bound_contextvars

from app.hl7v2.service import describe, process_facility
from app.ingest.drain import drain_facility as drain
from app.queue import ADT_TASK, DRAIN_TASK, enqueue_adt, enqueue_drain, enqueue_reconcile
from workers.celery_app import celery_app, runtime

log = structlog.get_logger("workers.tasks")


@celery_app.task(name=DRAIN_TASK, bind=True)  # type: ignore[untyped-decorator]
def drain_facility(self: object, facility_id: str) -> dict[str, int]:
    """Drain the facility's due inbox rows.

    Idempotent: duplicates and redeliveries find nothing to claim or converge on the same rows.
    Retry policy: none at this level. Failed rows are backed off in Postgres by ``app.ingest.drain``;
    if this task itself dies, the rows' lease expires and the beat sweeper rings again.
    """
    rt = runtime()
    task_id = getattr(getattr(self, "request", None), "id", None)
    with bound_contextvars(facility_id=facility_id, task_id=task_id):
        report = drain(rt.sessions, rt.clients.get, facility_id, rt.settings, references=rt.references)
        if report.more:
            enqueue_drain(celery_app, rt.settings.queue, facility_id)
        if report.reconcile_requested:
            # The request is in Postgres already: this only saves waiting for the fan-out's next tick.
            enqueue_reconcile(celery_app, rt.settings.reconcile_queue, facility_id, trigger="no-focus")
        if report.claimed:
            log.info(
                "ingest.drained",
                claimed=report.claimed,
                done=report.done,
                retried=report.retried,
                dead=report.dead,
                stale=report.stale,
                more=report.more,
            )
    return {"claimed": report.claimed, "done": report.done, "retried": report.retried, "dead": report.dead}


@celery_app.task(name=ADT_TASK, bind=True)  # type: ignore[untyped-decorator]
def process_adt(self: object, facility_id: str) -> dict[str, int]:
    """Resolve and re-read the patients of the facility's due ADT rows (``app.hl7v2.service``).

    Idempotent: rows are claimed per patient under a lease; a duplicate task claims nothing, a repeated
    fetch converges on the same rows. Retry policy: none here; failed rows back off in Postgres, and a
    task that died leaves its rows' lease to expire for the sweeper's next ring.
    """
    rt = runtime()
    task_id = getattr(getattr(self, "request", None), "id", None)
    with bound_contextvars(facility_id=facility_id, task_id=task_id):
        rounds = 50
        report = process_facility(
            rt.sessions, rt.clients.get, facility_id, rt.settings, references=rt.references, rounds=rounds
        )
        if report.rows or report.parsed:
            log.info("hl7v2.processed", **describe(report))
            enqueue_adt(celery_app, rt.settings.queue, facility_id)  # finds nothing when all is done
    return {k: int(v) for k, v in describe(report).items()}
