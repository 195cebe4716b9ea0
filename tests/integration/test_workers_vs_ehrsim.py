"""The worker path against ehrsim over real HTTP: every vendor profile, tokens expiring mid-paging, 429
storms, permanent errors that go dead and are replayed. Postgres is real (rolled back per test)."""

from __future__ import annotations

import itertools
import time
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from app.db.models import Facility
from app.ehr.client import EHRClient
from app.fhir.references import ResourceRef
from app.fhir.resources import content_hash
from app.ingest.dead_letters import replay_dead_letters
from app.ingest.drain import claim, process_batch
from app.settings import Settings
from ehrsim.generator import mrn_system
from ehrsim.profiles import get_profile
from tests.conftest import make_facility
from tests.integration.conftest import PROFILES, Sim

LEASE = timedelta(minutes=5)


def _facility(db: Session, sim: Sim, profile: str) -> Facility:
    facility = make_facility(db, profile, base_url=sim.base(profile))
    facility.vendor = profile
    # As an operator configures it: Epic's MRN is typed by text only, so its system must be known.
    facility.mrn_system = mrn_system(get_profile(profile), profile)
    db.flush()
    return facility


def _enqueue(db: Session, facility_id: str, refs: list[tuple[str, str]]) -> None:
    for rtype, rid in refs:
        db.execute(
            text("INSERT INTO inbox (facility_id, dedup_key, focus_type, focus_id) VALUES (:f, :k, :t, :i)"),
            {"f": facility_id, "k": f"{rtype}/{rid}", "t": rtype, "i": rid},
        )


def _drain_all(db: Session, facility: Facility, client: EHRClient, settings: Settings) -> None:
    while rows := claim(db, facility.id, limit=100, lease=LEASE):
        process_batch(db, facility, client, rows, settings)


@pytest.mark.parametrize("profile", PROFILES)
def test_every_profile_is_read_normalized_and_stored_at_ground_truth(
    db: Session, sim: Sim, profile: str
) -> None:
    facility = _facility(db, sim, profile)
    truth = [r for r in sim.admin(profile, "truth")["resources"] if not r["deleted"]]
    _enqueue(db, profile, [(r["resourceType"], r["id"]) for r in truth])
    client = sim.client(profile)
    _drain_all(db, facility, client, Settings())

    stored = {
        (r.resource_type, r.resource_id): r
        for r in db.execute(
            text(
                "SELECT resource_type, resource_id, version_id, content_hash, deleted, normalized"
                " FROM resources WHERE facility_id = :f"
            ),
            {"f": profile},
        )
    }
    assert len(stored) == len(truth)
    for item in truth:
        row = stored[(item["resourceType"], item["id"])]
        assert not row.deleted
        if row.version_id is not None:
            assert row.version_id == str(item["versionId"])
        else:  # no meta (Epic): the stored content is what the EHR serves now
            from app.fhir.references import ResourceRef

            current = client.read(ResourceRef(item["resourceType"], item["id"])).resource
            assert row.content_hash == content_hash(current)
        assert row.normalized is not None
    status: dict[str, int] = dict(
        db.execute(
            text("SELECT status, count(*) FROM inbox WHERE facility_id = :f GROUP BY 1"), {"f": profile}
        ).all()
    )
    assert status == {"done": len(truth)}
    mrns = db.execute(
        text("SELECT count(*) FILTER (WHERE mrn IS NOT NULL), count(*) FROM patients WHERE facility_id = :f"),
        {"f": profile},
    ).one()
    assert mrns[0] == mrns[1] > 0


def test_token_expiring_in_the_middle_of_paging_is_renewed_and_the_same_page_retried(sim: Sim) -> None:
    events: list[str] = []
    pages: list[int] = []

    def expire_after_first_page(response: httpx.Response) -> None:
        if "/Observation" in response.request.url.path and response.status_code == 200:
            pages.append(1)
            if len(pages) == 1:
                sim.admin("oracle", "faults", {"actions": ["expire-tokens"]})

    http = httpx.Client(timeout=10, event_hooks={"response": [expire_after_first_page]})
    client = sim.client("oracle", events=events, http=http)
    patient = next(
        r["id"] for r in sim.admin("oracle", "truth")["resources"] if r["resourceType"] == "Patient"
    )
    bundles = client.search("Observation", {"patient": patient, "_count": "1"})

    found = [
        e["resource"]["id"]
        for b in bundles
        for e in b.get("entry", [])
        if e.get("resource", {}).get("resourceType") == "Observation"
    ]
    assert len(bundles) > 1
    assert len(found) == len(set(found))
    assert set(found) == _observations_of(sim, "oracle", patient)
    assert events[:3] == ["issued", "expired_early", "renewed"]


def _observations_of(sim: Sim, facility: str, patient: str) -> set[str]:
    """The patient's live Observations, read one by one from ground truth (no search involved)."""
    from app.fhir.references import ResourceRef

    client = sim.client(facility)
    ids = set()
    for item in sim.admin(facility, "truth")["resources"]:
        if item["resourceType"] == "Observation" and not item["deleted"]:
            body = client.read(ResourceRef("Observation", item["id"])).resource or {}
            if body.get("subject", {}).get("reference", "").endswith(f"Patient/{patient}"):
                ids.add(item["id"])
    return ids


def test_429_storm_is_waited_out_honouring_retry_after(sim: Sim) -> None:
    moments: list[tuple[float, int]] = []

    def record(response: httpx.Response) -> None:
        if "/fhir/Patient/" in response.request.url.path:
            moments.append((time.monotonic(), response.status_code))

    client = sim.client("hapi", http=httpx.Client(timeout=10, event_hooks={"response": [record]}))
    patient = next(r["id"] for r in sim.admin("hapi", "truth")["resources"] if r["resourceType"] == "Patient")
    from app.fhir.references import ResourceRef

    client.read(ResourceRef("Patient", patient))  # holds a token now: the storm hits the reads
    moments.clear()
    sim.admin("hapi", "faults", {"throttle": {"requests": 2, "retry_after_s": 1}})
    result = client.read(ResourceRef("Patient", patient))
    assert result.resource is not None
    statuses = [status for _, status in moments]
    assert statuses[-1] == 200
    assert statuses.count(429) >= 1
    # Every request after a 429 waited at least its Retry-After (1 s), whatever the jitter.
    for (t0, s0), (t1, _) in itertools.pairwise(moments):
        if s0 == 429:
            assert t1 - t0 >= 0.95


def test_permanent_server_error_goes_dead_and_is_replayed_once_fixed(db: Session, sim: Sim) -> None:
    facility = _facility(db, sim, "generic")
    target = next(
        r
        for r in sim.admin("generic", "truth")["resources"]
        if r["resourceType"] == "Observation" and not r["deleted"]
    )
    ref = f"Observation/{target['id']}"
    sim.admin("generic", "faults", {"broken_resources": [ref]})
    settings = Settings(max_attempts=2, retry_base=timedelta(milliseconds=1))
    client = sim.client("generic", attempts=1)
    _enqueue(db, "generic", [("Observation", target["id"])])
    try:
        for _ in range(settings.max_attempts):
            db.execute(
                text(
                    "UPDATE inbox SET next_attempt_at = now() - interval '1 second' WHERE status = 'pending'"
                )
            )
            _drain_all(db, facility, client, settings)
        row = db.execute(text("SELECT id, status, reason FROM inbox WHERE facility_id = 'generic'")).one()
        assert (row.status, row.reason) == ("dead", "ehr_server_error")
    finally:
        sim.admin("generic", "faults", {"broken_resources": []})
    assert replay_dead_letters(db, ids=[row.id]) == {"generic": 1}
    _drain_all(db, facility, client, settings)
    status = db.execute(text("SELECT status FROM inbox WHERE id = :i"), {"i": row.id}).scalar_one()
    stored = db.execute(
        text("SELECT version_id FROM resources WHERE resource_id = :i"), {"i": target["id"]}
    ).scalar()
    assert (status, stored) == ("done", str(target["versionId"]))


def test_hapi_search_follows_getpages_links_to_every_match(sim: Sim) -> None:
    urls: list[str] = []
    http = httpx.Client(timeout=10, event_hooks={"request": [lambda r: urls.append(str(r.url))]})
    bundles = sim.client("hapi", http=http).search("Observation", {"_count": "2"})

    found = [e["resource"]["id"] for b in bundles for e in b.get("entry", [])]
    live = {
        r["id"]
        for r in sim.admin("hapi", "truth")["resources"]
        if r["resourceType"] == "Observation" and not r["deleted"]
    }
    assert len(bundles) > 1
    assert any(u.startswith(f"{sim.base('hapi')}?_getpages=") for u in urls)
    assert sorted(found) == sorted(live)


@pytest.mark.parametrize("vendor", ["epic", "hapi"])
def test_a_paging_session_that_expires_mid_search_is_reissued_and_every_match_returned_once(
    sim: Sim, vendor: str
) -> None:
    statuses: list[int] = []

    def expire_after_first_page(response: httpx.Response) -> None:
        if response.request.url.path.startswith(f"/{vendor}/fhir"):
            statuses.append(response.status_code)
            if len(statuses) == 1:
                sim.admin(vendor, "faults", {"actions": ["expire-paging-sessions"]})

    http = httpx.Client(timeout=10, event_hooks={"response": [expire_after_first_page]})
    client = sim.client(vendor, http=http)
    client.read(ResourceRef("Patient", _first_patient(sim, vendor)))  # a token first: no token reads below
    statuses.clear()
    patient = _first_patient(sim, vendor)
    bundles = client.search("Observation", {"patient": patient, "_count": "1"})

    found = [
        e["resource"]["id"] for b in bundles for e in b.get("entry", []) if e["search"]["mode"] == "match"
    ]
    assert {400: "epic", 410: "hapi"}[next(s for s in statuses if s != 200)] == vendor
    assert sorted(found) == sorted(_observations_of(sim, vendor, patient))


def _first_patient(sim: Sim, facility: str) -> str:
    return str(
        next(r["id"] for r in sim.admin(facility, "truth")["resources"] if r["resourceType"] == "Patient")
    )


def test_an_identifier_only_athena_focus_is_resolved_by_search_and_stored(db: Session, sim: Sim) -> None:
    facility = _facility(db, sim, "athena")
    client = sim.client("athena")
    patient = _first_patient(sim, "athena")
    body = client.read(ResourceRef("Patient", patient)).resource or {}
    identifier = body["identifier"][0]
    db.execute(
        text(
            "INSERT INTO inbox (facility_id, dedup_key, focus_type, focus_identifier)"
            " VALUES ('athena', 'ident-1', 'Patient', :i)"
        ),
        {"i": f"{identifier['system']}|{identifier['value']}"},
    )
    _drain_all(db, facility, client, Settings())

    row = db.execute(text("SELECT status, reason FROM inbox WHERE dedup_key = 'ident-1'")).one()
    stored = db.execute(
        text("SELECT resource_id FROM resources WHERE facility_id = 'athena' AND resource_type = 'Patient'")
    ).scalars()
    assert (row.status, row.reason) == ("done", None)
    assert list(stored) == [patient]


def test_an_oracle_minor_edit_keeps_last_updated_and_still_replaces_the_stored_version(
    db: Session, sim: Sim
) -> None:
    facility = _facility(db, sim, "oracle")
    client = sim.client("oracle")
    before = {
        (r["resourceType"], r["id"]): r
        for r in sim.admin("oracle", "truth")["resources"]
        if not r["deleted"] and r["resourceType"] not in ("Patient", "Medication")
    }
    _enqueue(db, "oracle", list(before))
    _drain_all(db, facility, client, Settings())
    sim.admin("oracle", "activity", {"changes": 60})
    minor = next(
        r
        for r in sim.admin("oracle", "truth")["resources"]
        if (key := (r["resourceType"], r["id"])) in before
        and not r["deleted"]
        and r["versionId"] != before[key]["versionId"]
        and r["lastUpdated"] == before[key]["lastUpdated"]
    )
    db.execute(text("DELETE FROM inbox WHERE facility_id = 'oracle'"))  # the first round is done
    _enqueue(db, "oracle", [(minor["resourceType"], minor["id"])])
    _drain_all(db, facility, client, Settings())

    stored = db.execute(
        text("SELECT version_id FROM resources WHERE facility_id = 'oracle' AND resource_id = :i"),
        {"i": minor["id"]},
    ).scalar_one()
    assert stored == minor["versionId"]
