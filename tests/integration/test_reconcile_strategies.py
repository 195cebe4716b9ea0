"""Each change-detection strategy against the ehrsim profile it is for, over real HTTP, into a real
Postgres (a database of this module's own: the reconciler commits page by page). The EHRs here send no
notifications at all: whatever reaches Postgres, the reconciler found."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import delete, func, select, text

from app.db.models import INBOX_DONE, AdtMessage, Facility, ReconcileWatermark, RecoveredChange
from app.fhir.references import ResourceRef
from app.fhir.resources import content_hash
from app.reconcile.probe import probe
from app.reconcile.service import FAILED
from tests.integration.reconcile_world import ALL, FACILITIES, HISTORY, World


def _unmatched(world: World, facility: str) -> list[str]:
    """Every resource ehrsim holds, as Postgres holds it: at its version (by content where the vendor
    sends no meta), or a tombstone. Resources created and deleted between two runs were never visible
    to any search: not expected."""
    truth = world.admin(facility, "truth")["resources"]
    with world.sessions() as session:
        stored = {
            (r.resource_type, r.resource_id): r
            for r in session.execute(
                text(
                    "SELECT resource_type, resource_id, version_id, deleted, content_hash"
                    " FROM resources WHERE facility_id = :f"
                ),
                {"f": facility},
            )
        }
        facility_row = session.get(Facility, facility)
        assert facility_row is not None
        client = world.clients.get(facility_row)
    types = set(ALL[facility][1])
    wrong = []
    for item in truth:
        key = (item["resourceType"], item["id"])
        if key[0] not in types:
            continue
        row = stored.get(key)
        if item["deleted"]:
            if row is not None and not row.deleted:
                wrong.append(f"{key} not tombstoned")
            continue
        if row is None or row.deleted:
            wrong.append(f"{key} missing")
        elif row.version_id is not None:
            if row.version_id != item["versionId"]:
                wrong.append(f"{key} behind")
        elif row.content_hash != content_hash(client.read(ResourceRef(*key)).resource):
            wrong.append(f"{key} content differs")
    return wrong


def _recovered(world: World, facility: str) -> int:
    """Recovered changes of the reconciled types (a Medication a MedicationRequest names is recovered
    too when no notification brought it, but it is not one of the changes counted here)."""
    types = ALL[facility][1]
    with world.sessions() as session:
        return int(
            session.scalar(
                select(func.count()).where(
                    RecoveredChange.facility_id == facility, RecoveredChange.resource_type.in_(types)
                )
            )
            or 0
        )


def _changed_keys(before: list[dict[str, Any]], after: list[dict[str, Any]], types: set[str]) -> int:
    """Resources whose state changed between two truth snapshots and that a search could see."""
    old = {(r["resourceType"], r["id"]): r for r in before}
    n = 0
    for r in after:
        key = (r["resourceType"], r["id"])
        if key[0] not in types:
            continue
        prior = old.get(key)
        if prior is None:
            n += not r["deleted"]  # created (and not deleted before anyone could see it)
        elif (prior["versionId"], prior["deleted"]) != (r["versionId"], r["deleted"]):
            n += 1
    return n


@pytest.mark.parametrize("facility", list(FACILITIES))
def test_every_create_update_and_delete_is_found_and_counted_as_recovered(
    world: World, facility: str
) -> None:
    types = set(FACILITIES[facility][1])
    first = world.reconcile(facility)
    assert first.outcome == "complete", [(t.resource_type, t.reason) for t in first.types]
    assert _unmatched(world, facility) == []
    baseline = _recovered(world, facility)
    before = world.admin(facility, "truth")["resources"]
    world.admin(facility, "activity", {"changes": 40})
    after = world.admin(facility, "truth")["resources"]

    second = world.reconcile(facility)

    assert second.outcome == "complete", [(t.resource_type, t.reason) for t in second.types]
    assert _unmatched(world, facility) == []
    assert _recovered(world, facility) - baseline == _changed_keys(before, after, types)
    # nothing found twice: a third run with no change applies nothing
    assert world.reconcile(facility).total("applied") == 0


def test_a_failing_search_page_stops_the_type_and_keeps_its_watermark(world: World) -> None:
    facility = "rc-generic"
    world.reconcile(facility)
    with world.sessions() as session:
        marks = {
            w.resource_type: w.watermark
            for w in session.scalars(
                select(ReconcileWatermark).where(ReconcileWatermark.facility_id == facility)
            )
        }
    world.admin(facility, "activity", {"changes": 10})
    # the first search, retries and all
    world.admin(facility, "faults", {"error_burst": {"requests": 4, "status": 503}})
    try:
        report = world.reconcile(facility)
    finally:
        world.admin(facility, "faults", {"reset": True})
    failed = [t for t in report.types if t.outcome == FAILED]
    assert failed
    assert failed[0].reason == "ehr_unavailable"
    with world.sessions() as session:
        row = session.get(ReconcileWatermark, (facility, failed[0].resource_type, "last-updated"))
        assert row is not None
        assert row.watermark == marks[failed[0].resource_type]
        assert row.last_reason == "ehr_unavailable"
    assert world.reconcile(facility).outcome == "complete"
    assert _unmatched(world, facility) == []


@pytest.mark.parametrize("facility", ["rc-oracle-lu", "rc-athena-lu"])
def test_the_per_patient_change_search_is_what_the_vendor_accepts_and_finds_the_changes(
    world: World, facility: str
) -> None:
    assert world.reconcile(facility).outcome == "complete"  # the first run crawls (never re-crawled)
    world.admin(facility, "activity", {"changes": 30})
    world.transport.seen.clear()

    report = world.reconcile(facility)

    assert report.outcome == "complete", [(t.resource_type, t.reason) for t in report.types]
    searches = [httpx.URL(url) for url, _ in world.transport.seen if f"/{facility}/fhir/Observation?" in url]
    assert searches, "no Observation search was made"
    for url in searches:
        params = url.params
        assert params.get("patient")  # always scoped by patient
        value = params.get("_lastUpdated") or ""
        assert value.startswith("gt")
        assert len(params.get_list("_lastUpdated")) <= 2  # Oracle's limits
        assert "date" not in params
        if facility == "rc-athena-lu":
            assert len(value) == len("gt2026-12-02")  # day precision
    assert all(status == 200 for _, status in world.transport.seen)
    # Creates and significant updates are found by the change search itself (deletions and Oracle's
    # minor edits wait for the re-crawl).
    wrong = _unmatched(world, facility)
    assert all(w.endswith("not tombstoned") or w.endswith("behind") for w in wrong), wrong
    if facility == "rc-athena-lu":
        assert not [w for w in wrong if w.endswith("behind")]


def test_patients_named_by_the_adt_feed_join_the_per_patient_cohort(world: World) -> None:
    facility = "rc-oracle-lu"
    assert world.reconcile(facility).outcome == "complete"
    with world.sessions.begin() as session:
        rows = [
            ("adt-c1", "A04", "adt-only-patient", None),  # known only from ADT: nothing stored for it
            ("adt-c2", "A08", "adt-merged-away", None),
            ("adt-c3", "A40", "adt-survivor", "adt-merged-away"),  # merged adt-merged-away into it
        ]
        session.add_all(
            AdtMessage(
                facility_id=facility,
                control_id=control_id,
                raw="MSH|...",
                event_type=event,
                patient_id=patient,
                merged_patient_id=merged,
                status=INBOX_DONE,
            )
            for control_id, event, patient, merged in rows
        )
    world.transport.seen.clear()
    try:
        report = world.reconcile(facility, types=["Observation"])
    finally:
        with world.sessions.begin() as session:
            session.execute(delete(AdtMessage).where(AdtMessage.facility_id == facility))

    assert report.outcome == "complete", [(t.resource_type, t.reason) for t in report.types]
    patients = {
        httpx.URL(url).params.get("patient")
        for url, _ in world.transport.seen
        if f"/{facility}/fhir/Observation?" in url
    }
    assert {"adt-only-patient", "adt-survivor"} <= patients
    assert "adt-merged-away" not in patients


def test_more_patients_than_epic_lists_in_one_search_are_all_found_by_narrower_ranges(world: World) -> None:
    """Epic refuses a Patient search matching more than 100 (4127): the birth-date range is halved until
    each part is accepted, and no patient is lost."""
    facility = "rc-epic-wide"
    world.transport.seen.clear()
    report = world.reconcile(facility)
    assert report.outcome == "complete", [(t.resource_type, t.reason) for t in report.types]
    patient_searches = [
        (url, status) for url, status in world.transport.seen if f"/{facility}/fhir/Patient?" in url
    ]
    assert any(status == 400 for _, status in patient_searches)  # the cap was met, and narrowed around
    assert all("birthdate=" in url for url, _ in patient_searches)
    truth = [r for r in world.admin(facility, "truth")["resources"] if r["resourceType"] == "Patient"]
    assert len(truth) > 100
    assert _unmatched(world, facility) == []
    assert _recovered(world, facility) == sum(not r["deleted"] for r in truth)


def _probed(world: World, facility: str) -> None:
    with world.sessions.begin() as session:
        row = session.get(Facility, facility)
        assert row is not None
        assert probe(session, row, world.clients, now=datetime.now(UTC)).ok


def _stored(world: World, facility: str, rtype: str) -> dict[str, tuple[str | None, bool]]:
    """Each stored resource of a type: (versionId, deleted)."""
    with world.sessions() as session:
        rows = session.execute(
            text(
                "SELECT resource_id, version_id, deleted FROM resources"
                " WHERE facility_id = :f AND resource_type = :t"
            ),
            {"f": facility, "t": rtype},
        )
        return {r.resource_id: (r.version_id, r.deleted) for r in rows}


@pytest.mark.parametrize("facility", list(HISTORY))
def test_a_deletion_is_found_in_the_history_before_any_re_crawl_where_the_ehr_has_it(
    world: World, facility: str
) -> None:
    has_history = facility == "rc-hapi-hist"
    _probed(world, facility)
    first = world.reconcile(facility)  # never re-crawled: a full crawl
    assert first.outcome == "complete", [(t.resource_type, t.reason) for t in first.types]
    live = sorted(
        r["id"]
        for r in world.admin(facility, "truth")["resources"]
        if r["resourceType"] == "Observation" and not r["deleted"]
    )
    gone, back = live[0], live[1]
    world.admin(facility, "change", {"type": "Observation", "id": gone, "delete": True})
    world.admin(facility, "change", {"type": "Observation", "id": back, "delete": True})
    world.admin(facility, "change", {"type": "Observation", "id": back, "delete": False})  # created again
    world.transport.seen.clear()

    second = world.reconcile(facility)  # the re-crawl is an hour away: only the change search runs

    assert second.outcome == "complete", [(t.resource_type, t.reason) for t in second.types]
    urls = [httpx.URL(url) for url, _ in world.transport.seen if f"/{facility}/fhir/" in url]
    searches = [u for u in urls if u.path.endswith("/Observation") and "_id" not in u.params]
    assert searches
    assert all(u.params.get("_lastUpdated") for u in searches)  # no re-crawl ran
    histories = [u for u in urls if u.path.endswith("/Observation/_history")]
    # reads by id, batched as an ``_id`` search or one at a time (what a batch did not list)
    reads = sorted(
        [i for u in urls if u.path.endswith("/Observation") for i in u.params.get("_id", "").split(",") if i]
        + [u.path.rsplit("/", 1)[-1] for u in urls if u.path.startswith(f"/{facility}/fhir/Observation/")]
    )
    stored = _stored(world, facility, "Observation")
    truth = {
        r["id"]: r for r in world.admin(facility, "truth")["resources"] if r["resourceType"] == "Observation"
    }
    assert stored[back] == (truth[back]["versionId"], False)  # deleted, created again: live
    if has_history:
        assert histories
        assert histories[0].params.get("_since")
        assert stored[gone][1] is True  # tombstoned without a re-crawl or a notification
        assert {i for i in reads if i != "_history"} == {gone, back}  # nothing else read
        assert _unmatched(world, facility) == []
    else:
        assert histories == []
        assert reads == []
        assert stored[gone][1] is False  # as before: the re-crawl will find it
    # what the history named is applied once: a run with no change applies nothing
    assert world.reconcile(facility).total("applied") == 0
