"""One alerting cycle, what beat's ``alerts.evaluate`` task runs every ``EHRI_ALERT_EVALUATE_INTERVAL``:

    app.feeds.evaluate ──► conditions, evaluated ──► app.alerts.observe ──► alert rows + outbox rows
    app.alerts.deliver_due ──► sends what is due ──► sink_failing conditions ──► observe again

Each step commits on its own: the evaluation and the alert transitions in one transaction (an alert is
never opened without its deliveries queued), each send in its own. Two cycles at once (two beats) are
harmless: an alert opens once (the live-key index), a quiet check opens once per source, a delivery is
claimed by one sender (``SKIP LOCKED``). The deliveries are sent right after the transitions that queued
them, so a page leaves within one cycle of the condition being seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
import structlog
from sqlalchemy.orm import Session, sessionmaker

from app.alerts.delivery import DeliveryReport, deliver_due
from app.alerts.service import observe
from app.feeds.service import evaluate

log = structlog.get_logger("alerts.cycle")


@dataclass(frozen=True)
class CycleReport:
    conditions: int
    opened: int
    resolved: int
    sent: int
    failed: int


def run_cycle(
    sessions: sessionmaker[Session], http: httpx.Client, now: datetime | None = None
) -> CycleReport:
    now = now or datetime.now(UTC)
    with sessions.begin() as session:
        conditions, evaluated = evaluate(session, now)
        result = observe(session, conditions, evaluated, now)
    delivery = deliver_due(sessions, datetime.now(UTC), http)
    _observe_sinks(sessions, delivery)
    report = CycleReport(
        conditions=len(conditions),
        opened=len(result.opened) + len(result.reopened),
        resolved=len(result.resolved),
        sent=delivery.sent,
        failed=delivery.failed,
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


def _observe_sinks(sessions: sessionmaker[Session], delivery: DeliveryReport) -> None:
    """The sinks' own health, as the sends just found it: a sink whose deliveries failed for good is a
    ``sink_failing`` condition (paged to the other sinks, sent by the next cycle); one that delivered is
    evaluated healthy."""
    if not (delivery.conditions or delivery.evaluated):
        return
    with sessions.begin() as session:
        keys = delivery.evaluated | {c.key for c in delivery.conditions}
        observe(session, delivery.conditions, keys, datetime.now(UTC))
