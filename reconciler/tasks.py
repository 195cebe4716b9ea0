"""Periodic tasks. Beat only fans out; running any of them twice is harmless."""

from __future__ import annotations

from datetime import UTC, datetime

import structlog
from structlog.contextvars import bound_contextvars

from app.alerts.cycle import run_cycle
from app.errors import IngestError
from app.hl7v2.service import due_facilities as facilities_with_due_adt
from app.ingest.sweep import facilities_with_due_work
from app.queue import (
    ALERTS_TASK,
    CHECK_SUBSCRIPTION_TASK,
    CHECK_SUBSCRIPTIONS_TASK,
    GAPS_FAN_OUT_TASK,
    GAPS_TASK,
    RECONCILE_FAN_OUT_TASK,
    RECONCILE_TASK,
    SWEEP_TASK,
    enqueue_adt,
    enqueue_drain,
    enqueue_reconcile,
)
from app.reconcile.gaps import check_gaps, facilities_with_numbered_subscriptions
from app.reconcile.schedule import due_facilities
from app.reconcile.service import reconcile_facility
from app.reconcile.subscriptions import (
    check_subscription,
    facilities_with_subscriptions,
    record_check_failure,
)
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


@celery_app.task(name=CHECK_SUBSCRIPTIONS_TASK)  # type: ignore[untyped-decorator]
def check_subscriptions() -> int:
    """Fan out one ``reconcile.check_subscription`` per facility with a subscription. Idempotent."""
    rt = runtime()
    with rt.sessions() as session:
        facility_ids = facilities_with_subscriptions(session)
    for facility_id in facility_ids:
        celery_app.send_task(CHECK_SUBSCRIPTION_TASK, args=[facility_id])
    return len(facility_ids)


@celery_app.task(name=CHECK_SUBSCRIPTION_TASK)  # type: ignore[untyped-decorator]
def check_facility_subscription(facility_id: str) -> str:
    """Check one facility's subscription (app.reconcile.subscriptions.check_subscription). Running it twice
    is harmless: an open reconcile window is not recorded twice, a re-activation is a PUT. Not retried: a
    failure is recorded on the subscription's row and the next interval checks again."""
    rt = runtime()
    from app.facilities.service import get_facility

    try:
        with rt.sessions.begin() as session:
            facility = get_facility(session, facility_id)
            if facility is None:
                return "none"
            return check_subscription(
                session, facility, rt.clients.get(facility), now=datetime.now(UTC)
            ).action
    except IngestError as exc:
        with rt.sessions.begin() as session:
            record_check_failure(session, facility_id, exc, now=datetime.now(UTC))
        log.warning("reconcile.subscription.check_failed", facility_id=facility_id, reason=exc.reason)
        return "failed"


@celery_app.task(name=RECONCILE_FAN_OUT_TASK)  # type: ignore[untyped-decorator]
def fan_out() -> int:
    """One reconcile task per facility that is due. A duplicate beat sends duplicates; each run checks
    again, under the facility's lock, that it is still due, so a facility is reconciled once per
    interval whatever the number of beats and workers."""
    rt = runtime()
    with rt.sessions() as session:
        due = due_facilities(session)
    for facility_id in due:
        enqueue_reconcile(celery_app, rt.settings.reconcile_queue, facility_id)
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
            rt.clients.background,  # yields to notification fetches (app.ehr.politeness)
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


@celery_app.task(name=GAPS_FAN_OUT_TASK)  # type: ignore[untyped-decorator]
def gaps_fan_out() -> int:
    """One ``reconcile.check_gaps`` per facility whose ledger has numbered events. Idempotent."""
    rt = runtime()
    with rt.sessions() as session:
        facility_ids = facilities_with_numbered_subscriptions(session)
    for facility_id in facility_ids:
        celery_app.send_task(GAPS_TASK, args=[facility_id], queue=rt.settings.reconcile_queue)
    return len(facility_ids)


@celery_app.task(name=GAPS_TASK)  # type: ignore[untyped-decorator]
def check_facility_gaps(facility_id: str) -> dict[str, int]:
    """One gap pass over a facility (``app.reconcile.gaps``). Running it twice, or in two processes at
    once, is harmless: each gap is claimed before it is handled and handled once. Not retried: what a
    pass could not do stays open for the next tick."""
    rt = runtime()
    with bound_contextvars(facility_id=facility_id):
        try:
            report = check_gaps(
                rt.sessions, rt.clients.background, facility_id, rt.settings, references=rt.references
            )
        except IngestError as exc:
            log.warning("reconcile.gap.pass_failed", facility_id=facility_id, reason=exc.reason)
            return {"failed": 1}
    return {
        "tracked": report.tracked,
        "filled": report.filled,
        "missed": report.missed,
        "fetched": report.fetched,
        "epochs": report.epochs,
    }


@celery_app.task(name=ALERTS_TASK)  # type: ignore[untyped-decorator]
def evaluate_alerts() -> dict[str, int]:
    """One alerting cycle (``app.alerts.cycle``): feed health, alert transitions, due sink sends. On its
    own queue (``EHRI_ALERTS_QUEUE``), so a slow sink never holds a worker that drains notifications.
    Running it twice at once is harmless (one evaluates at a time, an alert opens once, a delivery is sent
    once). Not retried: an error leaves everything for the next cycle."""
    rt = runtime()
    try:
        report = run_cycle(rt.sessions, rt.alert_http)
    except IngestError as exc:  # an unreadable sinks file: said, and tried again next cycle
        log.warning("alerts.cycle_failed", reason=exc.reason)
        return {"failed": 1}
    return {
        "evaluated": int(report.evaluated),  # 0: another cycle was evaluating; this one only sent
        "conditions": report.conditions,
        "opened": report.opened,
        "resolved": report.resolved,
        "sent": report.sent,
    }
