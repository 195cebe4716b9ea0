"""ADT events → work against ehrsim's Epic profile over real HTTP: an ADT row naming a patient by the
facility's MRN (PID-3, trimmed) resolves the FHIR Patient by identifier search and stores the patient's
current resources of the configured types; a burst for one patient is one fetch; A40 records the merge."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from app.db.models import Facility
from app.fhir.references import ResourceRef
from app.hl7v2.service import claim, process_claimed
from app.settings import Settings
from ehrsim.generator import mrn_system
from ehrsim.profiles import get_profile
from tests.conftest import make_facility
from tests.integration.conftest import Sim

LEASE = timedelta(minutes=5)


def _facility(db: Session, sim: Sim) -> Facility:
    facility = make_facility(db, "epic", base_url=sim.base("epic"))
    facility.vendor = "epic"
    facility.mrn_system = mrn_system(get_profile("epic"), "epic")
    facility.hl7v2 = {
        "sending_application": "EPIC",
        "allowed_peers": ["127.0.0.1"],
        "mrn_authority": "EPI",
        "refresh": ["Patient", "Encounter", "Condition"],
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


def _adt(db: Session, control_id: str, mrn: str | None, event: str = "A08", prior: str | None = None) -> None:
    db.execute(
        text(
            "INSERT INTO adt_inbox (facility_id, control_id, raw, event_type, message_type, mrn, prior_mrn)"
            " VALUES ('epic', :c, 'MSH|...', :e, 'ADT', :m, :p)"
        ),
        {"c": control_id, "e": event, "m": mrn, "p": prior},
    )


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
