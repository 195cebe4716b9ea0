from __future__ import annotations

import uuid

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from app.db.models import QuarantinedNotification
from app.ehr.bulk import UnparseableLine
from app.ingest.quarantine import NdjsonQuarantine, count_quarantined, list_quarantined
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


def test_an_unparseable_ndjson_line_is_kept_with_its_file_path_and_line_number(engine: Engine) -> None:
    facility_id = f"fac-nd-{uuid.uuid4().hex[:6]}"
    with Session(engine) as session, session.begin():
        make_facility(session, facility_id)
    try:
        sink = NdjsonQuarantine(engine)
        bad = UnparseableLine(
            facility_id, "/fhir/files/Observation.ndjson", 7, b'{"id": "o\x00\xff', "not JSON"
        )
        sink(bad)
        sink(bad)  # the same export read again: one row, two deliveries
        sink(
            UnparseableLine(
                facility_id, "/fhir/files/Observation.ndjson", 9, b'{"id": "o\x00\xff', "not JSON"
            )
        )
        with Session(engine) as session:
            rows = sorted(list_quarantined(session, facility_id=facility_id), key=lambda r: r.id)
        assert [(r.reason, r.path, r.body["line"], r.deliveries) for r in rows] == [  # type: ignore[call-overload]
            ("bulk_line_unparseable", "/fhir/files/Observation.ndjson", 7, 2),
            ("bulk_line_unparseable", "/fhir/files/Observation.ndjson", 9, 1),
        ]
        assert rows[0].detail == "line 7: not JSON"
        assert rows[0].body["text"].startswith('{"id": "o')  # type: ignore[call-overload]
    finally:
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM quarantine WHERE facility_id = :f"), {"f": facility_id})
            conn.execute(text("DELETE FROM facilities WHERE id = :f"), {"f": facility_id})
