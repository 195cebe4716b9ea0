"""Coverage's withdrawal of late deliveries (``retract_delivered``) against the real Postgres."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.orm import Session

from app.reconcile.coverage import LATE_DELIVERY, retract_delivered
from tests.conftest import make_facility

NOW = datetime(2026, 12, 3, 15, 0, tzinfo=UTC)


def _stored(db: Session, resource_id: str, version: str | None) -> None:
    db.execute(
        text(
            "INSERT INTO resources (facility_id, resource_type, resource_id, version_id, content_hash,"
            " deleted, fetched_at) VALUES ('fac-c', 'Patient', :id, :v, 'h', false, :at)"
        ),
        {"id": resource_id, "v": version, "at": NOW},
    )


def _recovered(db: Session, resource_id: str, version: str | None, ago: timedelta) -> None:
    db.execute(
        text(
            "INSERT INTO reconcile_recovered (facility_id, resource_type, resource_id, version_id, deleted,"
            " strategy, recovered_at) VALUES ('fac-c', 'Patient', :id, :v, false, 'last-updated', :at)"
        ),
        {"id": resource_id, "v": version, "at": NOW - ago},
    )


def _left(db: Session) -> list[str]:
    rows = db.execute(text("SELECT resource_id FROM reconcile_recovered WHERE facility_id = 'fac-c'"))
    return sorted(rows.scalars())


def test_a_notification_finding_the_recovered_version_withdraws_only_that_recovery(db: Session) -> None:
    make_facility(db, "fac-c")
    _stored(db, "late", "2")
    _recovered(db, "late", "2", timedelta(seconds=20))  # its notification was on its way: delivered late
    _stored(db, "newer", "3")
    _recovered(db, "newer", "2", timedelta(seconds=20))  # v2's notification lost; the one read found v3
    _stored(db, "old", "1")
    _recovered(db, "old", "1", LATE_DELIVERY + timedelta(minutes=1))  # too late to be a delivery
    _stored(db, "unversioned", None)
    _recovered(db, "unversioned", None, timedelta(seconds=20))  # no version tells the change apart
    _stored(db, "other", "1")
    _recovered(db, "other", "1", timedelta(seconds=20))  # not notified
    notified = [("Patient", k, None) for k in ("late", "newer", "old", "unversioned")]

    assert retract_delivered(db, "fac-c", notified, NOW) == 1
    assert _left(db) == ["newer", "old", "other", "unversioned"]


def test_a_notification_announcing_the_recovered_version_withdraws_it_though_a_newer_one_is_stored(
    db: Session,
) -> None:
    """The notification of v2 arrives late, after v3 is stored: it delivered v2 all the same (its read
    finding v3 says nothing about v2). One announcing v3, or another version, withdraws nothing of v2."""
    make_facility(db, "fac-c")
    _stored(db, "moved-on", "3")
    _recovered(db, "moved-on", "2", timedelta(seconds=20))
    _stored(db, "announced-other", "3")
    _recovered(db, "announced-other", "2", timedelta(seconds=20))
    notified = [("Patient", "moved-on", "2"), ("Patient", "announced-other", "3")]

    assert retract_delivered(db, "fac-c", notified, NOW) == 1
    assert _left(db) == ["announced-other"]
