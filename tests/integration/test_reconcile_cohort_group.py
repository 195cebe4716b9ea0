"""The configured Group's members join the per-patient cohort, against ehrsim over real HTTP into a real
Postgres. ``rc-group`` reconciles Observation and Condition patient by patient and never Patient, and no
notification is ever sent: a patient is known only as a member of its Group ``g-cohort``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select, text
from typer.testing import CliRunner

from app.cli.main import cli
from app.db.models import ReconcileGroup, ReconcileRun
from app.reconcile.service import COMPLETE
from app.settings import get_settings
from tests.conftest import REDIS_URL
from tests.integration.reconcile_world import World

FACILITY, GROUP = "rc-group", "g-cohort"
TYPES = {"Observation", "Condition"}


def _subject(resource: dict[str, Any]) -> str | None:
    for key in ("subject", "patient"):
        ref = resource.get(key)
        if isinstance(ref, dict) and isinstance(ref.get("reference"), str):
            return str(ref["reference"])
    return None


def _live_of(world: World, patients: set[str]) -> dict[tuple[str, str], str]:
    """ehrsim's live Observations and Conditions of these patients: key → versionId."""
    truth = world.admin(FACILITY, "truth?content=true")["resources"]
    return {
        (r["resourceType"], r["id"]): r["versionId"]
        for r in truth
        if r["resourceType"] in TYPES and not r["deleted"] and _subject(r["content"]) in patients
    }


def _patients(world: World) -> list[str]:
    truth = world.admin(FACILITY, "truth")["resources"]
    return sorted(r["id"] for r in truth if r["resourceType"] == "Patient" and not r["deleted"])


def test_a_patient_known_only_as_a_group_member_has_its_resources_reconciled(world: World) -> None:
    patients = _patients(world)
    assert len(patients) >= 2
    member = patients[0]
    assert world.stored_live(FACILITY) == {}  # nothing stored, nothing notified: no patient is known yet
    assert world.reconcile(FACILITY).total("resources") == 0  # an empty Group: an empty cohort
    world.admin(FACILITY, "groups", {"id": GROUP, "members": [member]})
    world.transport.seen.clear()

    report = world.reconcile(FACILITY)

    assert report.outcome == COMPLETE, [(t.resource_type, t.reason) for t in report.types]
    reads = [(url, status) for url, status in world.transport.seen if f"/{FACILITY}/fhir/Group/" in url]
    assert reads == [(f"{world.sim_url}/{FACILITY}/fhir/Group/{GROUP}", 200)]  # one read, this run
    searched = {
        httpx.URL(url).params.get("patient")
        for url, _ in world.transport.seen
        if f"/{FACILITY}/fhir/Observation?" in url or f"/{FACILITY}/fhir/Condition?" in url
    }
    assert searched == {member}
    expected = _live_of(world, {f"Patient/{member}"})
    assert expected, "the member has no Observation or Condition at ehrsim"
    assert (
        world.stored_live(FACILITY) == expected
    )  # every one of the member's, at ehrsim's version; nobody else's
    with world.sessions() as session:
        group = session.get(ReconcileGroup, FACILITY)
        assert group is not None
        assert (group.group_id, group.members, group.last_reason) == (GROUP, 1, None)


@pytest.fixture
def cli_env(world: World, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("EHRI_DATABASE_URL", world.database_url)
    monkeypatch.setenv("EHRI_REDIS_URL", REDIS_URL)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_a_group_that_cannot_be_read_stops_nothing_and_its_last_members_stay(
    world: World, cli_env: None
) -> None:
    patients = _patients(world)
    member = patients[0]
    world.admin(FACILITY, "groups", {"id": GROUP, "members": [member]})
    assert world.reconcile(FACILITY).outcome == COMPLETE
    world.admin(FACILITY, "groups", {"id": GROUP, "remove": True})  # now 404
    try:
        world.admin(FACILITY, "activity", {"changes": 60})
        report = world.reconcile(FACILITY)
    finally:
        world.admin(FACILITY, "groups", {"id": GROUP, "members": [member]})

    assert report.outcome == COMPLETE, [(t.resource_type, t.reason) for t in report.types]
    assert report.total("applied") > 0  # the member's changes, found with no Group read this run
    with world.sessions() as session:
        run = session.get(ReconcileRun, report.run_id)
        assert run is not None
        assert run.reasons == {"Group": "group_not_found"}
        group = session.scalar(select(ReconcileGroup).where(ReconcileGroup.facility_id == FACILITY))
        assert group is not None
        assert (group.members, group.last_reason) == (1, "group_not_found")
    # the last good read's member was still polled: its new and changed resources are in
    stored = world.stored_live(FACILITY)
    wrong = {k: v for k, v in _live_of(world, {f"Patient/{member}"}).items() if stored.get(k) != v}
    # Deletions and edits wait for the re-crawl (an hour away); creates and updates are found now.
    assert all(k in stored for k in wrong), wrong
    with world.sessions() as session:
        subjects = set(
            session.scalars(
                text(
                    "SELECT DISTINCT resource->'subject'->>'reference' FROM resources WHERE facility_id = :f"
                ),
                {"f": FACILITY},
            )
        )
    assert subjects == {f"Patient/{member}"}  # nobody else's
    status = CliRunner().invoke(cli, ["reconcile", "status", FACILITY], env={"COLUMNS": "200"})
    assert status.exit_code == 0, status.output
    assert f"cohort Group {GROUP}: 1 Patient members" in status.stdout
    assert "last read failed (group_not_found)" in status.stdout
