"""Each change-detection strategy against the ehrsim profile it is for, over real HTTP, into a real
Postgres (a database of this module's own: the reconciler commits page by page). The EHRs here send no
notifications at all: whatever reaches Postgres, the reconciler found."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

from app.db.models import Facility, ReconcileWatermark, RecoveredChange
from app.ehr.pool import EHRClientPool
from app.facilities.schemas import FacilitiesFile
from app.facilities.service import apply_facilities
from app.fhir.references import ResourceRef
from app.fhir.resources import content_hash
from app.reconcile.service import FAILED, reconcile_facility
from app.settings import Settings
from devstack.keys import write_keypair
from devstack.processes import Stack, free_port
from ehrsim.generator import mrn_system
from ehrsim.profiles import get_profile
from tests.conftest import engine_for, migrated_database

# facility id → (ehrsim profile, the types reconciled)
FACILITIES = {
    "rc-generic": ("generic", ["Patient", "Observation", "Condition"]),
    "rc-hapi": ("hapi", ["Patient", "Observation", "Condition", "Encounter"]),
    "rc-oracle": ("oracle", ["Patient", "Observation", "Condition", "MedicationRequest"]),
    "rc-athena": ("athena", ["Patient", "Observation", "Condition"]),
    "rc-epic": ("epic", ["Patient", "Observation", "Condition", "MedicationRequest"]),
}


@dataclass
class World:
    sim_url: str
    sessions: sessionmaker[Session]
    clients: EHRClientPool

    def admin(self, facility: str, path: str, body: dict[str, Any] | None = None) -> Any:
        url = f"{self.sim_url}/_admin/{facility}/{path}"
        response = httpx.post(url, json=body, timeout=30) if body is not None else httpx.get(url, timeout=30)
        response.raise_for_status()
        return response.json()

    def reconcile(self, facility: str, **kwargs: Any) -> Any:
        return reconcile_facility(self.sessions, self.clients.get, facility, Settings(), **kwargs)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    workdir: Path = tmp_path_factory.mktemp("reconcile")
    private, public = write_keypair(workdir, "client")
    port = free_port()
    sim_facilities = [
        {
            "id": fid,
            "profile": profile,
            "seed": 5,
            "patients": 3,
            "profile_overrides": {"token_flaky_400_rate": 0},
            "clients": [
                {"client_id": "ehr-ingest", "public_key_file": str(public), "scopes": ["system/*.read"]}
            ],
        }
        for fid, (profile, _) in FACILITIES.items()
    ]
    config = workdir / "ehrsim.yaml"
    config.write_text(
        yaml.safe_dump({"public_base_url": f"http://127.0.0.1:{port}", "facilities": sim_facilities})
    )
    ours = FacilitiesFile.model_validate(
        {
            "facilities": [
                {
                    "id": fid,
                    "vendor": profile,
                    "base_url": f"http://127.0.0.1:{port}/{fid}/fhir",
                    "mrn_system": mrn_system(get_profile(profile), fid),
                    "auth": {"client_id": "ehr-ingest", "private_key": {"file": str(private)}},
                    # a re-crawl on every run: deletions and silent edits are found at once
                    "reconcile": {"types": types, "recrawl_interval": "PT0.001S"},
                }
                for fid, (profile, types) in FACILITIES.items()
            ]
        }
    )
    stack = Stack(workdir, dict(__import__("os").environ))
    stack.start_ehrsim(config, port)
    with migrated_database(f"ehri_rc_{port}") as url, engine_for(url) as engine:
        sessions = sessionmaker(engine)
        with sessions.begin() as session:
            apply_facilities(session, ours)
        clients = EHRClientPool(timeout_s=10)
        try:
            yield World(f"http://127.0.0.1:{port}", sessions, clients)
        finally:
            clients.close()
            stack.stop()


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
    types = set(FACILITIES[facility][1])
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
    types = FACILITIES[facility][1]
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
    world.admin(facility, "faults", {"error_burst": {"requests": 50, "status": 503}})
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
