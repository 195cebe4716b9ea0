from __future__ import annotations

from sqlalchemy.orm import Session

from app.db.models import QuarantinedNotification
from app.ingest.quarantine import count_quarantined, list_quarantined
from tests.conftest import make_facility


def _quarantine(db: Session, facility_id: str, digest: str) -> None:
    db.add(
        QuarantinedNotification(
            facility_id=facility_id,
            reason="not_a_notification",
            detail="a Bundle that is not a notification",
            method="POST",
            path=f"/hooks/{facility_id}",
            content_type="application/fhir+json",
            body_sha256=digest,
            body={"resourceType": "Bundle", "type": "searchset"},
        )
    )
    db.flush()


def test_quarantined_bodies_are_listed_newest_first_and_counted_per_facility(db: Session) -> None:
    make_facility(db, "fac-q1")
    make_facility(db, "fac-q2")
    _quarantine(db, "fac-q1", "a" * 64)
    _quarantine(db, "fac-q1", "b" * 64)
    _quarantine(db, "fac-q2", "c" * 64)
    rows = list_quarantined(db, facility_id="fac-q1")
    assert [r.body_sha256[0] for r in rows] == ["b", "a"]
    assert (count_quarantined(db, facility_id="fac-q1"), count_quarantined(db)) == (2, 3)
