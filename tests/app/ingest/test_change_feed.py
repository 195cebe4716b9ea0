"""The consumers' change feed: a row per applied change (not per stale or repeated write), and a
pg_notify with ids only, delivered on commit."""

from __future__ import annotations

import json
import select
import uuid
from datetime import UTC, datetime, timedelta

import psycopg
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from app.ingest.pipeline.observed import Observed
from app.ingest.pipeline.store import store_versions
from tests.conftest import make_facility
from tests.fixtures import observation

T0 = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)


def _obs(version: str, minute: int, fetched: int) -> Observed:
    body = observation("o1", version, f"2026-11-24T10:{minute:02d}:00Z", value=float(minute))
    return Observed("fac-1", "Observation", "o1", body, T0 + timedelta(seconds=fetched))


def test_only_applied_changes_enter_the_feed_in_order(db: Session) -> None:
    make_facility(db)
    store_versions(db, [_obs("1", 10, 1), _obs("2", 20, 2)])
    store_versions(db, [_obs("1", 10, 3), _obs("2", 20, 4)])  # stale, then a repeat
    store_versions(db, [Observed("fac-1", "Observation", "o1", None, T0 + timedelta(seconds=5))])
    feed = db.execute(text("SELECT version_id, deleted FROM change_feed ORDER BY seq")).all()
    assert [tuple(r) for r in feed] == [("1", False), ("2", False), ("2", True)]


def test_every_distinct_version_that_reaches_history_is_in_the_feed(db: Session) -> None:
    """Issue 9 item 10: an update refused as stale (after the delete, or after a newer version) is still
    a version: history has it, so the feed announces it, and a tombstone carries the newest one."""
    make_facility(db)
    store_versions(db, [_obs("1", 10, 1)])
    store_versions(db, [Observed("fac-1", "Observation", "o1", None, T0 + timedelta(seconds=9))])
    store_versions(db, [_obs("3", 30, 4)])  # the update, observed before the delete: the tombstone's now
    store_versions(db, [_obs("2", 20, 3)])  # older than v3: stale, yet a version never announced
    store_versions(db, [_obs("2", 20, 5)])  # a repeat: nothing new
    feed = db.execute(text("SELECT version_id, deleted FROM change_feed ORDER BY seq")).all()
    assert [tuple(r) for r in feed] == [("1", False), ("1", True), ("3", True), ("2", False)]
    history = db.execute(text("SELECT DISTINCT version_id FROM resource_history WHERE NOT deleted")).all()
    assert {r.version_id for r in history} == {r[0] for r in feed}


def test_committed_change_is_announced_with_ids_only(engine: Engine) -> None:
    conninfo = make_url(engine.url).set(drivername="postgresql").render_as_string(hide_password=False)
    facility_id = f"fac-{uuid.uuid4().hex[:6]}"
    with psycopg.connect(conninfo, autocommit=True) as listener:
        listener.execute("LISTEN ehr_ingest_changes")
        with Session(engine) as session, session.begin():
            make_facility(session, facility_id)
            body = observation("o9", "1", "2026-11-24T10:00:00Z")
            store_versions(session, [Observed(facility_id, "Observation", "o9", body, T0)])
        ready = select.select([listener.fileno()], [], [], 5)[0]
        assert ready, "no notification within 5 s"
        payloads = [json.loads(n.payload) for n in listener.notifies(timeout=1, stop_after=1)]
    with engine.begin() as conn:
        for table in ("change_feed", "resource_history", "resources"):
            conn.execute(text(f"DELETE FROM {table} WHERE facility_id = :f"), {"f": facility_id})
        conn.execute(text("DELETE FROM facilities WHERE id = :f"), {"f": facility_id})
    assert payloads[0]["facility_id"] == facility_id
    assert set(payloads[0]) == {"seq", "facility_id", "resource_type", "resource_id", "deleted"}
