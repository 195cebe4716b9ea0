"""The version guard of DESIGN.md rule 3, against real Postgres."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.db.models import Resource, ResourceVersion
from app.ingest.pipeline.observed import Observed
from app.ingest.pipeline.store import store_versions
from tests.conftest import make_facility
from tests.fixtures import observation

T0 = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)


def _obs(version: str, minute: int, *, value: float = 70.0, fetched: int = 0) -> Observed:
    body = observation("o1", version, f"2026-11-24T10:{minute:02d}:00Z", value=value)
    return Observed("fac-1", "Observation", "o1", body, T0 + timedelta(seconds=fetched))


def _current(db: Session) -> Resource:
    db.expire_all()
    row = db.get(Resource, ("fac-1", "Observation", "o1"))
    assert row is not None
    return row


def test_newer_last_updated_wins_and_older_is_counted_stale(db: Session) -> None:
    make_facility(db)
    store_versions(db, [_obs("3", 30, value=90, fetched=1)])
    stats = store_versions(db, [_obs("2", 20, value=80, fetched=2)])  # fetched later, but older data
    assert (stats.applied, stats.stale) == (0, 1)
    assert _current(db).version_id == "3"


def test_same_version_twice_is_unchanged_not_stale(db: Session) -> None:
    make_facility(db)
    store_versions(db, [_obs("1", 10, fetched=1)])
    stats = store_versions(db, [_obs("1", 10, fetched=2)])
    assert (stats.applied, stats.unchanged, stats.stale) == (0, 1, 0)


def test_without_meta_the_later_fetch_wins(db: Session) -> None:
    make_facility(db)
    first = _obs("1", 10, value=60, fetched=5)
    late_old = _obs("1", 10, value=50, fetched=1)
    for item in (first, late_old):
        assert item.resource is not None
        del item.resource["meta"]
    store_versions(db, [first])
    stats = store_versions(db, [late_old])
    assert stats.stale == 1
    current = _current(db).resource
    assert current is not None
    assert current["valueQuantity"]["value"] == 60


def test_tombstone_keeps_last_body_and_a_stale_fetch_cannot_resurrect(db: Session) -> None:
    make_facility(db)
    store_versions(db, [_obs("2", 20, fetched=1)])
    store_versions(db, [Observed("fac-1", "Observation", "o1", None, T0 + timedelta(seconds=3))])
    row = _current(db)
    assert row.deleted is True
    assert row.version_id == "2"
    assert row.resource is not None
    stats = store_versions(db, [_obs("2", 20, fetched=2)])  # fetched before the deletion was seen
    assert stats.stale == 1
    assert _current(db).deleted is True


def test_recreated_after_delete_with_newer_version_is_live_again(db: Session) -> None:
    make_facility(db)
    store_versions(db, [_obs("2", 20, fetched=1)])
    store_versions(db, [Observed("fac-1", "Observation", "o1", None, T0 + timedelta(seconds=3))])
    store_versions(db, [_obs("4", 40, fetched=4)])
    assert (_current(db).deleted, _current(db).version_id) == (False, "4")


def test_every_distinct_version_is_in_history_once(db: Session) -> None:
    make_facility(db)
    store_versions(db, [_obs("1", 10, value=1, fetched=1), _obs("2", 20, value=2, fetched=2)])
    store_versions(db, [_obs("2", 20, value=2, fetched=3), _obs("1", 10, value=1, fetched=4)])
    count = db.scalar(select(func.count()).select_from(ResourceVersion))
    assert count == 2


def test_version_fetched_before_a_deletion_cannot_resurrect_it_but_the_tombstone_carries_it(
    db: Session,
) -> None:
    """Worker B reads v3 at t=1, worker A sees the 410 at t=2 and commits first; B commits last."""
    make_facility(db)
    store_versions(db, [_obs("2", 20, fetched=0)])
    store_versions(db, [Observed("fac-1", "Observation", "o1", None, T0 + timedelta(seconds=2))])
    stats = store_versions(db, [_obs("3", 30, value=99, fetched=1)])
    assert (stats.applied, stats.absorbed) == (0, 1)
    row = _current(db)
    assert (row.deleted, row.version_id, row.fetched_at) == (True, "3", T0 + timedelta(seconds=2))
    assert row.resource is not None
    assert row.resource["valueQuantity"]["value"] == 99


def _gone(fetched: int, deletion: str = "gone") -> Observed:
    return Observed("fac-1", "Observation", "o1", None, T0 + timedelta(seconds=fetched), deletion=deletion)


def _payload(version: str, minute: int, *, fetched: int) -> Observed:
    return replace(_obs(version, minute, fetched=fetched), from_payload=True)


def test_a_late_payload_never_revives_a_tombstone_and_is_reported_for_a_read(db: Session) -> None:
    """Create, delete, then the create's payload arrives late (Medplum and HAPI deliver unordered)."""
    make_facility(db)
    store_versions(db, [_payload("1", 10, fetched=1)])
    store_versions(db, [_gone(2)])
    stats = store_versions(db, [_payload("1", 10, fetched=3)])
    assert stats.unverified == {("Observation", "o1")}
    row = _current(db)
    assert (row.deleted, row.deletion, row.version_id) == (True, "gone", "1")


def test_a_read_after_the_deletion_does_revive_it(db: Session) -> None:
    make_facility(db)
    store_versions(db, [_payload("1", 10, fetched=1)])
    store_versions(db, [_gone(2)])
    stats = store_versions(db, [_obs("2", 20, fetched=3)])
    assert (stats.applied, stats.unverified) == (1, set())
    row = _current(db)
    assert (row.deleted, row.deletion, row.version_id, row.from_payload) == (False, None, "2", False)


def test_a_tombstone_carries_the_newest_version_known_when_the_update_arrives_after_the_delete(
    db: Session,
) -> None:
    """Issue 9 item 10: the delete was stored first with the create's version, the update came after."""
    make_facility(db)
    store_versions(db, [_obs("1", 10, fetched=1)])
    store_versions(db, [_gone(5)])
    stats = store_versions(db, [_payload("2", 20, fetched=3)])  # received before the deletion was seen
    assert (stats.absorbed, stats.unverified) == (1, set())
    row = _current(db)
    assert (row.deleted, row.version_id, row.last_updated) == (
        True,
        "2",
        datetime(2026, 11, 24, 10, 20, tzinfo=UTC),
    )
    history = db.scalars(select(ResourceVersion.version_id).order_by(ResourceVersion.id)).all()
    assert history == ["1", "1", "2"]  # v1, the tombstone (carrying v1 then), v2


def test_update_then_delete_in_one_batch_ends_deleted(db: Session) -> None:
    """HAPI payload mode: PUT v3 then DELETE arrive together; the later observation is the deletion."""
    make_facility(db)
    store_versions(db, [_obs("2", 20, fetched=0)])
    store_versions(
        db,
        [_obs("3", 30, fetched=1), Observed("fac-1", "Observation", "o1", None, T0 + timedelta(seconds=2))],
    )
    assert _current(db).deleted is True


def test_bodies_summaries_and_issues_are_stored_exactly_whatever_characters_they_hold(
    db: Session,
) -> None:
    """The JSON columns are bound as one text[] literal per statement: every character that literal
    syntax gives a meaning to (quotes, backslashes, braces, commas, spaces, the word NULL) comes back as
    sent, in the current row and in history, beside a tombstone's NULL body in the same statement."""
    make_facility(db)
    tricky = ['say "hi"', "C:\\path\\", '\\"', "{a,b}", "NULL", "", " spaced ", "naïve ✓ 日本", "\\u0041"]
    body = _obs("1", 10).resource
    assert body is not None
    body["note"] = [{"text": t} for t in tricky]
    body["valueQuantity"]["value"] = Decimal("1.00")
    other = observation("o2", "1", "2026-11-24T10:00:00Z")
    store_versions(db, [Observed("fac-1", "Observation", "o2", other, T0)])
    item = Observed(
        "fac-1", "Observation", "o1", body, T0, summary={"display": tricky}, issues=["note.0.text: x\\y"]
    )
    gone = Observed("fac-1", "Observation", "o2", None, T0 + timedelta(seconds=1), deletion="gone")
    stats = store_versions(db, [item, gone])
    assert (stats.applied, stats.tombstones) == (2, 1)
    row = _current(db)
    assert row.resource == body
    assert (row.normalized, row.issues) == ({"display": tricky}, ["note.0.text: x\\y"])
    history = db.scalars(select(ResourceVersion).where(ResourceVersion.resource_id == "o1")).one()
    assert history.resource == body
    tombstone = db.get(Resource, ("fac-1", "Observation", "o2"))
    assert tombstone is not None
    assert (tombstone.deleted, tombstone.resource) == (True, other)


def test_ids_versions_and_instants_are_stored_exactly_as_every_column_is_bound_as_one_literal(
    db: Session,
) -> None:
    """Every column (ids, versions, instants, flags) travels as one array literal per statement: an
    id or version holding literal syntax comes back as sent, an instant keeps its microseconds and its
    offset, a missing lastUpdated stays NULL (not the word), and the booleans stay booleans."""
    make_facility(db)
    plus_two = datetime(2026, 11, 24, 12, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2)))
    odd_ids = ['a"b', "c\\d", "{e,f}", "NULL", " g "]
    items = []
    for n, rid in enumerate(odd_ids):
        body = observation(rid, f'v"{n}\\', "2026-11-24T10:00:00.5+05:30")
        if rid == "NULL":
            del body["meta"]["lastUpdated"]
        items.append(Observed("fac-1", "Observation", rid, body, plus_two + timedelta(microseconds=n)))
    stats = store_versions(db, items)
    assert stats.applied == len(odd_ids)
    db.expire_all()
    for n, rid in enumerate(odd_ids):
        row = db.get(Resource, ("fac-1", "Observation", rid))
        assert row is not None, rid
        assert row.version_id == f'v"{n}\\'
        assert row.fetched_at == plus_two + timedelta(microseconds=n)
        assert row.deleted is False
        expected = None if rid == "NULL" else datetime(2026, 11, 24, 4, 30, 0, 500000, tzinfo=UTC)
        assert row.last_updated == expected
    versions = db.scalars(select(ResourceVersion.resource_id).where(ResourceVersion.facility_id == "fac-1"))
    assert sorted(versions) == sorted(odd_ids)
