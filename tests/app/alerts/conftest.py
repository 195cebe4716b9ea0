"""Alerts against the real Postgres: a clock the tests drive, conditions, and a router naming fixed sinks."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session

from app.alerts.conditions import AlertKind, Condition, Severity
from app.db.models import Alert, AlertDelivery, AlertEvent

T0 = datetime(2026, 12, 3, 2, 0, tzinfo=UTC)


def condition(
    facility: str = "fac-1", kind: AlertKind = "feed_quiet", source: str = "facility", **details: int | str
) -> Condition:
    return Condition(facility, source, kind, f"{kind} at {facility}", details=dict(details))


def route_to(*sinks: str) -> object:
    """A router sending every alert to ``sinks``."""

    def route(facility_id: str, source: str, kind: str, severity: Severity) -> list[str]:
        return list(sinks)

    return route


def alerts_of(session: Session, facility: str) -> list[Alert]:
    return list(session.scalars(select(Alert).where(Alert.facility_id == facility).order_by(Alert.id)))


def deliveries_of(session: Session, alert_id: int) -> list[tuple[str, str, str]]:
    """(sink, action, state) in queue order."""
    rows = session.execute(
        select(AlertDelivery.sink, AlertDelivery.action, AlertDelivery.state)
        .where(AlertDelivery.alert_id == alert_id)
        .order_by(AlertDelivery.id)
    )
    return [(r.sink, r.action, r.state) for r in rows]


def events_of(session: Session, alert_id: int) -> list[str]:
    return list(
        session.scalars(
            select(AlertEvent.event).where(AlertEvent.alert_id == alert_id).order_by(AlertEvent.id)
        )
    )


def forget_facilities(engine: Engine, *ids: str) -> None:
    """Delete committed facilities and everything alerts recorded of them."""
    with engine.begin() as conn:
        alert_ids = "SELECT id FROM alerts WHERE facility_id = ANY(:ids)"
        conn.execute(
            text(f"DELETE FROM alert_deliveries WHERE alert_id IN ({alert_ids})"), {"ids": list(ids)}
        )
        conn.execute(text(f"DELETE FROM alert_events WHERE alert_id IN ({alert_ids})"), {"ids": list(ids)})
        conn.execute(text("DELETE FROM alerts WHERE facility_id = ANY(:ids)"), {"ids": list(ids)})
        conn.execute(text("DELETE FROM facilities WHERE id = ANY(:ids)"), {"ids": list(ids)})


@pytest.fixture
def commit_facility(engine: Engine) -> Iterator[Callable[[str], str]]:
    """``commit_facility(id)`` commits a facility, for tests whose sessions must see each other's commits;
    it and everything alerts recorded of it are deleted after the test."""
    from tests.conftest import make_facility

    made: list[str] = []

    def commit(facility_id: str) -> str:
        with Session(engine) as session:
            make_facility(session, facility_id)
            session.commit()
        made.append(facility_id)
        return facility_id

    try:
        yield commit
    finally:
        forget_facilities(engine, *made)


@pytest.fixture
def committed_facility(commit_facility: Callable[[str], str], request: pytest.FixtureRequest) -> str:
    return commit_facility(f"alerts-{request.node.name[-40:].replace('_', '-')}".lower()[:64])
