"""``bulk-since`` against ehrsim's MEDITECH profile over real HTTP, into a real Postgres: no notification is
ever sent, so whatever reaches Postgres the export found. ``rc-meditech-since`` exports ``_since`` its
watermark from a configured Group (deletions listed in the manifest); ``rc-meditech`` exports in full on
every run (its re-crawl) and finds deletions by what the export no longer lists."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any, cast

import httpx
import pytest
from sqlalchemy import select, text

from app.db.models import (
    Facility,
    QuarantinedNotification,
    ReconcileBulkJob,
    ReconcileRun,
    ReconcileWatermark,
)
from app.ehr.client import EHRClient
from app.errors import BulkLineUnparseable
from app.reconcile.service import FAILED, PARTIAL
from app.reconcile.strategies.bulk_since import PAGE_SIZE
from tests.integration.reconcile_world import World
from tests.integration.test_reconcile_strategies import _changed_keys, _recovered, _unmatched

SINCE, FULL = "rc-meditech-since", "rc-meditech"


def _marks(world: World, facility: str) -> dict[str, datetime | None]:
    with world.sessions() as session:
        rows = session.scalars(select(ReconcileWatermark).where(ReconcileWatermark.facility_id == facility))
        return {w.resource_type: w.watermark for w in rows}


def _client(world: World, facility: str) -> EHRClient:
    with world.sessions() as session:
        row = session.get(Facility, facility)
        assert row is not None
        return world.clients.get(row)


def _exports(world: World, facility: str) -> list[httpx.URL]:
    return [
        httpx.URL(url) for url, _ in world.transport.seen if f"/{facility}/fhir/" in url and "$export?" in url
    ]


def _no_job_runs(world: World, facility: str) -> bool:
    """Whether the client's one export slot at ehrsim is free: a kick-off is accepted (then deleted)."""
    client = _client(world, facility)
    kickoff = client.send(
        "GET", f"{client.base_url}/Patient/$export", ok=(202, 429), headers={"Prefer": "respond-async"}
    )
    if kickoff.status_code == 429:
        return False
    client.send("DELETE", kickoff.headers["content-location"], ok=(202,))
    return True


def _export_lines(world: World, facility: str, rtype: str) -> list[tuple[str, int, bytes]]:
    """(file path, 1-based line number, line) of a full export of ``rtype`` made directly."""
    client = _client(world, facility)
    kickoff = client.send(
        "GET",
        f"{client.base_url}/Patient/$export?_type={rtype}",
        ok=(202,),
        headers={"Prefer": "respond-async"},
    )
    status = kickoff.headers["content-location"]
    while (poll := client.send("GET", status, ok=(200, 202))).status_code == 202:
        pass  # ehrsim's Retry-After is advice; its polls are counted, not timed
    lines = []
    for output in poll.json()["output"]:
        with client.stream(output["url"]) as response:
            body = response.read()
        path = httpx.URL(output["url"]).path
        lines += [(path, n, line) for n, line in enumerate(body.splitlines(), 1)]
    client.send("DELETE", status, ok=(202,))
    return lines


def test_changes_since_the_watermark_are_exported_with_the_deleted_entries_and_counted_as_recovered(
    world: World,
) -> None:
    first = world.reconcile(SINCE)
    assert first.outcome == "complete", [(t.resource_type, t.reason) for t in first.types]
    assert {t.strategy for t in first.types} == {"bulk-since"}
    assert _unmatched(world, SINCE) == []
    marks = _marks(world, SINCE)
    baseline = _recovered(world, SINCE)
    before = world.admin(SINCE, "truth")["resources"]
    world.admin(SINCE, "activity", {"changes": 60})
    after = world.admin(SINCE, "truth")["resources"]
    types = {"Patient", "Observation", "Condition"}
    assert any(r["deleted"] for r in after if r["resourceType"] in types and r not in before)
    world.transport.seen.clear()

    second = world.reconcile(SINCE)

    assert second.outcome == "complete", [(t.resource_type, t.reason) for t in second.types]
    exports = _exports(world, SINCE)
    assert len(exports) == 3  # one job per type, one after the other
    for url in exports:
        assert url.path == f"/{SINCE}/fhir/Group/g-all/$export"
        mark = marks[url.params["_type"]]
        assert mark is not None
        assert datetime.fromisoformat(url.params["_since"]) == mark - timedelta(minutes=1)  # - overlap
    assert _unmatched(world, SINCE) == []  # creates and updates at ehrsim's version, deletes tombstoned
    assert _recovered(world, SINCE) - baseline == _changed_keys(before, after, types)
    # the new watermark is each job's transactionTime: later than the old one, never past the export
    for rtype, mark in _marks(world, SINCE).items():
        old = marks[rtype]
        assert mark is not None
        assert old is not None
        assert mark > old
    assert world.reconcile(SINCE).total("applied") == 0  # nothing found twice


def test_a_failed_job_is_cancelled_and_does_not_move_the_watermark(world: World) -> None:
    assert world.reconcile(SINCE).outcome == "complete"
    marks = _marks(world, SINCE)
    world.admin(SINCE, "activity", {"changes": 20})
    world.admin(SINCE, "faults", {"bulk_job_error": True})
    try:
        report = world.reconcile(SINCE)
        assert _no_job_runs(world, SINCE)  # cancelled (DELETE): it holds no slot at the EHR
    finally:
        world.admin(SINCE, "faults", {"reset": True})
    assert report.outcome == FAILED
    assert {t.reason for t in report.types} == {"bulk_export_failed"}
    assert _marks(world, SINCE) == marks
    assert _kept(world, SINCE) is None  # given up: nothing kept to resume
    with world.sessions() as session:
        rows = session.scalars(select(ReconcileWatermark).where(ReconcileWatermark.facility_id == SINCE))
        assert {w.last_reason for w in rows} == {"bulk_export_failed"}
    assert world.reconcile(SINCE).outcome == "complete"
    assert _unmatched(world, SINCE) == []


def test_a_kickoff_refused_while_another_job_runs_waits_a_bounded_time_then_fails(world: World) -> None:
    assert world.reconcile(SINCE).outcome == "complete"
    marks = _marks(world, SINCE)
    client = _client(world, SINCE)
    running = client.send(
        "GET", f"{client.base_url}/Patient/$export", ok=(202,), headers={"Prefer": "respond-async"}
    )
    try:
        world.admin(SINCE, "activity", {"changes": 10})
        report = world.reconcile(SINCE, types=["Observation"])
    finally:
        client.send("DELETE", running.headers["content-location"], ok=(202,))
    assert report.outcome == FAILED
    assert [t.reason for t in report.types] == ["bulk_export_busy"]
    assert _marks(world, SINCE) == marks
    assert world.reconcile(SINCE).outcome == "complete"
    assert _unmatched(world, SINCE) == []


def _kickoffs(world: World, facility: str, rtype: str) -> int:
    """Kick-offs of ``rtype`` exports ehrsim accepted."""
    kickoffs = world.admin(facility, "exports")["kickoffs"]
    return sum(httpx.URL(k["request"]).params.get("_type") == rtype for k in kickoffs)


def _no_time(world: World) -> Any:
    """Settings of a run with no time left, whose polls wait for nothing (no Retry-After carried over)."""
    zero = timedelta(0)
    return world.settings.model_copy(update={"reconcile_time_budget": zero, "bulk_retry_after_cap": zero})


def _kept(world: World, facility: str) -> ReconcileBulkJob | None:
    with world.sessions() as session:
        return session.get(ReconcileBulkJob, facility)


def test_a_job_past_the_run_budget_is_kept_and_resumed_by_the_next_runs_without_a_new_kickoff(
    world: World,
) -> None:
    """ehrsim's MEDITECH answers two status polls 202 before the manifest; a run with no time left polls
    once and stops. Runs 1 and 2 each poll once, run 3 reads one page of the files and stops, run 4
    finishes: one kick-off in all, every change applied once."""
    assert world.reconcile(SINCE).outcome == "complete"
    marks = _marks(world, SINCE)
    baseline = _recovered(world, SINCE)
    before = world.admin(SINCE, "truth")["resources"]
    for _ in range(20):  # until the export of Observation since the watermark is more than one page
        world.admin(SINCE, "activity", {"changes": 1000})
        after = world.admin(SINCE, "truth")["resources"]
        if _changed_keys(before, after, {"Observation"}) > PAGE_SIZE:
            break
    changed = _changed_keys(before, after, {"Observation"})
    assert changed > PAGE_SIZE
    kickoffs = _kickoffs(world, SINCE, "Observation")
    no_time = _no_time(world)

    first = world.reconcile(SINCE, no_time, types=["Observation"])

    assert first.outcome == PARTIAL
    assert _kickoffs(world, SINCE, "Observation") == kickoffs + 1
    kept = _kept(world, SINCE)
    assert kept is not None
    assert (kept.resource_type, kept.file_index, kept.line) == ("Observation", 0, 0)
    assert httpx.URL(kept.status_url).path.startswith(f"/{SINCE}/fhir/$export-poll/")
    assert not _no_job_runs(world, SINCE)  # kept at the EHR: not cancelled
    assert _marks(world, SINCE) == marks

    second = world.reconcile(SINCE, no_time, types=["Observation"])  # polls it again: still running
    third = world.reconcile(SINCE, no_time, types=["Observation"])  # the manifest; one page, then out

    assert [second.outcome, third.outcome] == [PARTIAL, PARTIAL]
    assert _kickoffs(world, SINCE, "Observation") == kickoffs + 1  # no new kick-off
    assert second.total("applied") == 0
    assert 0 < third.total("applied") <= PAGE_SIZE
    kept = _kept(world, SINCE)
    assert kept is not None
    assert kept.file_index == 0  # the committed part of the one file
    assert 0 < kept.line <= PAGE_SIZE
    assert _marks(world, SINCE) == marks

    fourth = world.reconcile(SINCE)  # the whole plan: the kept job's type first, resumed

    assert fourth.outcome == "complete", [(t.resource_type, t.reason) for t in fourth.types]
    assert fourth.types[0].resource_type == "Observation"
    assert _kickoffs(world, SINCE, "Observation") == kickoffs + 1
    assert _kept(world, SINCE) is None
    assert _no_job_runs(world, SINCE)  # read to the end, then deleted at the EHR
    observation = [
        t for t in (first, second, third, fourth) for t in t.types if t.resource_type == "Observation"
    ]
    assert sum(t.applied for t in observation) == changed  # every change applied once, none twice
    assert _unmatched(world, SINCE) == []
    assert _recovered(world, SINCE) - baseline == _changed_keys(
        before, after, {"Patient", "Observation", "Condition"}
    )
    mark = _marks(world, SINCE)["Observation"]
    old = marks["Observation"]
    assert mark is not None
    assert old is not None
    assert mark > old


def test_a_full_export_resumed_over_runs_still_finds_what_it_no_longer_lists(world: World) -> None:
    """``rc-meditech`` re-crawls by a full export on every run and its manifest lists no deletions: a
    deletion is found only by comparing the whole export with what is stored, here over four runs."""
    for _ in range(20):  # until the export of Observation is more than one page
        live = [
            r
            for r in world.admin(FULL, "truth")["resources"]
            if r["resourceType"] == "Observation" and not r["deleted"]
        ]
        if len(live) > PAGE_SIZE:
            break
        world.admin(FULL, "activity", {"changes": 2000})
    assert world.reconcile(FULL).outcome == "complete"
    before = world.admin(FULL, "truth")["resources"]
    world.admin(FULL, "activity", {"changes": 200})
    after = world.admin(FULL, "truth")["resources"]
    gone = {r["id"] for r in after if r["resourceType"] == "Observation" and r["deleted"]}
    gone -= {r["id"] for r in before if r["resourceType"] == "Observation" and r["deleted"]}
    assert gone, "no Observation was deleted"
    kickoffs = _kickoffs(world, FULL, "Observation")
    no_time = _no_time(world)

    reports = [world.reconcile(FULL, no_time, types=["Observation"]) for _ in range(3)]
    world.transport.seen.clear()
    last = world.reconcile(FULL, types=["Observation"])

    assert [r.outcome for r in reports] == [PARTIAL] * 3
    assert last.outcome == "complete", [(t.resource_type, t.reason) for t in last.types]
    assert _kickoffs(world, FULL, "Observation") == kickoffs + 1
    assert [w for w in _unmatched(world, FULL) if w.startswith("('Observation'")] == []  # deletions too
    # only what the whole export no longer lists is read, not what the first part of it listed
    held = {r["id"] for r in before if r["resourceType"] == "Observation" and not r["deleted"]}
    reads = [
        url
        for url, _ in world.transport.seen
        if httpx.URL(url).path.startswith(f"/{FULL}/fhir/Observation/") and "?" not in url
    ]
    assert len(reads) == len(gone & held)
    with world.sessions() as session:
        row = session.get(ReconcileWatermark, (FULL, "Observation", "bulk-since"))
        assert row is not None
        assert row.recrawled_at is not None
        assert row.recrawled_at >= last_run_started(world, last)


def last_run_started(world: World, report: Any) -> datetime:
    with world.sessions() as session:
        run = session.get(ReconcileRun, report.run_id)
        assert run is not None
        return run.started_at


def test_a_kept_job_the_ehr_no_longer_knows_is_dropped_and_a_new_one_kicked_off(world: World) -> None:
    assert world.reconcile(SINCE).outcome == "complete"
    world.admin(SINCE, "activity", {"changes": 20})
    no_time = _no_time(world)
    assert world.reconcile(SINCE, no_time, types=["Condition"]).outcome == PARTIAL
    kept = _kept(world, SINCE)
    assert kept is not None
    _client(world, SINCE).send("DELETE", kept.status_url, ok=(202,))  # expired at the EHR
    kickoffs = _kickoffs(world, SINCE, "Condition")

    report = world.reconcile(SINCE, types=["Condition"])

    assert report.outcome == "complete", [(t.resource_type, t.reason) for t in report.types]
    assert _kickoffs(world, SINCE, "Condition") == kickoffs + 1  # started afresh, in the same run
    assert _kept(world, SINCE) is None
    assert _no_job_runs(world, SINCE)
    assert world.reconcile(SINCE).outcome == "complete"
    assert _unmatched(world, SINCE) == []


def test_an_unparseable_line_is_quarantined_with_its_line_number_and_the_rest_is_stored(
    world: World,
) -> None:
    assert world.reconcile(FULL).outcome == "complete"
    world.admin(FULL, "activity", {"changes": 20})
    live = [
        r
        for r in world.admin(FULL, "truth")["resources"]
        if r["resourceType"] == "Observation" and not r["deleted"]
    ]
    bad = live[len(live) // 2]
    world.admin(FULL, "faults", {"bad_ndjson": [f"Observation/{bad['id']}"]})
    try:
        broken = [(path, n) for path, n, line in _export_lines(world, FULL, "Observation") if not _json(line)]
        report = world.reconcile(FULL)
    finally:
        world.admin(FULL, "faults", {"reset": True})

    assert len(broken) == 1
    assert report.outcome == "complete", [(t.resource_type, t.reason) for t in report.types]
    with world.sessions() as session:
        rows = session.scalars(
            select(QuarantinedNotification).where(
                QuarantinedNotification.facility_id == FULL,
                QuarantinedNotification.reason == BulkLineUnparseable.reason,
            )
        ).all()
    # our job's own file: the same name under another job id, the same line number
    got = [(row.path.rsplit("/", 1)[-1], cast(dict[str, Any], row.body)["line"]) for row in rows]
    assert got == [(broken[0][0].rsplit("/", 1)[-1], broken[0][1])]
    assert rows[0].detail.startswith(f"line {broken[0][1]}: not JSON")
    # the rest of the file went on: every other resource is stored at ehrsim's version
    assert [w for w in _unmatched(world, FULL) if bad["id"] not in w] == []


def _json(line: bytes) -> Any:
    try:
        return json.loads(line)
    except ValueError:
        return None


@pytest.fixture(autouse=True)
def _quiet_sim(world: World) -> None:
    """Each test starts with no fault standing."""
    for facility in (SINCE, FULL):
        world.admin(facility, "faults", {"reset": True})


GROUP_FACILITY, FEW = "rc-meditech-group", "g-few"


def _belongs_to(resource: dict[str, Any]) -> str | None:
    """The Patient a resource belongs to (itself for a Patient)."""
    if resource.get("resourceType") == "Patient":
        return f"Patient/{resource['id']}"
    for key in ("subject", "patient"):
        ref = resource.get(key)
        if isinstance(ref, dict) and isinstance(ref.get("reference"), str):
            return str(ref["reference"])
    return None


def _by_patient(world: World, facility: str) -> dict[str, dict[tuple[str, str], str]]:
    """ehrsim's live resources of the reconciled types, per the Patient they belong to: key → versionId."""
    types = {"Patient", "Observation", "Condition"}
    found: dict[str, dict[tuple[str, str], str]] = {}
    for r in world.admin(facility, "truth?content=true")["resources"]:
        if r["resourceType"] in types and not r["deleted"]:
            patient = _belongs_to(r["content"]) or ""
            found.setdefault(patient, {})[(r["resourceType"], r["id"])] = r["versionId"]
    return found


def test_a_group_export_stores_the_members_resources_and_no_one_elses(world: World) -> None:
    patients = sorted(
        r["id"]
        for r in world.admin(GROUP_FACILITY, "truth")["resources"]
        if r["resourceType"] == "Patient" and not r["deleted"]
    )
    assert len(patients) >= 2
    member, outsider = f"Patient/{patients[0]}", f"Patient/{patients[1]}"
    world.admin(GROUP_FACILITY, "groups", {"id": FEW, "members": [patients[0]]})
    before = _by_patient(world, GROUP_FACILITY)
    assert any(t == "Observation" for t, _ in before.get(outsider, {})), "the outsider has no Observation"
    world.transport.seen.clear()

    first = world.reconcile(GROUP_FACILITY)

    assert first.outcome == "complete", [(t.resource_type, t.reason) for t in first.types]
    assert {t.strategy for t in first.types} == {"bulk-since"}
    exports = _exports(world, GROUP_FACILITY)
    assert {url.path for url in exports} == {f"/{GROUP_FACILITY}/fhir/Group/{FEW}/$export"}
    assert all("_since" not in url.params for url in exports)  # the first run: a full export
    assert world.stored_live(GROUP_FACILITY) == before[member]  # the member's, at ehrsim's version, only

    world.admin(GROUP_FACILITY, "activity", {"changes": 60})
    after = _by_patient(world, GROUP_FACILITY)
    assert after.get(outsider) != before.get(outsider), "nothing of the outsider's changed"
    world.transport.seen.clear()

    second = world.reconcile(GROUP_FACILITY)

    assert second.outcome == "complete", [(t.resource_type, t.reason) for t in second.types]
    exports = _exports(world, GROUP_FACILITY)
    assert exports
    assert all("_since" in url.params for url in exports)  # changes since the watermark, of the Group
    # the member's changes (deletions tombstoned from the manifest's deleted), nobody else's resources
    assert world.stored_live(GROUP_FACILITY) == after[member]
    with world.sessions() as session:
        subjects = set(
            session.scalars(
                text(
                    "SELECT DISTINCT coalesce(resource->'subject'->>'reference',"
                    " 'Patient/' || resource_id) FROM resources WHERE facility_id = :f"
                ),
                {"f": GROUP_FACILITY},
            )
        )
    assert subjects == {member}  # live or tombstoned


def test_a_group_export_of_a_group_the_ehr_lacks_fails_at_kickoff_and_moves_no_watermark(
    world: World,
) -> None:
    assert world.reconcile(GROUP_FACILITY).outcome == "complete"
    marks = _marks(world, GROUP_FACILITY)
    members = [m["entity"]["reference"].removeprefix("Patient/") for m in _group(world)["member"]]
    world.admin(GROUP_FACILITY, "groups", {"id": FEW, "remove": True})
    try:
        report = world.reconcile(GROUP_FACILITY, types=["Observation"])
    finally:
        world.admin(GROUP_FACILITY, "groups", {"id": FEW, "members": members})
    assert report.outcome == FAILED
    # the YAML names a Group the EHR lacks: a human must fix it, and the reason says so
    assert [t.reason for t in report.types] == ["group_not_found"]
    assert _marks(world, GROUP_FACILITY) == marks
    assert _kept(world, GROUP_FACILITY) is None


def _group(world: World) -> dict[str, Any]:
    groups: list[dict[str, Any]] = world.admin(GROUP_FACILITY, "groups")["groups"]
    return next(g for g in groups if g["id"] == FEW)
