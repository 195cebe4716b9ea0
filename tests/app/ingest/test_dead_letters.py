from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.orm import Session

from app.ingest.dead_letters import dead_letter_counts, list_dead_letters, replay_dead_letters
from tests.conftest import make_facility


def _dead(db: Session, key: str, reason: str, facility: str = "fac-1") -> int:
    return int(
        db.execute(
            text(
                "INSERT INTO inbox"
                " (facility_id, dedup_key, focus_type, focus_id, status, reason, attempts, done_at)"
                " VALUES (:f, :k, 'Observation', :focus, 'dead', :r, 8, now()) RETURNING id"
            ),
            {"f": facility, "k": key, "focus": key, "r": reason},
        ).scalar_one()
    )


def test_list_filters_by_reason_and_counts_by_facility(db: Session) -> None:
    make_facility(db)
    _dead(db, "a", "ehr_http_403")
    _dead(db, "b", "ehr_server_error")
    rows = list_dead_letters(db, reason="ehr_http_403")
    assert [(r.focus, r.reason, r.attempts) for r in rows] == [("Observation/a", "ehr_http_403", 8)]
    assert dead_letter_counts(db) == [("fac-1", "ehr_http_403", 1), ("fac-1", "ehr_server_error", 1)]


def test_replay_requeues_with_a_fresh_budget_and_is_idempotent(db: Session) -> None:
    make_facility(db)
    target = _dead(db, "a", "ehr_http_403")
    _dead(db, "b", "ehr_http_403")
    assert replay_dead_letters(db, ids=[target]) == {"fac-1": 1}
    assert replay_dead_letters(db, ids=[target]) == {}
    row = db.execute(
        text("SELECT status, attempts, reason, detail FROM inbox WHERE id = :i"), {"i": target}
    ).one()
    assert (row.status, row.attempts, row.reason) == ("pending", 0, None)
    assert row.detail == "replayed after: ehr_http_403"
    assert replay_dead_letters(db, reason="ehr_http_403") == {"fac-1": 1}
