"""One alerting cycle, what beat's ``alerts.evaluate`` task runs every ``EHRI_ALERT_EVALUATE_INTERVAL``:

    app.feeds.evaluate ──► conditions, evaluated ──► app.alerts.observe ──► alert rows + outbox rows
    app.alerts.deliver_due ──► sends what is due ──► sink_failing conditions ──► observe again

Each step commits on its own: the evaluation and the alert transitions in one transaction (an alert is
never opened without its deliveries queued), each send in its own. Two cycles at once (two beats) are
harmless: an alert opens once (the live-key index), a quiet check opens once per source, a delivery is
claimed by one sender (``SKIP LOCKED``). The deliveries are sent right after the transitions that queued
them, so a page leaves within one cycle of the condition being seen.

The evaluation and its transitions run under a transaction-scoped advisory lock, one cycle at a time: a
cycle that finds it taken skips them (the other one's evaluation is as fresh as its own would be) and only
sends what is due. Without it an evaluation could be older than a transition another cycle commits
meanwhile and undo it: a condition seen holding just before the dead letters were replayed reopens the
alert the other cycle resolved on seeing them gone (a second trigger); one seen healthy just before the
condition began resolves the alert the other cycle just opened (with no resolve delay).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
import structlog
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from app.alerts.delivery import DeliveryReport, deliver_due
from app.alerts.service import ObserveResult, observe
from app.feeds.service import evaluate

log = structlog.get_logger("alerts.cycle")


#: Held by the transaction that evaluates feed health and applies the alert transitions.
EVALUATION_LOCK = text("SELECT pg_try_advisory_xact_lock(hashtextextended('ehri-alerts-evaluate', 0))")


@dataclass(frozen=True)
class CycleReport:
    conditions: int
    opened: int
    resolved: int
    sent: int
    failed: int
    evaluated: bool = True  # False: another cycle was evaluating; this one only sent what was due


def run_cycle(
    sessions: sessionmaker[Session], http: httpx.Client, now: datetime | None = None
) -> CycleReport:
    now = now or datetime.now(UTC)
    with sessions.begin() as session:
        transitions = evaluate_and_observe(session, now)
    delivery = deliver_due(sessions, datetime.now(UTC), http)
    _observe_sinks(sessions, delivery)
    conditions, result = transitions or (0, ObserveResult())
    report = CycleReport(
        conditions=conditions,
        opened=len(result.opened) + len(result.reopened),
        resolved=len(result.resolved),
        sent=delivery.sent,
        failed=delivery.failed,
        evaluated=transitions is not None,
    )
    if report.opened or report.resolved or report.failed:
        log.info(
            "alerts.cycle",
            conditions=report.conditions,
            opened=report.opened,
            resolved=report.resolved,
            sent=report.sent,
            failed=report.failed,
        )
    return report


def evaluate_and_observe(session: Session, now: datetime) -> tuple[int, ObserveResult] | None:
    """Evaluate feed health and apply the alert transitions, holding the evaluation lock until the caller's
    transaction ends: (conditions holding, what this pass changed), or None when another cycle holds it."""
    if not session.scalar(EVALUATION_LOCK):
        return None
    conditions, evaluated = evaluate(session, now)
    return len(conditions), observe(session, conditions, evaluated, now)


def _observe_sinks(sessions: sessionmaker[Session], delivery: DeliveryReport) -> None:
    """The sinks' own health, as the sends just found it: a sink whose deliveries failed for good is a
    ``sink_failing`` condition (paged to the other sinks, sent by the next cycle); one that delivered is
    evaluated healthy."""
    if not (delivery.conditions or delivery.evaluated):
        return
    with sessions.begin() as session:
        keys = delivery.evaluated | {c.key for c in delivery.conditions}
        observe(session, delivery.conditions, keys, datetime.now(UTC))
