"""ADT events → work against ehrsim's Epic profile over real HTTP: an ADT row naming a patient by the
facility's MRN (PID-3, trimmed) resolves the FHIR Patient by identifier search and stores the patient's
current resources of the configured types; a burst for one patient is one fetch; A40 records the merge."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from app.db.models import Facility
from app.fhir.references import ResourceRef
from app.hl7v2.service import claim, process_claimed
from app.ingest.pipeline.observed import Observed
from app.ingest.pipeline.store import store_versions
from app.settings import Settings
from ehrsim.generator import mrn_system
from ehrsim.profiles import get_profile
from tests.conftest import make_facility
from tests.integration.conftest import Sim

LEASE = timedelta(minutes=5)


def _facility(db: Session, sim: Sim, **hl7v2: Any) -> Facility:
    facility = make_facility(db, "epic", base_url=sim.base("epic"))
    facility.vendor = "epic"
    facility.mrn_system = mrn_system(get_profile("epic"), "epic")
    facility.hl7v2 = {
        "sending_application": "EPIC",
        "allowed_peers": ["127.0.0.1"],
        "mrn_authority": "EPI",
        "refresh": ["Patient", "Encounter", "Condition"],
        **hl7v2,
    }
    db.flush()
    return facility


def _truth(sim: Sim) -> list[dict[str, Any]]:
    return [r for r in sim.admin("epic", "truth")["resources"] if not r["deleted"]]


def _read(sim: Sim, resource_type: str, resource_id: str) -> dict[str, Any]:
    result = sim.client("epic").read(ResourceRef(resource_type, resource_id))
    assert result.resource is not None
    return result.resource


def _mrn_of(sim: Sim, patient_id: str) -> str:
    return str(_read(sim, "Patient", patient_id)["identifier"][0]["value"])


def _adt(
    db: Session,
    control_id: str,
    mrn: str | None,
    *,
    event: str = "A08",
    prior: str | None = None,
    visit: str | None = None,
) -> None:
    db.execute(
        text(
            "INSERT INTO adt_inbox (facility_id, control_id, raw, event_type, message_type, mrn, prior_mrn,"
            " visit_number) VALUES ('epic', :c, 'MSH|...', :e, 'ADT', :m, :p, :v)"
        ),
        {"c": control_id, "e": event, "m": mrn, "p": prior, "v": visit},
    )


def _stored_row(db: Session, resource_type: str, resource_id: str) -> tuple[bool, str | None] | None:
    row = db.execute(
        text(
            "SELECT deleted, deletion FROM resources WHERE facility_id = 'epic' AND resource_type = :t"
            " AND resource_id = :i"
        ),
        {"t": resource_type, "i": resource_id},
    ).one_or_none()
    return None if row is None else (row.deleted, row.deletion)


def test_an_adt_event_resolves_the_patient_by_mrn_and_stores_its_current_resources(
    db: Session, sim: Sim
) -> None:
    facility = _facility(db, sim)
    patient = next(r for r in _truth(sim) if r["resourceType"] == "Patient")
    padded = _mrn_of(sim, patient["id"])
    assert padded != padded.strip()  # Epic pads its identifier values
    for n in range(3):  # a burst for one patient
        _adt(db, f"C{n}", padded.strip())
    claimed = claim(db, "epic", patients=10, lease=LEASE)
    assert len(claimed.patients) == 1
    report = process_claimed(db, facility, sim.client("epic"), claimed, Settings())
    assert (report.done, report.dead, report.retried) == (3, 0, 0)

    statuses = db.execute(
        text("SELECT DISTINCT status, patient_id FROM adt_events WHERE facility_id = 'epic'")
    ).all()
    assert [tuple(s) for s in statuses] == [("done", patient["id"])]
    stored = {
        (r.resource_type, r.resource_id)
        for r in db.execute(
            text("SELECT resource_type, resource_id FROM resources WHERE facility_id = 'epic'")
        )
    }
    of_patient = {
        (r["resourceType"], r["id"])
        for r in _truth(sim)
        if r["resourceType"] in ("Encounter", "Condition", "Observation")
        and _read(sim, r["resourceType"], r["id"]).get("subject", {}).get("reference")
        == f"Patient/{patient['id']}"
    }
    wanted = {key for key in of_patient if key[0] != "Observation"}
    assert wanted
    assert ("Patient", patient["id"]) in stored
    assert wanted <= stored
    assert not {key for key in of_patient if key[0] == "Observation"} & stored  # not configured: not read
    assert db.execute(text("SELECT count(*) FROM change_feed WHERE facility_id = 'epic'")).scalar()


def test_a_row_without_an_mrn_of_the_facility_is_dead_with_its_reason(db: Session, sim: Sim) -> None:
    facility = _facility(db, sim)
    _adt(db, "NOMRN", None)
    report = process_claimed(
        db, facility, sim.client("epic"), claim(db, "epic", patients=10, lease=LEASE), Settings()
    )
    assert report.dead == 1
    row = db.execute(text("SELECT status, reason FROM adt_inbox WHERE control_id = 'NOMRN'")).one()
    assert tuple(row) == ("dead", "adt_no_mrn")


def test_an_unknown_mrn_is_backed_off_not_dead(db: Session, sim: Sim) -> None:
    facility = _facility(db, sim)
    _adt(db, "UNKNOWN", "NO-SUCH-MRN")
    report = process_claimed(
        db, facility, sim.client("epic"), claim(db, "epic", patients=10, lease=LEASE), Settings()
    )
    assert report.retried == 1
    row = db.execute(text("SELECT status, reason FROM adt_inbox WHERE control_id = 'UNKNOWN'")).one()
    assert tuple(row) == ("pending", "identifier_not_found")


def test_a40_rereads_the_non_surviving_patient_and_records_the_merge(db: Session, sim: Sim) -> None:
    facility = _facility(db, sim)
    survivor, prior = [r for r in _truth(sim) if r["resourceType"] == "Patient"][:2]
    survivor_mrn, prior_mrn = _mrn_of(sim, survivor["id"]).strip(), _mrn_of(sim, prior["id"]).strip()
    _adt(db, "OLD", prior_mrn)  # the prior patient was known to us through an earlier message
    process_claimed(db, facility, sim.client("epic"), claim(db, "epic", patients=10, lease=LEASE), Settings())
    _adt(db, "MERGE", survivor_mrn, event="A40", prior=prior_mrn)
    process_claimed(db, facility, sim.client("epic"), claim(db, "epic", patients=10, lease=LEASE), Settings())
    row = db.execute(
        text("SELECT status, patient_id, merged_patient_id FROM adt_events WHERE control_id = 'MERGE'")
    ).one()
    assert tuple(row) == ("done", survivor["id"], prior["id"])
    both = db.execute(
        text(
            "SELECT count(*) FROM resources WHERE facility_id = 'epic' AND resource_type = 'Patient'"
            " AND resource_id IN (:a, :b)"
        ),
        {"a": survivor["id"], "b": prior["id"]},
    ).scalar()
    assert both == 2


def test_a40_for_a_prior_patient_never_seen_finds_it_by_its_mrn(db: Session, sim: Sim) -> None:
    facility = _facility(db, sim)
    survivor, prior = [r for r in _truth(sim) if r["resourceType"] == "Patient"][:2]
    _adt(
        db,
        "MERGE2",
        _mrn_of(sim, survivor["id"]).strip(),
        event="A40",
        prior=_mrn_of(sim, prior["id"]).strip(),
    )
    process_claimed(db, facility, sim.client("epic"), claim(db, "epic", patients=10, lease=LEASE), Settings())
    row = db.execute(
        text("SELECT patient_id, merged_patient_id FROM adt_events WHERE control_id = 'MERGE2'")
    ).one()
    assert tuple(row) == (survivor["id"], prior["id"])


def test_an_announced_encounter_gone_before_any_read_becomes_a_tombstone(db: Session, sim: Sim) -> None:
    """PV1-19 names an Encounter the patient's search does not list (deleted in the EHR before the worker
    ran: ehrsim answers 404 for an id it never had, as for one deleted): read by id, tombstoned."""
    facility = _facility(db, sim, visit_is_encounter_id=True)
    patient = next(r for r in _truth(sim) if r["resourceType"] == "Patient")
    _adt(db, "A11-GONE", _mrn_of(sim, patient["id"]).strip(), event="A11", visit="enc-gone-before-read")
    report = process_claimed(
        db, facility, sim.client("epic"), claim(db, "epic", patients=10, lease=LEASE), Settings()
    )
    assert (report.done, report.retried, report.dead) == (1, 0, 0)
    assert _stored_row(db, "Encounter", "enc-gone-before-read") == (True, "not_found_confirmed")


def test_a_visit_number_that_is_no_fhir_id_is_never_read_as_a_path(db: Session, sim: Sim) -> None:
    facility = _facility(db, sim, visit_is_encounter_id=True)
    patient = next(r for r in _truth(sim) if r["resourceType"] == "Patient")
    _adt(db, "A11-PATH", _mrn_of(sim, patient["id"]).strip(), event="A11", visit="../Patient/x")
    report = process_claimed(
        db, facility, sim.client("epic"), claim(db, "epic", patients=10, lease=LEASE), Settings()
    )
    assert report.done == 1
    assert _stored_row(db, "Encounter", "../Patient/x") is None


def test_a_visit_number_that_is_no_encounter_id_is_not_read(db: Session, sim: Sim) -> None:
    facility = _facility(db, sim)  # PV1-19 is the engine's visit number (a CSN), not a FHIR id
    patient = next(r for r in _truth(sim) if r["resourceType"] == "Patient")
    _adt(db, "A11-CSN", _mrn_of(sim, patient["id"]).strip(), event="A11", visit="CSN-123")
    process_claimed(db, facility, sim.client("epic"), claim(db, "epic", patients=10, lease=LEASE), Settings())
    assert _stored_row(db, "Encounter", "CSN-123") is None


def test_a_stored_encounter_the_patients_search_no_longer_lists_becomes_a_tombstone(
    db: Session, sim: Sim
) -> None:
    facility = _facility(db, sim)
    patient = next(r for r in _truth(sim) if r["resourceType"] == "Patient")
    vanished: dict[str, Any] = {"resourceType": "Encounter", "id": "enc-vanished", "status": "in-progress"}
    vanished["subject"] = {"reference": f"Patient/{patient['id']}"}
    store_versions(db, [Observed("epic", "Encounter", "enc-vanished", vanished, datetime.now(UTC))])
    assert _stored_row(db, "Encounter", "enc-vanished") == (False, None)
    _adt(db, "A08-AFTER", _mrn_of(sim, patient["id"]).strip())
    process_claimed(db, facility, sim.client("epic"), claim(db, "epic", patients=10, lease=LEASE), Settings())
    assert _stored_row(db, "Encounter", "enc-vanished") == (True, "not_found_confirmed")
